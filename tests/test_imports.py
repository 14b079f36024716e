"""Importing grit and building its command line stay light: torch, transformers and faiss load with a model."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "code",
    [
        "import grit, grit.cli",
        "import grit.cli; grit.cli.build_parser()",  # what `grit --help` and every argument error run
        "import grit.rag, grit.eval, grit.serve, grit.train",
        "from grit.train.config import TrainConfig; TrainConfig.options()",
    ],
)
def test_no_heavy_import_before_a_model_is_needed(code):
    check = "import sys; heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules); print(heavy)"
    out = subprocess.run([sys.executable, "-c", f"{code}; {check}"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_lazy_exports_are_the_real_names():
    import grit
    import grit.rag
    from grit.model import GritModel
    from grit.rag.answer import RAG

    assert grit.GritModel is GritModel and grit.rag.RAG is RAG
    with pytest.raises(AttributeError, match="module 'grit' has no attribute 'Nope'"):
        grit.Nope  # noqa: B018


def test_no_feature_package_imports_the_command_line():
    """The CLI is a leaf: grit/cli imports the features, never the other way (data flows core <- features <- CLI)."""
    import ast
    from pathlib import Path

    import grit

    root = Path(grit.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path.is_relative_to(root / "cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(root)}: {n}" for n in names if n == "grit.cli" or n.startswith("grit.cli.")
            ]
    assert offenders == []

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

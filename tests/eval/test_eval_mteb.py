"""The mteb adapter, called the way mteb 2.x and 1.x call an encoder (no mteb import, nothing downloaded)."""

from __future__ import annotations

import enum
from types import SimpleNamespace

import numpy as np
import pytest
from torch.utils.data import DataLoader

from grit.eval.mteb_adapter import MtebEncoder
from grit.instructions import GRITLM_E5


class PromptType(enum.StrEnum):  # mteb.types.PromptType
    query = "query"
    document = "document"


def batches(texts: list[str], batch_size: int = 2) -> DataLoader:
    """What mteb 2.x hands ``encode``: a DataLoader of {"text": [...]} batches."""
    return DataLoader([{"text": t} for t in texts], batch_size=batch_size)


class Recorder:
    """An Encoder that records the instruction it was given."""

    dim = 4

    def __init__(self):
        self.calls = []

    def encode(self, texts, instruction=""):
        self.calls.append((list(texts), instruction))
        return np.ones((len(texts), self.dim), dtype=np.float32)


def test_mteb2_retrieval_query_and_document_sides():
    model = Recorder()
    encoder = MtebEncoder(model)
    msmarco = SimpleNamespace(name="MSMARCO", type="Retrieval", prompt=None)
    out = encoder.encode(
        batches(["q1", "q2", "q3"]), task_metadata=msmarco, hf_split="dev", hf_subset="default",
        prompt_type=PromptType.query, batch_size=32,
    )  # fmt: skip
    assert out.shape == (3, 4) and out.dtype == np.float32
    encoder.encode(batches(["d1"]), task_metadata=msmarco, hf_split="dev", hf_subset="default",
                   prompt_type=PromptType.document)  # fmt: skip
    assert model.calls == [(["q1", "q2", "q3"], GRITLM_E5["MSMARCO"]["query"]), (["d1"], "")]


def test_symmetric_task_and_unknown_task_fall_back_to_metadata_prompt():
    model = Recorder()
    encoder = MtebEncoder(model)
    sts = SimpleNamespace(name="STSBenchmark", type="STS", prompt=None)
    encoder.encode(batches(["a"]), task_metadata=sts, hf_split="test", hf_subset="default", prompt_type=None)
    new = SimpleNamespace(name="NewRetrieval", type="Retrieval", prompt="Find the passage")
    encoder.encode(batches(["q"]), task_metadata=new, hf_split="test", hf_subset="default", prompt_type="query")
    encoder.encode(batches(["d"]), task_metadata=new, hf_split="test", hf_subset="default", prompt_type="document")
    by_side = SimpleNamespace(name="Other", type="Reranking", prompt={"query": "Q", "document": "D"})
    encoder.encode(batches(["d"]), task_metadata=by_side, hf_split="test", hf_subset="default",
                   prompt_type=PromptType.document)  # fmt: skip
    assert [c[1] for c in model.calls] == [GRITLM_E5["STSBenchmark"], "Find the passage", "", "D"]


def test_mteb1_call_style():
    model = Recorder()
    out = MtebEncoder(model).encode(["a", "b"], task_name="Banking77Classification", prompt_type=None)
    assert out.shape == (2, 4) and model.calls == [(["a", "b"], GRITLM_E5["Banking77Classification"])]


def test_adapter_on_tiny_grit_matches_encode(tiny_grit):
    encoder = MtebEncoder(tiny_grit)
    meta = SimpleNamespace(name="SciFact", type="Retrieval", prompt=None)
    texts = ["a claim about cells", "another claim", "a third one"]
    got = encoder.encode(batches(texts), task_metadata=meta, hf_split="test", hf_subset="default",
                         prompt_type=PromptType.query)  # fmt: skip
    np.testing.assert_allclose(got, tiny_grit.encode(texts, GRITLM_E5["SciFact"]["query"]), atol=1e-6)
    assert encoder.name == f"grit/{tiny_grit.path.name}"


@pytest.mark.slow
def test_mteb_evaluate_on_mock_tasks(tiny_grit):
    """Real mteb (imports in ~5 s): its own offline mock tasks, through its own evaluate loop."""
    mteb = pytest.importorskip("mteb")
    from mteb.mocks.mock_tasks import MockClassificationTask, MockRetrievalTask, MockSTSTask

    encoder = MtebEncoder(tiny_grit)
    assert isinstance(encoder, mteb.models.models_protocols.EncoderProtocol)
    tasks = [MockSTSTask(), MockRetrievalTask(), MockClassificationTask()]
    results = mteb.evaluate(encoder, tasks, cache=None, show_progress_bar=False)
    assert sorted(r.task_name for r in results.task_results) == sorted(t.metadata.name for t in tasks)
    assert not results.exceptions

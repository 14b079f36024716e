from itertools import pairwise

import pytest
from transformers import AutoTokenizer

from grit.rag.chunking import ChunkConfig, chunk_documents, token_windows
from grit.rag.documents import Document

TEXT = (
    "Argument parsing: the argparse module makes it easy to write user-friendly command-line interfaces. "
    "Owners log\tevery\n\norder with the logging module; json exposes an API familiar to users "
    "of marshal and pickle. Short line.\n" * 3
)
# Characters outside the tokenizer's merges become several byte tokens sharing one character span.
UNICODE = "Naïve café 🎉🎉 owners — «quoted» 日本語のテキスト. " * 6


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return AutoTokenizer.from_pretrained(tiny_model_path)


def test_windows_cover_every_token_without_redundant_tail():
    cfg = ChunkConfig(chunk_tokens=4, overlap_tokens=1)
    assert token_windows(10, cfg) == [(0, 4), (3, 7), (6, 10)]
    assert token_windows(5, cfg) == [(0, 4), (3, 5)]
    assert token_windows(4, cfg) == [(0, 4)]
    assert token_windows(1, cfg) == [(0, 1)]
    assert token_windows(0, cfg) == []
    assert token_windows(9, ChunkConfig(3, 0)) == [(0, 3), (3, 6), (6, 9)]


@pytest.mark.parametrize("size, overlap", [(0, 0), (4, 4), (4, 5), (4, -1)])
def test_config_is_checked(size, overlap):
    with pytest.raises(ValueError, match="chunk_tokens|overlap_tokens"):
        ChunkConfig(size, overlap)


@pytest.mark.parametrize("size, overlap", [(16, 4), (7, 0), (25, 24)])
def test_spans_slice_the_text_and_overlap_as_configured(tokenizer, size, overlap):
    doc = Document("d", TEXT)
    chunks = chunk_documents([doc], tokenizer, ChunkConfig(size, overlap))
    offsets = tokenizer(TEXT, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    starts = [s for s, _ in offsets]
    assert len(chunks) == len(token_windows(len(offsets), ChunkConfig(size, overlap))) > 3
    for k, c in enumerate(chunks):
        assert (c.doc_id, c.number) == ("d", k)
        assert c.text == TEXT[c.start : c.end] and c.text
        first = k * (size - overlap)  # the chunk's first token
        assert c.start == starts[first]
        n_tokens = sum(c.start <= s < c.end for s in starts)  # tokens starting inside the span
        assert n_tokens == min(size, len(offsets) - first)
    for a, b in pairwise(chunks):
        shared = sum(b.start <= s < a.end for s in starts)
        assert shared == overlap, f"chunks {a.number},{b.number} share {shared} tokens"
    assert chunks[0].start == 0 and chunks[-1].end == len(TEXT)


@pytest.mark.parametrize("size, overlap", [(3, 1), (5, 2), (9, 0)])
def test_multi_token_characters_stay_whole(tokenizer, size, overlap):
    chunks = chunk_documents([Document("u", UNICODE)], tokenizer, ChunkConfig(size, overlap))
    assert all(c.text == UNICODE[c.start : c.end] and c.text for c in chunks)
    assert chunks[0].start == 0 and chunks[-1].end == len(UNICODE)
    assert all(a.start <= b.start <= a.end for a, b in pairwise(chunks))  # no gap, order kept


def test_documents_keep_order_and_ids(tokenizer):
    docs = [Document(str(i), f"document number {i} " * (i + 1)) for i in range(70)]  # more than one tokenizer batch
    chunks = chunk_documents(docs, tokenizer, ChunkConfig(8, 2))
    assert [c.doc_id for c in chunks] == sorted((c.doc_id for c in chunks), key=int)
    assert {c.doc_id for c in chunks} == {d.id for d in docs}


def test_slow_tokenizer_is_refused():
    with pytest.raises(TypeError, match="fast tokenizer"):
        chunk_documents([Document("a", "b")], object(), ChunkConfig())

import hashlib
import json
import re

import numpy as np
import pytest
from conftest import SHARED_DATA
from transformers import AutoTokenizer

from grit import GritModel
from grit.identity import ModelIdentity
from grit.rag.chunking import ChunkConfig
from grit.rag.documents import Document, DocumentError, load_documents
from grit.rag.index import Index, IndexConfig, UnknownDocumentError
from grit.rag.manifest import IndexFormatError, ModelMismatchError
from grit.rag.store import StoreConfig


class HashingEncoder:
    """A real but simple encoder for retrieval tests (a tiny random LM ranks at random): bag of words, each word
    hashed (md5, stable across runs) into one of ``dim`` buckets, L2-normalized. The instruction is ignored."""

    def __init__(self, tokenizer, dim: int = 1024):
        self.tokenizer, self.dim = tokenizer, dim
        self.model_id = f"test-hashing-bow-{dim}"

    def encode(self, texts, instruction=""):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


TEXTS = {  # id: (title, text)
    "bread.md": (
        "Sourdough",
        "Sourdough bread rises because wild yeast and lactic bacteria ferment the dough overnight. "
        "Bakers feed the starter flour and water every day and keep it warm.",
    ),
    "volcano.md": (
        "Volcanoes",
        "Volcanoes erupt when magma rises through cracks in the crust. Basalt lava flows far, while "
        "sticky rhyolite traps gas and explodes. Ash clouds ground aircraft.",
    ),
    "tides.md": (
        "Tides",
        "Tides follow the moon: its gravity pulls the ocean into two bulges, so most coasts see two "
        "high tides a day. Spring tides come at full and new moon.",
    ),
    "bees.md": (
        "Bees",
        "Honey bees dance to tell the hive where flowers are. The waggle run points at the sun's "
        "angle and its length encodes the distance to the nectar.",
    ),
    "chess.md": (
        "Chess",
        "In chess the king castles to safety early; knights love outposts in the center; rooks "
        "belong on open files and passed pawns must be pushed.",
    ),
    "cache.md": (
        "KV cache",
        "Reusing the key value cache of a passage skips its prefill, so a document read again "
        "costs only the new question tokens in the transformer.",
    ),
}
CORPUS = [Document(doc_id, text, title) for doc_id, (title, text) in TEXTS.items()]
QUERIES = {
    "how does wild yeast make the dough rise": "bread.md",
    "why do some volcanoes explode with gas": "volcano.md",
    "why does the moon cause two high tides": "tides.md",
    "how do bees tell the hive where flowers are": "bees.md",
    "where should rooks and knights go in chess": "chess.md",
    "skip prefill by reusing the key value cache": "cache.md",
}
SMALL_CHUNKS = ChunkConfig(chunk_tokens=24, overlap_tokens=6)  # several chunks per document with the tiny tokenizer


@pytest.fixture(scope="module")
def bow(tiny_model_path):
    return HashingEncoder(AutoTokenizer.from_pretrained(tiny_model_path))


def build(encoder, quantize="float32", kind="flat", docs=CORPUS):
    return Index.build(docs, encoder, IndexConfig(chunking=SMALL_CHUNKS, store=StoreConfig(quantize, kind)))


def top_docs(index, k=1, **kwargs):
    return [[h.doc_id for h in hits] for hits in index.search(list(QUERIES), k=k, **kwargs)]


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_planted_document_comes_first(bow, kind):
    index = build(bow, kind=kind)
    assert index.num_documents == 6 and index.num_chunks > 12
    assert [d[0] for d in top_docs(index)] == list(QUERIES.values())


def test_hits_are_chunks_of_their_documents(bow):
    index = build(bow)
    texts = {d.id: d.text for d in CORPUS}
    for hit in index.search("moon tides gravity", k=8):
        assert hit.text == texts[hit.doc_id][hit.start : hit.end]
        assert -1.0 - 1e-5 <= hit.score <= 1.0 + 1e-5
    scores = [h.score for h in index.search("moon tides gravity", k=8)]
    assert scores == sorted(scores, reverse=True)


def test_per_document_keeps_the_best_chunk_of_each(bow):
    index = build(bow)
    query = "moon tides gravity ocean bulges coasts"
    assert [h.doc_id for h in index.search(query, k=2)] == ["tides.md", "tides.md"]  # one document fills the top
    hits = index.search(query, k=4, per_document=True)
    assert len({h.doc_id for h in hits}) == len(hits) == 4 and hits[0].doc_id == "tides.md"
    assert len(index.search("moon", k=50, per_document=True)) == 6  # capped at the number of documents
    assert len(index.search("moon", k=500)) == index.num_chunks


@pytest.mark.parametrize("quantize", ["float16", "int8"])
def test_quantized_storage_keeps_the_top_hit(bow, quantize):
    assert top_docs(build(bow, quantize)) == top_docs(build(bow, "float32"))


def test_add_then_delete(bow):
    index = build(bow, docs=CORPUS[:3])
    assert index.search("bees dance to the hive", k=1)[0].doc_id != "bees.md"
    added = index.add(CORPUS[3:])
    assert added == index.num_chunks - sum(len(index._rows[d.id]) for d in CORPUS[:3])
    assert index.search("bees dance to the hive", k=1)[0].doc_id == "bees.md"
    removed = index.delete(["bees.md", "tides.md"])
    assert index.num_documents == 4 and index.store.ntotal == index.num_chunks and removed > 2
    found = {h.doc_id for h in index.search("bees dance to the hive moon tides", k=100)}
    assert found.isdisjoint({"bees.md", "tides.md"})
    with pytest.raises(UnknownDocumentError, match="not in the index: 'nope'"):
        index.delete(["chess.md", "nope"])
    assert "chess.md" in index.documents  # nothing deleted on error


def test_add_refuses_known_ids_unless_replace(bow):
    index = build(bow)
    with pytest.raises(ValueError, match="already in the index.*'chess.md'"):
        index.add([CORPUS[4]])
    with pytest.raises(DocumentError, match="more than once"):
        index.add([Document("x", "a"), Document("x", "b")])
    new_chess = Document("chess.md", "Endgames: opposition decides king and pawn endings.", "Chess")
    index.add([new_chess], replace=True)
    assert index.num_documents == 6 and index.store.ntotal == index.num_chunks
    assert index.search("opposition in king and pawn endings", k=1)[0].text.startswith("Endgames")


def test_empty_index_returns_no_hits(bow, tmp_path):
    index = Index(bow)
    assert index.search("anything") == [] and index.search(["a", "b"]) == [[], []]
    index = Index.load(Index(None).save(tmp_path / "empty"), bow)  # made without a model: any model may fill it
    assert index.search("anything") == [] and index.model["id"] == bow.model_id
    index.add(CORPUS[:1])
    index.delete("bread.md")
    assert index.search("sourdough") == []
    with pytest.raises(ValueError, match="k must be"):
        index.search("x", k=0)


@pytest.mark.parametrize("kind, quantize", [("flat", "float32"), ("hnsw", "int8"), ("ivf", "float16")])
def test_reload_gives_identical_results(bow, tmp_path, kind, quantize, caplog):
    index = build(bow, quantize, kind)
    index.delete("cache.md")  # ids with a gap must survive the round trip
    saved = index.save(tmp_path / "idx")
    loaded = Index.load(saved, bow)
    assert loaded.search(list(QUERIES), k=5) == index.search(list(QUERIES), k=5)
    assert loaded.kind == index.kind == ("flat" if kind == "ivf" else kind)  # the tiny corpus cannot train IVF
    loaded.add(CORPUS[5:])  # new chunk ids continue after the old ones
    assert loaded.search("skip prefill by reusing the key value cache", k=1)[0].doc_id == "cache.md"


def test_manifest_describes_the_index(tiny_grit, tmp_path):
    index = Index.build(CORPUS[:2], tiny_grit, IndexConfig(chunking=SMALL_CHUNKS, store=StoreConfig("int8", "hnsw")))
    m = json.loads((index.save(tmp_path / "idx") / "manifest.json").read_text())
    assert m["format"] == "grit-index" and m["grit_version"]
    assert m["model"]["id"] == ModelIdentity.of(tiny_grit.path).id == tiny_grit.identity.id
    assert m["model"]["id"].startswith(tiny_grit.path.name)
    assert m["placements"] == [
        {"device": "cpu", "dtype": "float32", "weights": "plain", "threads": tiny_grit.placement.threads}
    ]
    assert m["model"]["settings"]["pooling"] == "mean" and m["dim"] == 64
    assert m["instructions"] == {"query": IndexConfig.query_instruction, "document": ""}
    assert m["store"]["quantize"] == "int8" and m["index_kind"] == "hnsw"
    assert m["chunking"] == {"chunk_tokens": 24, "overlap_tokens": 6}
    assert m["counts"] == {"documents": 2, "chunks": index.num_chunks}


def test_tiny_grit_end_to_end(tiny_grit, tmp_path):
    index = Index.build(CORPUS, tiny_grit, IndexConfig(chunking=SMALL_CHUNKS))
    hits = index.search("where do bees find nectar", k=3)
    assert len(hits) == 3 and all(isinstance(h.score, float) for h in hits)
    loaded = Index.load(index.save(tmp_path / "idx"), tiny_grit)
    assert loaded.search("where do bees find nectar", k=3) == hits


def test_other_model_is_refused(bow, tiny_grit, tmp_path):
    path = build(bow).save(tmp_path / "bow")
    with pytest.raises(ModelMismatchError, match="test-hashing-bow-1024.*" + re.escape(tiny_grit.identity.id)):
        Index.load(path, tiny_grit)
    grit_index = Index.build(CORPUS[:1], tiny_grit).save(tmp_path / "grit")
    last_token = GritModel(tiny_grit.lm, tiny_grit.tokenizer, tiny_grit.path, pooling="last")
    with pytest.raises(ModelMismatchError, match="pooling: index 'mean', now 'last'"):
        Index.load(grit_index, last_token)


def test_load_without_encoder_can_delete_not_search(bow, tmp_path):
    path = build(bow).save(tmp_path / "idx")
    index = Index.load(path)
    index.delete("bees.md")
    index.save(path)
    with pytest.raises(ValueError, match="loaded without an encoder"):
        index.search("x")
    assert Index.load(path, bow).num_documents == 5


def test_save_and_load_refuse_other_folders(bow, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a grit index"):
        build(bow).save(tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"
    with pytest.raises(IndexFormatError, match="no manifest.json"):
        Index.load(tmp_path / "mine")
    with pytest.raises(FileNotFoundError):
        Index.load(tmp_path / "missing")


CRANFIELD = SHARED_DATA / "retrieval/cranfield/corpus.jsonl"


@pytest.mark.skipif(not CRANFIELD.is_file(), reason="shared data sets are not present")
def test_cranfield_passages_find_their_documents(bow):
    docs = load_documents(CRANFIELD)[:300]
    index = Index.build(docs, bow, IndexConfig(chunking=ChunkConfig(128, 16), title_in_embedding=False))
    picks = docs[::30]
    hits = index.search([d.text[:200] for d in picks], k=1)
    assert sum(h[0].doc_id == d.id for h, d in zip(hits, picks, strict=True)) >= 0.9 * len(picks)


def test_an_index_save_killed_between_its_renames_loads_the_old_index(bow, tmp_path, monkeypatch):
    import os

    from grit import loading

    path = build(bow).save(tmp_path / "idx")
    before = Index.load(path).num_documents
    grown = Index.load(path, bow)
    grown.add([Document("extra", "one more document about bees and nectar")])
    real_replace, calls = os.replace, []

    def killed_on_the_second_rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(loading.os, "replace", killed_on_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        grown.save(path)
    monkeypatch.setattr(loading.os, "replace", real_replace)
    assert Index.load(path).num_documents == before  # the old index, whole
    assert grown.save(path) and Index.load(path).num_documents == before + 1

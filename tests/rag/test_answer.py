"""RAG answering with each cache mode, on the tiny random Llama (answers are noise; the mechanics are tested)."""

import dataclasses
import json
import logging

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from grit import generation
from grit.generation import SamplingParams
from grit.rag.answer import CACHE_MODES, RAG
from grit.rag.documents import Document
from grit.rag.index import Index
from grit.rag.kvstore import KVStore, crc

DOCS = [
    Document("json", "The json module exposes an API familiar to users of marshal and pickle.", "json"),
    Document("logging", "The logging module defines functions and classes for event logging.", "logging"),
    Document("argparse", "The argparse module makes it easy to write command-line interfaces.", "argparse"),
]


@pytest.fixture(scope="module")
def index(tiny_grit):
    return Index.build(DOCS, tiny_grit)


@pytest.mark.parametrize("mode", CACHE_MODES)
def test_every_mode_answers(tiny_grit, index, mode):
    result = RAG(tiny_grit, index, cache_source="bidirectional").answer(
        "Which module logs events?", k=2, cache=mode, max_new_tokens=4
    )
    assert isinstance(result.text, str) and len(result.hits) == 2 and result.cache == mode
    assert (result.cached_tokens > 0) == (mode != "none")
    assert result.prompt_tokens > result.cached_tokens


@pytest.mark.parametrize("mode", ["doc", "query", "doc_query", "query_doc"])
def test_causal_cache_answer_equals_fresh_generation_of_the_same_tokens(tiny_grit, index, mode):
    """With causally computed spans (one span, or several re-rotated but each seeing only itself), the cached
    answer equals generating from scratch over the same token sequence, for single-span layouts exactly."""
    rag = RAG(tiny_grit, index, cache_source="causal")
    question = "What does json expose?"
    result = rag.answer(question, k=1, cache=mode, max_new_tokens=6, temperature=0.0)
    if mode in ("doc", "query"):
        _, layout, _ = rag.prepare(question, 1, mode, 6)
        ids = torch.tensor([layout.ids])
        fresh = generation.generate_text(tiny_grit.lm, tiny_grit.tokenizer, ids, SamplingParams(6))
        assert result.text == fresh


def test_stream_matches_answer(tiny_grit, index):
    rag = RAG(tiny_grit, index)
    hits, stream = rag.stream("What does json expose?", k=1, cache="doc", max_new_tokens=6)
    whole = rag.answer("What does json expose?", k=1, cache="doc", max_new_tokens=6)
    assert "".join(stream.pieces) == whole.text == stream.result.text
    assert stream.result.completion_tokens == whole.completion_tokens
    assert hits[0].doc_id in {d.id for d in DOCS}


def test_kv_store_is_filled_and_a_corrupt_file_is_recomputed(tiny_grit, index, tmp_path, caplog):
    store = KVStore(tmp_path)
    rag = RAG(tiny_grit, index, store)
    first = rag.answer("What does json expose?", k=1, cache="doc", max_new_tokens=5)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    files[0].write_bytes(files[0].read_bytes()[:50])  # truncate it
    with caplog.at_level(logging.WARNING):
        again = RAG(tiny_grit, index, KVStore(tmp_path)).answer("What does json expose?", cache="doc",
                                                               max_new_tokens=5)  # fmt: skip
    assert "recomputed" in caplog.text and again.text == first.text


def test_cache_documents_ahead(tiny_grit, index):
    rag = RAG(tiny_grit, index)
    hits = index.search("json", k=3)
    first = rag.cache_documents(hits)
    assert first.tokens == sum(len(rag.document_span(h)) for h in hits) > 0
    assert (first.computed, first.reused) == (3, 0)
    again = rag.cache_documents(hits)
    assert (again.computed, again.reused, again.tokens) == (0, 3, first.tokens)


NEW_JSON = "The json module was replaced by the parcel module, which reads tables from the moon."


@pytest.mark.parametrize("source", ["causal", "bidirectional"])
def test_a_replaced_document_is_never_answered_from_its_old_cache(tiny_grit, tmp_path, source):
    """Cache a document, replace its text: the cached answer equals one computed with no cache at all over the
    new text, and the old text's cache file is gone (in memory and on disk) at once."""
    index = Index.build(DOCS, tiny_grit)
    store = KVStore(tmp_path / "kv")
    rag = RAG(tiny_grit, index, store, cache_source=source)
    assert rag.cache_index().computed == len(DOCS) and len(store.files()) == len(DOCS)
    old_file = store.path(rag.cache_key("json", rag.prepare("json", 1, "doc", 6)[1].spans[0].ids))
    assert old_file.exists()

    index.add([Document("json", NEW_JSON, "json")], replace=True)
    assert not old_file.exists() and len(store.files()) == len(DOCS) - 1
    question = "What does the parcel module read?"
    hits, layout, _ = rag.prepare(question, 1, "doc", 6)
    assert hits[0].doc_id == "json" and tiny_grit.tokenizer.decode(layout.spans[0].ids).endswith(NEW_JSON)
    cached = rag.answer(question, k=1, cache="doc", max_new_tokens=6)
    uncached = RAG(tiny_grit, index, cache_source=source).answer(question, k=1, cache="doc", max_new_tokens=6)
    assert cached.text == uncached.text and cached.cached_tokens == uncached.cached_tokens > 0
    if source == "causal":  # exact: equal to generating over the same tokens from scratch
        fresh = generation.generate_text(tiny_grit.lm, tiny_grit.tokenizer, torch.tensor([layout.ids]),
                                         SamplingParams(6))  # fmt: skip
        assert cached.text == fresh


def test_deleting_a_document_evicts_its_caches(tiny_grit, tmp_path):
    index = Index.build(DOCS, tiny_grit)
    store = KVStore(tmp_path / "kv")
    rag = RAG(tiny_grit, index, store)
    rag.cache_index()
    index.delete(["logging", "argparse"])
    assert len(store.files()) == 1 and len(store.lru) == 1
    report = rag.cache_index()
    assert (report.reused, report.computed, report.evicted) == (1, 0, 0)


def test_cache_index_evicts_what_no_chunk_needs(tiny_grit, tmp_path):
    """Caches of another dtype (or model, or an older text) are recomputed, never used, and swept by cache_index."""
    index = Index.build(DOCS, tiny_grit)
    store = KVStore(tmp_path / "kv")
    rag = RAG(tiny_grit, index, store)
    rag.cache_index()
    hit = index.all_chunks()[0]
    span = rag.document_span(hit)
    foreign = dataclasses.replace(rag.cache_key(hit.doc_id, span.ids), dtype="bfloat16")
    store.put(foreign, span)
    assert len(store.files()) == len(DOCS) + 1
    report = RAG(tiny_grit, index, KVStore(tmp_path / "kv")).cache_index()
    assert (report.reused, report.computed, report.evicted) == (len(DOCS), 0, 1)
    assert len(store.files()) == len(DOCS) and foreign not in KVStore(tmp_path / "kv")


def test_bad_requests(tiny_grit, index):
    rag = RAG(tiny_grit, index)
    with pytest.raises(ValueError, match="unknown cache mode 'kv'"):
        rag.answer("q", cache="kv")
    with pytest.raises(ValueError, match="question is empty"):
        rag.answer("  ")
    with pytest.raises(ValueError, match="holds no documents"):
        RAG(tiny_grit, Index(tiny_grit)).answer("q")
    with pytest.raises(ValueError, match="leaves no room"):
        rag.answer("q", max_new_tokens=600)


def test_overlong_question_is_cut_with_a_warning(tiny_grit, index, caplog):
    with caplog.at_level(logging.WARNING):
        result = RAG(tiny_grit, index).answer("word " * 600, k=3, cache="query", max_new_tokens=4)
    assert "cut to" in caplog.text and result.prompt_tokens + 4 <= tiny_grit.context_length
    with pytest.raises(ValueError, match="cache_source"):
        RAG(tiny_grit, index, cache_source="both")


def test_cli_cache_then_ask(tiny_grit, index, tmp_path, capsys):
    from grit.cli import main

    folder = index.save(tmp_path / "idx")
    assert main(["rag", "cache", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"{index.num_chunks} computed, 0 stale evicted" in out and "MB per 1,000 tokens" in out
    assert len(list((folder / "kv-causal").glob("*.safetensors"))) == index.num_chunks
    assert main(["rag", "cache", str(folder)]) == 0
    assert f"{index.num_chunks} cached already, 0 computed, 0 stale evicted" in capsys.readouterr().out
    code = main(["rag", "ask", str(folder), "What does json expose?", "--max-new-tokens", "3", "--show-hits"])
    out = capsys.readouterr().out
    assert code == 0 and "rank" in out and "score" in out
    with pytest.raises(SystemExit):  # argparse refuses an unknown mode with its usage message
        main(["rag", "ask", str(folder), "q", "--cache", "kv"])
    code = main(["rag", "ask", str(folder), "What does json expose?", "-k", "2", "--max-new-tokens", "3",
                 "--recompute-ratio", "0.5"])  # fmt: skip
    assert code == 0
    capsys.readouterr()
    for bad in ("1.5", "half"):
        with pytest.raises(SystemExit):
            main(["rag", "ask", str(folder), "q", "--recompute-ratio", bad])
        assert "--recompute-ratio: must be" in capsys.readouterr().err


def test_index_add_and_delete_keep_the_caches_of_unchanged_documents(tiny_model_path, tiny_grit, tmp_path, capsys):
    """`grit index add` rewrites the index folder; the cached chunks of documents it did not touch survive it, and
    `grit index delete` / `add --replace` drop exactly the caches of the documents they change."""
    from grit.cli import main

    folder = Index.build(DOCS, tiny_grit).save(tmp_path / "idx")
    assert main(["rag", "cache", str(folder)]) == 0
    kv = folder / "kv-causal"
    before = sorted(p.name for p in kv.glob("*.safetensors"))
    assert len(before) == len(DOCS)
    more = tmp_path / "more.jsonl"
    more.write_text('{"id": "tides", "title": "Tides", "text": "The moon pulls the ocean twice a day."}\n')
    assert main(["index", "add", str(folder), str(more)]) == 0
    assert sorted(p.name for p in kv.glob("*.safetensors")) == before  # kept, and the new document not cached yet

    assert main(["index", "delete", str(folder), "logging"]) == 0
    assert len(list(kv.glob("*.safetensors"))) == len(DOCS) - 1
    changed = tmp_path / "changed.jsonl"
    changed.write_text('{"id": "json", "title": "json", "text": "' + NEW_JSON + '"}\n')
    assert main(["index", "add", str(folder), str(changed), "--replace"]) == 0
    assert len(list(kv.glob("*.safetensors"))) == len(DOCS) - 2
    capsys.readouterr()
    assert main(["rag", "cache", str(folder)]) == 0
    assert "3 chunks: 1 cached already, 2 computed, 0 stale evicted" in capsys.readouterr().out


def test_a_cache_file_with_the_wrong_shapes_is_recomputed(tiny_grit, tmp_path, caplog):
    """Valid checksums, the right key, but states of another shape (another model's, or a damaged writer's): the
    file is treated as missing and recomputed, never joined into a prompt."""
    index = Index.build(DOCS, tiny_grit)
    rag = RAG(tiny_grit, index, KVStore(tmp_path))
    first = rag.answer("What does json expose?", k=1, cache="doc", max_new_tokens=5)
    (path,) = tmp_path.glob("*.safetensors")  # k=1: the retrieved chunk's cache only
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    tensors = {name: t[:, :, :-1].contiguous() if name != "ids" else t for name, t in load_file(path).items()}
    meta.update({f"crc.{name}": crc(t) for name, t in tensors.items()})
    save_file(tensors, path, metadata=meta)
    with caplog.at_level(logging.WARNING):
        again = RAG(tiny_grit, index, KVStore(tmp_path)).answer("What does json expose?", k=1, cache="doc",
                                                               max_new_tokens=5)  # fmt: skip
    assert "do not fit this model's shapes" in caplog.text and again.text == first.text


@pytest.fixture
def forwards(tiny_grit):
    calls = []
    handle = tiny_grit.lm.base_model.register_forward_hook(lambda *_: calls.append(1))
    yield calls
    handle.remove()


def test_added_documents_keep_their_embedding_pass_as_their_cache(tiny_grit, tmp_path, forwards):
    """With bidirectional caches, add_documents keeps each chunk's states from the embedding pass itself: no more
    forward passes than a plain build, the same vectors, the same states as computing the cache later, and
    nothing left for cache_index to compute."""
    plain = Index.build(DOCS, tiny_grit)
    plain_passes = len(forwards)
    store = KVStore(tmp_path / "kv")
    index = Index(tiny_grit)
    rag = RAG(tiny_grit, index, store, cache_source="bidirectional")
    assert rag.add_documents(DOCS) == len(DOCS)
    assert len(forwards) == 2 * plain_passes and len(store.files()) == len(DOCS)
    ours, theirs = index.search("Which module logs events?", k=3), plain.search("Which module logs events?", k=3)
    assert [h.doc_id for h in ours] == [h.doc_id for h in theirs]
    assert [h.score for h in ours] == pytest.approx([h.score for h in theirs], abs=1e-5)
    later = RAG(tiny_grit, plain, cache_source="bidirectional")
    for hit in index.all_chunks():
        kept, fresh = rag.document_span(hit), later.document_span(hit)
        assert kept.ids == fresh.ids and kept.attention == "bidirectional"
        for a, b in zip(kept.keys + kept.values, fresh.keys + fresh.values, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    report = rag.cache_index()
    assert (report.reused, report.computed) == (len(DOCS), 0)
    question = "Which module logs events?"
    assert rag.answer(question, k=2, max_new_tokens=5).text == later.answer(question, k=2, max_new_tokens=5).text


def test_a_replaced_documents_kept_cache_survives_the_save(tiny_grit, tmp_path):
    folder = Index.build(DOCS, tiny_grit).save(tmp_path / "idx")
    rag = RAG.open(folder, tiny_grit, "bidirectional")
    assert rag.cache_index().computed == len(DOCS)
    old = {p.name for p in rag.kv_store.files()}
    assert rag.add_documents([Document("json", NEW_JSON, "json")], replace=True) == 1
    new = {p.name for p in rag.kv_store.files()}
    assert len(new) == len(DOCS) and len(new - old) == 1  # the old version's file went, the new one's came
    rag.index.save(folder)
    again = RAG.open(folder, tiny_grit, "bidirectional")
    report = again.cache_index()
    assert (report.reused, report.computed, report.evicted) == (len(DOCS), 0, 0)
    hits, layout, _ = again.prepare("What does the parcel module read?", 1, "doc", 6)
    assert hits[0].doc_id == "json" and tiny_grit.tokenizer.decode(layout.spans[0].ids).endswith(NEW_JSON)


def test_causal_caches_are_not_kept_at_indexing(tiny_grit, tmp_path):
    """A causal cache is another pass: add_documents only indexes, and the caches come when first needed."""
    store = KVStore(tmp_path / "kv")
    rag = RAG(tiny_grit, Index(tiny_grit), store, cache_source="causal")
    assert rag.add_documents(DOCS) == len(DOCS) and store.files() == []
    assert rag.cache_index().computed == len(DOCS)


def test_states_of_another_encoder_are_refused(tiny_grit):
    index = Index(None, tokenizer=tiny_grit.tokenizer)
    with pytest.raises(ValueError, match="another encoder than this RAG's model"):
        RAG(tiny_grit, index, cache_source="bidirectional").add_documents(DOCS)


def test_cli_index_of_a_cache_aware_model_keeps_every_chunks_cache(tiny_grit, tmp_path, capsys):
    """`grit index build` / `add` with a model that reads its embedding caches: `grit rag cache` then finds every
    chunk's cache and computes none."""
    from grit.cli import main

    aware = tmp_path / "aware"
    tiny_grit.rag_cache_source = "bidirectional"
    try:
        tiny_grit.save_pretrained(aware)
    finally:
        tiny_grit.rag_cache_source = "causal"
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": d.id, "title": d.title, "text": d.text}) + "\n" for d in DOCS))
    folder = tmp_path / "idx"
    assert main(["index", "build", str(docs), "--out", str(folder), "--model", str(aware)]) == 0
    assert f"holds {len(DOCS)} chunk caches, kept from the embedding pass" in capsys.readouterr().out
    more = tmp_path / "more.jsonl"
    more.write_text('{"id": "tides", "title": "Tides", "text": "The moon pulls the ocean twice a day."}\n')
    assert main(["index", "add", str(folder), str(more)]) == 0
    assert f"holds {len(DOCS) + 1} chunk caches" in capsys.readouterr().out
    assert main(["rag", "cache", str(folder)]) == 0
    assert f"{len(DOCS) + 1} chunks: {len(DOCS) + 1} cached already, 0 computed" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".idx")] == []  # no staging left behind

import logging

import torch

from grit.kvcache import SpanCache
from grit.rag.kvstore import CacheKey, KVStore, carry_over


def span(n=5, layers=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = [torch.randn(2, n, 8, generator=g) for _ in range(layers)]
    values = [torch.randn(2, n, 8, generator=g) for _ in range(layers)]
    return SpanCache(list(range(100, 100 + n)), keys, values, "bidirectional")


def key(doc: str, n: int = 5, model: str = "tiny-0123", dtype: str = "float32") -> CacheKey:
    """The key of ``span(n)`` (its ids are 100..100+n-1) as a chunk of document ``doc``."""
    return CacheKey.of(doc, range(100, 100 + n), model, dtype, "bidirectional")


def same(a: SpanCache, b: SpanCache) -> bool:
    return (
        a.ids == b.ids
        and a.attention == b.attention
        and all(torch.equal(x, y) for x, y in zip(a.keys + a.values, b.keys + b.values, strict=True))
    )


def test_round_trip_is_bit_identical(tmp_path):
    original = span()
    KVStore(tmp_path).put(key("doc-1"), original)
    loaded = KVStore(tmp_path).get(key("doc-1"))  # a fresh store: read from disk, not memory
    assert loaded is not None and same(original, loaded)


def test_missing_key(tmp_path):
    store = KVStore(tmp_path)
    assert store.get(key("nope")) is None and key("nope") not in store


def test_truncated_file_is_detected_and_removed(tmp_path, caplog):
    KVStore(tmp_path).put(key("d"), span())
    path = KVStore(tmp_path).path(key("d"))
    path.write_bytes(path.read_bytes()[:-100])
    with caplog.at_level(logging.WARNING):
        assert KVStore(tmp_path).get(key("d")) is None
    assert "unreadable" in caplog.text and not path.exists()


def test_flipped_byte_is_detected(tmp_path):
    KVStore(tmp_path).put(key("d"), span())
    path = KVStore(tmp_path).path(key("d"))
    data = bytearray(path.read_bytes())
    data[-7] ^= 0xFF  # inside the last tensor's bytes: safetensors itself would not notice
    path.write_bytes(bytes(data))
    assert KVStore(tmp_path).get(key("d")) is None


def test_lru_keeps_memory_under_the_cap(tmp_path):
    one = span().nbytes()
    store = KVStore(tmp_path, memory_bytes=int(2.5 * one))
    for i in range(4):
        store.put(key(f"d{i}"), span(seed=i))
    assert [k.doc_id for k in store.lru] == ["d2", "d3"] and store.held <= 2.5 * one
    assert same(store.get(key("d0")), span(seed=0))  # evicted from memory, still on disk
    assert [k.doc_id for k in store.lru] == ["d3", "d0"]


def test_float16_storage_halves_disk(tmp_path):
    full, half = KVStore(tmp_path / "a"), KVStore(tmp_path / "b", dtype=torch.float16)
    full.put(key("d", 50), span(n=50))
    half.put(key("d", 50), span(n=50))
    assert half.disk_bytes() < 0.6 * full.disk_bytes()
    loaded = KVStore(tmp_path / "b").get(key("d", 50))
    torch.testing.assert_close(loaded.keys[0].float(), span(n=50).keys[0], atol=1e-2, rtol=1e-2)


def test_delete(tmp_path):
    store = KVStore(tmp_path)
    store.put(key("d"), span())
    store.delete(key("d"))
    assert key("d") not in store and store.disk_bytes() == 0


def test_a_key_names_model_dtype_source_and_tokens(tmp_path):
    """Another model, dtype, source or token sequence is another cache: none of them is served for the first."""
    store = KVStore(tmp_path)
    store.put(key("d"), span())
    others = [key("d", model="other-4567"), key("d", dtype="bfloat16"), key("d", n=6),
              CacheKey.of("d", range(100, 105), "tiny-0123", "float32", "causal")]  # fmt: skip
    fresh = KVStore(tmp_path)  # from disk, not memory
    assert all(fresh.get(k) is None and k not in fresh for k in others)
    assert same(fresh.get(key("d")), span())


def test_a_file_holding_another_span_than_its_name_is_not_served(tmp_path):
    store = KVStore(tmp_path)
    store.put(key("a"), span())
    store.put(key("b", n=6), span(n=6))
    store.path(key("b", n=6)).replace(store.path(key("a")))  # a's name, b's content
    assert KVStore(tmp_path).get(key("a")) is None and not store.path(key("a")).exists()


def test_evicting_a_document_removes_all_its_caches_and_only_them(tmp_path):
    store = KVStore(tmp_path)
    for k, n in ((key("a"), 5), (key("a", n=6), 6), (key("a", dtype="bfloat16"), 5), (key("b"), 5)):
        store.put(k, span(n=n))
    assert store.evict_documents(["a"]) == 3
    assert [k.doc_id for k in store.lru] == ["b"] and len(store.files()) == 1 and key("b") in KVStore(tmp_path)


def test_retain_keeps_only_the_keys_given(tmp_path):
    store = KVStore(tmp_path)
    store.put(key("a"), span())
    store.put(key("b"), span())
    store.put(key("b", model="old-model"), span())
    assert store.retain([key("a"), key("b")]) == 1
    assert len(store.files()) == 2 and key("b", model="old-model") not in store


def test_carry_over_links_the_caches_of_kept_documents(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    store = KVStore(old / "kv-causal")
    store.put(key("kept"), span())
    store.put(key("gone"), span())
    new.mkdir()
    assert carry_over(old, new, ["kept"]) == 1
    moved = KVStore(new / "kv-causal")
    assert same(moved.get(key("kept")), span()) and key("gone") not in moved

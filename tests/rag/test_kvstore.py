import logging

import torch

from grit.kvcache import SpanCache
from grit.rag.kvstore import KVStore


def span(n=5, layers=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = [torch.randn(2, n, 8, generator=g) for _ in range(layers)]
    values = [torch.randn(2, n, 8, generator=g) for _ in range(layers)]
    return SpanCache(list(range(100, 100 + n)), keys, values, "bidirectional")


def same(a: SpanCache, b: SpanCache) -> bool:
    return (
        a.ids == b.ids
        and a.attention == b.attention
        and all(torch.equal(x, y) for x, y in zip(a.keys + a.values, b.keys + b.values, strict=True))
    )


def test_round_trip_is_bit_identical(tmp_path):
    original = span()
    KVStore(tmp_path).put("doc-1#0", original)
    loaded = KVStore(tmp_path).get("doc-1#0")  # a fresh store: read from disk, not memory
    assert loaded is not None and same(original, loaded)


def test_missing_key(tmp_path):
    store = KVStore(tmp_path)
    assert store.get("nope") is None and "nope" not in store


def test_truncated_file_is_detected_and_removed(tmp_path, caplog):
    KVStore(tmp_path).put("d", span())
    path = KVStore(tmp_path).path("d")
    path.write_bytes(path.read_bytes()[:-100])
    with caplog.at_level(logging.WARNING):
        assert KVStore(tmp_path).get("d") is None
    assert "unreadable" in caplog.text and not path.exists()


def test_flipped_byte_is_detected(tmp_path):
    KVStore(tmp_path).put("d", span())
    path = KVStore(tmp_path).path("d")
    data = bytearray(path.read_bytes())
    data[-7] ^= 0xFF  # inside the last tensor's bytes: safetensors itself would not notice
    path.write_bytes(bytes(data))
    assert KVStore(tmp_path).get("d") is None


def test_lru_keeps_memory_under_the_cap(tmp_path):
    one = span().nbytes()
    store = KVStore(tmp_path, memory_bytes=int(2.5 * one))
    for i in range(4):
        store.put(f"d{i}", span(seed=i))
    assert list(store.lru) == ["d2", "d3"] and store.held <= 2.5 * one
    assert same(store.get("d0"), span(seed=0))  # evicted from memory, still on disk
    assert list(store.lru) == ["d3", "d0"]


def test_float16_storage_halves_disk(tmp_path):
    full, half = KVStore(tmp_path / "a"), KVStore(tmp_path / "b", dtype=torch.float16)
    full.put("d", span(n=50))
    half.put("d", span(n=50))
    assert half.disk_bytes() < 0.6 * full.disk_bytes()
    torch.testing.assert_close(KVStore(tmp_path / "b").get("d").keys[0].float(), span(n=50).keys[0], atol=1e-2,
                               rtol=1e-2)  # fmt: skip


def test_delete(tmp_path):
    store = KVStore(tmp_path)
    store.put("d", span())
    store.delete("d")
    assert "d" not in store and store.disk_bytes() == 0

import logging

import faiss
import numpy as np
import pytest

from grit.rag.store import StoreConfig, VectorStore


def unit_vectors(n, dim=32, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def filled(config, vectors, ids=None):
    store = VectorStore(config)
    store.add(vectors, np.arange(len(vectors)) if ids is None else ids)
    return store


def test_hnsw_recall_at_10_matches_flat():
    data, queries = unit_vectors(3000), unit_vectors(200, seed=1)
    _, exact = filled(StoreConfig(kind="flat"), data).search(queries, 10)
    _, approx = filled(StoreConfig(kind="hnsw"), data).search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx, strict=True)])
    assert recall >= 0.99, f"HNSW recall@10 {recall:.3f}"


@pytest.mark.parametrize("quantize, tolerance", [("float32", 1e-6), ("float16", 2e-3), ("int8", 2e-2)])
def test_quantized_scores_are_close_to_exact(quantize, tolerance):
    data, queries = unit_vectors(500), unit_vectors(20, seed=1)
    exact = queries @ data.T
    scores, ids = filled(StoreConfig(quantize=quantize), data).search(queries, 5)
    error = np.abs(scores - np.take_along_axis(exact, ids, axis=1)).max()
    assert error < tolerance, f"{quantize}: max score error {error}"


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
@pytest.mark.parametrize("quantize", ["float32", "int8"])
def test_remove_by_id(kind, quantize):
    data = unit_vectors(400)
    ids = np.arange(1000, 1400)  # ids need not be positions
    store = filled(StoreConfig(quantize=quantize, kind=kind, ivf_nlist=8), data, ids)
    assert store.kind == kind
    gone = ids[:100]
    assert store.remove(gone) == 100 and store.ntotal == 300
    _, found = store.search(data[:200], 5)
    assert not np.isin(found, gone).any()
    _, top = store.search(data[100:], 1)
    assert (top[:, 0] == ids[100:]).all()  # each remaining vector still finds itself


def test_ivf_trains_and_falls_back_to_flat_when_too_small(caplog):
    big = filled(StoreConfig(kind="ivf"), unit_vectors(3000))
    assert big.kind == "ivf" and faiss.downcast_index(big.index).nlist == 3000 // 39
    with caplog.at_level(logging.WARNING, logger="grit.rag.store"):
        small = filled(StoreConfig(kind="ivf"), unit_vectors(50))
    assert small.kind == "flat" and "building a flat (exact) index" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="grit.rag.store"):
        assert filled(StoreConfig(kind="ivf", ivf_nlist=100), unit_vectors(3000)).kind == "flat"
    assert ">= 3900 vectors" in caplog.text


def test_int8_counts_clipped_vectors_added_later(caplog):
    store = filled(StoreConfig(quantize="int8"), unit_vectors(100) * 0.5)  # ranges learned from short vectors
    with caplog.at_level(logging.WARNING, logger="grit.rag.store"):
        store.add(unit_vectors(10, seed=1) * 0.01, np.arange(100, 110))
        assert not caplog.text
        store.add(unit_vectors(10, seed=2), np.arange(110, 120))
    assert "10 of 10 added vectors fall outside the int8 ranges" in caplog.text


def test_config_and_shapes_are_checked():
    with pytest.raises(ValueError, match="quantize"):
        StoreConfig(quantize="int4")
    with pytest.raises(ValueError, match="kind"):
        StoreConfig(kind="lsh")
    with pytest.raises(ValueError, match="hnsw_m"):
        StoreConfig(hnsw_m=0)
    store = filled(StoreConfig(), unit_vectors(10))
    with pytest.raises(ValueError, match="16 dimensions, the index holds 32"):
        store.add(unit_vectors(2, dim=16), np.arange(10, 12))
    with pytest.raises(ValueError, match="2 vectors but 3 ids"):
        store.add(unit_vectors(2), np.arange(3))

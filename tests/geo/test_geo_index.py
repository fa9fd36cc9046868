"""The vector index: exact search equals brute force, approximate ones reach high recall, streaming top-k."""

import numpy as np
import pytest

from cvm.errors import CvmError
from cvm.geo import index as index_lib


def _unit(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _shards(x, size):
    return lambda: (x[i:i + size] for i in range(0, len(x), size))


def test_exact_index_equals_brute_force():
    x, q = _unit(500, 16, 0), _unit(20, 16, 1)
    index, params = index_lib.build("exact", 16, 500, _shards(x, 128))
    scores, ids = index.search(q, 10)
    expected = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ids, expected)
    # float32 dot products of unit 16-d vectors: accumulated rounding < 16 * 2^-24 ~ 1e-6
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, expected, 1), atol=1e-5)
    np.testing.assert_array_equal(index_lib.exact_topk(q, _shards(x, 77), 10), expected)


def test_recall_at_counts_shared_ids():
    assert index_lib.recall_at(np.array([[1, 2, 3]]), np.array([[3, 2, 9]]), k=3) == pytest.approx(2 / 3)


@pytest.mark.parametrize("kind,floor", [("hnsw", 0.9), ("ivfflat", 0.9), ("ivfpq", 0.3)])
def test_approximate_indexes_reach_recall(kind, floor):
    n, d = 2000, 32
    x = _unit(n, d, 2)
    index, params = index_lib.build(kind, d, n, _shards(x, 500))
    assert index.ntotal == n and params == index_lib.default_params(kind, n, d)
    recall = index_lib.measure_recall(index, _shards(x, 500), n, k=10, count=200)
    # Chance recall@10 is 10 / 2000; HNSW with efSearch 128 finds nearly all, IVF-Flat (32 of 51 lists probed)
    # nearly all (0.98 measured); 8-byte PQ codes of 32-d random vectors (the hardest case for PQ) a fair share.
    assert floor <= recall <= 1.0


def test_ivfflat_probing_every_list_is_exact_search():
    """IVF-Flat keeps the vectors: probing all lists must give brute force's ids and scores."""
    n, d = 2000, 32
    x, q = _unit(n, d, 3), _unit(30, d, 4)
    index, params = index_lib.build("ivfflat", d, n, _shards(x, 700))
    index_lib.apply_search_params(index, {"nprobe": params["nlist"]})
    scores, ids = index.search(q, 10)
    expected = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ids, expected)
    # float32 dot products of unit 32-d vectors: rounding < 32 * 2^-24 ~ 2e-6
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, expected, 1), atol=1e-5)


def test_auto_choice_by_size_and_memory():
    assert index_lib.choose("auto", 1000, 1024) == "exact"
    assert index_lib.choose("auto", index_lib.EXACT_MAX, 1024) == "exact"
    assert index_lib.choose("auto", index_lib.EXACT_MAX + 1, 1024) == "ivfflat"
    assert index_lib.choose("auto", 1_000_000, 1024) == "ivfflat"  # 3.8 GiB of float32 vectors
    assert index_lib.choose("auto", 1_100_000, 1024) == "ivfpq"  # 4.2 GiB
    assert index_lib.choose("auto", 300_000, 4096) == "ivfpq"  # CVM-Net's 4096-d: 4.6 GiB
    assert index_lib.choose("hnsw", 10, 8) == "hnsw"
    with pytest.raises(CvmError, match="--index must be one of"):
        index_lib.choose("lsh", 10, 8)

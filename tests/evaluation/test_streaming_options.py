"""The streamed entry points pass their streaming keywords on to `stream_ranks`, and refuse unknown ones."""

import numpy as np
import pytest

from cvm.evaluation import recall
from cvm.evaluation.vigor import evaluate_vigor


def descriptors(n=9, d=6, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, d)).astype(np.float32)
    r = q + 0.8 * rng.normal(size=(n, d)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True), r / np.linalg.norm(r, axis=1, keepdims=True)


def test_each_entry_point_forwards_the_streaming_keywords():
    q, r = descriptors()
    locations = np.stack([np.arange(9) * 10.0, np.zeros(9)], 1)
    # top_k decides the width of the kept indices; chunk_size=2 streams 5 chunks and must not change a rank.
    reference = recall.stream_ranks(q, r, top_k=3)
    at_k = recall.recall_at_k(q, r, top_k=3, chunk_size=2)
    np.testing.assert_array_equal(at_k["ranks"], reference["ranks"])
    np.testing.assert_array_equal(at_k["topk_indices"], reference["topk_indices"])
    within = recall.recall_within_radius(q, r, locations, locations, 0.0, top_k=3, chunk_size=4)
    assert within.pop("radius_m") == 0.0 and within.keys() == at_k.keys()
    np.testing.assert_array_equal(within["ranks"], at_k["ranks"])
    full = recall.evaluate(q, r, top_k=2, chunk_size=3, memory_budget_bytes=1 << 20)
    for direction in recall.DIRECTIONS:
        assert full["directions"][direction]["topk_indices"].shape == (9, 2)
    np.testing.assert_array_equal(full["directions"]["ground_to_aerial"]["ranks"], reference["ranks"])
    # VIGOR keeps at least 1 + S indices whatever top_k asks, to decide every semi-positive hit.
    semis = np.full((9, 3), -1)
    assert evaluate_vigor(q, r, np.arange(9), semis, top_k=1, chunk_size=2)["topk_indices"].shape == (9, 4)
    assert recall.Evaluator(top_k=1)(q, r)["directions"]["ground_to_aerial"]["topk_indices"].shape == (9, 1)


@pytest.mark.parametrize("call", [
    lambda q, r: recall.recall_at_k(q, r, chunk_sizes=2),
    lambda q, r: recall.recall_within_radius(q, r, None, None, 0.0, chunk_sizes=2),
    lambda q, r: recall.evaluate(q, r, chunk_sizes=2),
    lambda q, r: evaluate_vigor(q, r, np.arange(9), np.full((9, 3), -1), chunk_sizes=2),
])
def test_a_misspelt_streaming_keyword_is_refused_by_name(call):
    q, r = descriptors()
    with pytest.raises(TypeError, match="'chunk_sizes'.*streaming options: top_k, chunk_size"):
        call(q, r)

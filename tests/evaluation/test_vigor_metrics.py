"""VIGOR metrics (cvm.evaluation.vigor) against brute-force NumPy references on small random data."""

import numpy as np
import pytest

from cvm.data import vigor as vigor_data
from cvm.errors import CvmError
from cvm.evaluation import vigor as vigor_eval


def _brute_force(query, reference, positives, semis):
    """Sample4Geo's calculate_scores restated: full Q x R matrix, strict >, mask of the semi-positives."""
    sims = query.astype(np.float64) @ reference.astype(np.float64).T
    ranks, hits = [], []
    for i in range(len(query)):
        higher = sims[i] > sims[i, positives[i]]
        ranks.append(int(higher.sum()))
        mask = np.ones(len(reference), bool)
        mask[semis[i][semis[i] >= 0]] = False
        hits.append(int((higher & mask).sum()) < 1)
    return np.array(ranks), np.array(hits), np.argmax(sims, axis=1)


def _data(seed, n_q=40, n_r=57, dim=6, levels=3):
    """Descriptors on a coarse integer grid (few distinct values, so exact ties are frequent) and labels."""
    rng = np.random.default_rng(seed)
    # Small integers: every dot product is an exact small integer in float32, so the device matmul and
    # the float64 reference agree exactly and ties are real ties on both sides.
    query = rng.integers(-levels, levels + 1, (n_q, dim)).astype(np.float32)
    reference = rng.integers(-levels, levels + 1, (n_r, dim)).astype(np.float32)
    reference[5] = reference[3]  # duplicated references: tied with each other for every query
    positives = rng.integers(0, n_r, n_q)
    semis = np.stack([rng.choice(np.setdiff1d(np.arange(n_r), [p]), 3, replace=False) for p in positives])
    # Make many queries near-hits: their positive strictly beaten only by semi-positives.
    for i in range(0, n_q, 3):
        query[i] = reference[positives[i]] + reference[semis[i, 0]]
    return query, reference, positives, semis


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranks_hits_and_top1_match_brute_force(seed):
    query, reference, positives, semis = _data(seed)
    semis[7, 2] = -1  # a query with only two semi-positives
    ranks, hits, top1 = _brute_force(query, reference, positives, semis)
    assert 0 < hits.sum() < len(hits)  # both outcomes occur
    out = vigor_eval.evaluate_vigor(query, reference, positives, semis, chunk_size=7, top_k=4)
    np.testing.assert_array_equal(out["ranks"], ranks)
    np.testing.assert_array_equal(out["hits"], hits)
    np.testing.assert_array_equal(out["topk_indices"][:, 0], top1)  # ties -> lowest index, as np.argmax
    assert out["metrics"]["hit_rate"] == pytest.approx(hits.mean())
    for k in (1, 5, 10):
        assert out["metrics"][f"r@{k}"] == pytest.approx(np.mean(ranks < k))
    assert out["metrics"]["k_1%_floor"] == len(reference) // 100


def test_hit_rate_is_not_recall_at_1_when_semi_positives_outrank():
    # One query, references on a line: semi-positive above the positive -> hit but not R@1; an
    # unrelated reference above -> neither; a tie with an unrelated reference -> both (strict >).
    reference = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.5, 0.5]], np.float32)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    query = np.array([reference[0], reference[0], reference[3]], np.float32)
    positives = np.array([1, 2, 3])
    semis = np.array([[0, -1, -1], [1, -1, -1], [2, 1, 0]])
    out = vigor_eval.evaluate_vigor(query, reference, positives, semis)
    np.testing.assert_array_equal(out["hits"], [True, False, True])
    np.testing.assert_array_equal(out["ranks"] < 1, [False, False, True])


def test_hits_from_topk_rejects_an_unrelated_reference_among_the_first_ranks():
    ranks = np.array([2, 2, 0, 4])
    topk = np.array([[5, 6, 1, 2], [5, 9, 1, 2], [1, 2, 3, 4], [5, 6, 7, 8]])
    semis = np.array([[6, 5, 7], [5, 6, 7], [9, 9, 9], [5, 6, 7]])
    np.testing.assert_array_equal(vigor_eval.hits_from_topk(ranks, topk, semis), [True, False, True, False])


def test_metre_errors_against_vigor_formulas():
    rng = np.random.default_rng(3)
    n_r, n_q = 12, 9
    refs = np.stack([41.88 + rng.uniform(-0.01, 0.01, n_r), -87.63 + rng.uniform(-0.01, 0.01, n_r)], axis=1)
    queries = refs[rng.integers(0, n_r, n_q)] + rng.uniform(-2e-4, 2e-4, (n_q, 2))
    positives = rng.integers(0, n_r, n_q)
    semis = np.stack([np.setdiff1d(np.arange(n_r), [p])[:3] for p in positives])
    offsets = rng.uniform(-300, 300, (n_q, 4, 2))
    top1 = np.where(np.arange(n_q) % 3 == 0, positives, np.where(np.arange(n_q) % 3 == 1, semis[:, 1], 11))
    out = vigor_eval.metre_errors(queries, refs, top1, positives=positives, semi_positives=semis, offsets=offsets,
                                  offset_convention="vigor")

    def gps2distance(a, b):  # VIGOR evaluate_from_npy.py, the arccos form
        la, lb = np.deg2rad(a), np.deg2rad(b)
        c = np.sin(la[:, 0]) * np.sin(lb[:, 0]) + np.cos(la[:, 0]) * np.cos(lb[:, 0]) * np.cos(la[:, 1] - lb[:, 1])
        return 6371004.0 * np.arccos(np.clip(c, -1, 1))

    def lat_lng(lat):  # VIGOR's Lat_Lng for 320 * 0.114 m
        d, r, lat = 320 * 0.114, 6371004.0, np.deg2rad(lat)
        return np.stack([np.rad2deg(np.arccos(np.cos(d / r)) + 0 * lat),
                         np.rad2deg(np.arccos((np.cos(d / r) - np.sin(lat) ** 2) / np.cos(lat) ** 2))], axis=-1)

    # Distances here are 10 m .. 2 km: the arccos form's float64 error (~0.1 m) is far below 1e-3 relative.
    np.testing.assert_allclose(out["centre"], gps2distance(queries, refs[top1]), rtol=1e-3, atol=0.2)
    slot = np.array([0 if t == p else (list(s).index(t) + 1 if t in s else -1)
                     for t, p, s in zip(top1, positives, semis)])
    shift = np.where((slot >= 0)[:, None], offsets[np.arange(n_q), np.maximum(slot, 0)], 0.0)
    predicted = refs[top1] - lat_lng(refs[top1, 0]) * shift / 320.0
    np.testing.assert_allclose(out["label_offset"], gps2distance(queries, predicted), rtol=1e-3, atol=0.2)
    assert np.any(slot < 0) and np.any(slot == 0) and np.any(slot > 0)
    positive_at = refs[positives] - lat_lng(refs[positives, 0]) * offsets[:, 0] / 320.0
    np.testing.assert_allclose(out["positive_label_residual"], gps2distance(queries, positive_at), rtol=1e-3,
                               atol=0.2)


def test_great_circle_is_accurate_at_centimetres():
    a = np.array([[41.88, -87.63]])
    b = a + [[1e-7, 0.0]]  # 1.1 cm north
    expected = np.deg2rad(1e-7) * vigor_data.VIGOR_EARTH_RADIUS_M
    assert vigor_data.great_circle_m(a, b)[0] == pytest.approx(expected, rel=1e-6)


def test_mercator_offsets_round_trip_and_sign_convention():
    centre = np.array([[41.877971796211014, -87.68943505304125]])
    query = np.array([[41.877949, -87.689396]])  # south-east of the centre (a real SliceMatch line: 23, -29)
    dy, dx = vigor_data.mercator_offsets(query, centre)[0]
    assert dy > 0 and dx < 0  # south: +dy; east: -dx (the query at row 320 + dy, column 320 - dx)
    assert abs(dy - 23) < 4 and abs(dx + 29) < 4  # SliceMatch's corrected label, within its few-px spread
    back = vigor_data.offset_latlon(centre, [[dy, dx]], "mercator")
    assert vigor_data.great_circle_m(back, query)[0] < 1e-6


def test_streamed_matches_with_a_tiny_memory_budget():
    query, reference, positives, semis = _data(5, n_q=30, n_r=300, dim=8)
    ranks, hits, _ = _brute_force(query, reference, positives, semis)
    out = vigor_eval.evaluate_vigor(query, reference, positives, semis, memory_budget_bytes=300 * 16 * 3)
    np.testing.assert_array_equal(out["ranks"], ranks)
    np.testing.assert_array_equal(out["hits"], hits)


def test_bad_semi_positives_raise():
    query, reference, positives, semis = _data(0)
    with pytest.raises(CvmError, match="semi_positives"):
        vigor_eval.evaluate_vigor(query, reference, positives, semis[:, :, None])
    with pytest.raises(CvmError, match="index"):
        vigor_eval.evaluate_vigor(query, reference, positives, semis + 1000)

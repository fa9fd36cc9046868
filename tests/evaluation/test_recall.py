"""Streaming recall: hand-made ranks (ties, top-1% conventions, directions, radii) and brute-force checks.

Descriptors are chosen so that similarities are exact in float32 (identity queries, small integers), so
every expected rank is exact whatever the matmul's summation order.
"""

import numpy as np
import pytest

from cvm.errors import CvmError
from cvm.evaluation import (
    evaluate,
    metrics_from_ranks,
    recall_at_k,
    recall_curve,
    recall_within_radius,
    top1_percent_k,
)
from cvm.evaluation.recall import chunk_size_for

# With ground = identity, sims[q, r] = <ground_q, aerial_r> = AERIAL[r, q].
AERIAL = np.array(
    [[5, 1, 0, 0],
     [5, 4, 9, 0],
     [0, 4, 3, 0],
     [1, 0, 2, 6]],
    dtype=np.float32,
)
GROUND = np.eye(4, dtype=np.float32)
# ground->aerial (columns of AERIAL): q0 ties 5 = 5 -> 0; q1 ties 4 = 4 -> 0; q2: 9 > 3 -> 1; q3 -> 0.
RANKS_G2A = [0, 0, 1, 0]
# aerial->ground (rows of AERIAL): r0 -> 0; r1: 5 and 9 > 4 -> 2; r2: 4 > 3 -> 1; r3 -> 0.
RANKS_A2G = [0, 2, 1, 0]


def brute_force_ranks(query, reference, positives=None):
    """Full-matrix reference in float64 (exact for integer descriptors)."""
    sims = query.astype(np.float64) @ reference.astype(np.float64).T
    positives = np.arange(len(query)) if positives is None else np.asarray(positives)
    true = sims[np.arange(len(query)), positives]
    return (sims > true[:, None]).sum(axis=1)


def integer_descriptors(n, d, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(-3, 4, size=(n, d)).astype(np.float32)


def test_ties_count_as_success_and_directions_differ():
    result = evaluate(GROUND, AERIAL, ks=(1, 2, 3))
    g2a = result["directions"]["ground_to_aerial"]
    a2g = result["directions"]["aerial_to_ground"]
    np.testing.assert_array_equal(g2a["ranks"], RANKS_G2A)
    np.testing.assert_array_equal(a2g["ranks"], RANKS_A2G)
    assert g2a["metrics"]["r@1"] == 0.75 and a2g["metrics"]["r@1"] == 0.5
    assert a2g["metrics"]["r@2"] == 0.75 and a2g["metrics"]["r@3"] == 1.0
    assert result["ranking"].startswith("strict <")


def test_recall_at_k_keys_and_topk():
    result = recall_at_k(GROUND, AERIAL, ks=(1, 5, 10), top_k=3)
    for key in ("r@1", "r@5", "r@10", "r@1%_floor", "r@1%_floor_plus_1", "k_1%_floor", "k_1%_floor_plus_1"):
        assert key in result
    assert result["k_1%_floor"] == 0 and result["r@1%_floor"] == 0.0  # N < 100: K = 0 by the formula
    assert result["ranks"].dtype == np.int64
    # Query 2 (column 2 = [0, 9, 3, 2]): references 1, 2, 3 in that order.
    np.testing.assert_array_equal(result["topk_indices"][2], [1, 2, 3])


def test_top1_percent_formula():
    assert top1_percent_k(8884) == {"floor": 88, "floor_plus_1": 89}
    assert top1_percent_k(92802) == {"floor": 928, "floor_plus_1": 929}
    assert top1_percent_k(250) == {"floor": 2, "floor_plus_1": 3}
    # The originals' int(0.01 * N) agrees with integer division for every N.
    assert all(int(0.01 * n) == top1_percent_k(n)["floor"] for n in range(1, 200_000, 7))
    m = metrics_from_ranks(np.array([87, 88, 89, 0]), 8884, ks=(1,))
    assert m["r@1%_floor"] == 0.5 and m["r@1%_floor_plus_1"] == 0.75


def test_top1_percent_both_conventions_on_250():
    n = 250
    wanted = np.repeat([0, 1, 2, 3], [100, 50, 50, 50])
    aerial = np.zeros((n, n), np.float32)
    np.fill_diagonal(aerial, 10.0)
    for q, rank in enumerate(wanted):  # `rank` other references beat query q's true match
        others = [(q + 1 + i) % n for i in range(rank)]
        aerial[others, q] = 20.0
    result = recall_at_k(np.eye(n, dtype=np.float32), aerial, ks=(1, 5))
    np.testing.assert_array_equal(result["ranks"], wanted)
    assert (result["k_1%_floor"], result["k_1%_floor_plus_1"]) == (2, 3)
    assert result["r@1%_floor"] == pytest.approx(0.6)
    assert result["r@1%_floor_plus_1"] == pytest.approx(0.8)
    assert result["r@1"] == pytest.approx(0.4) and result["r@5"] == 1.0


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 299, 300, 1000])
def test_chunked_equals_brute_force(chunk_size):
    ground = integer_descriptors(300, 24, seed=1)  # integer sims: many exact ties, all exact
    aerial = integer_descriptors(300, 24, seed=2)
    aerial[:150] = ground[:150] + integer_descriptors(150, 24, seed=3) // 2
    result = evaluate(ground, aerial, chunk_size=chunk_size, top_k=5)
    expected_g2a = brute_force_ranks(ground, aerial)
    expected_a2g = brute_force_ranks(aerial, ground)
    np.testing.assert_array_equal(result["directions"]["ground_to_aerial"]["ranks"], expected_g2a)
    np.testing.assert_array_equal(result["directions"]["aerial_to_ground"]["ranks"], expected_a2g)
    # Top-5: by similarity, ties broken by the lower index (a stable sort).
    sims = ground.astype(np.float64) @ aerial.astype(np.float64).T
    expected_topk = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(result["directions"]["ground_to_aerial"]["topk_indices"], expected_topk)


def test_random_unit_descriptors_and_low_precision():
    rng = np.random.default_rng(7)
    aerial = rng.normal(size=(200, 64)).astype(np.float32)
    ground = aerial + rng.normal(size=(200, 64)).astype(np.float32)
    aerial /= np.linalg.norm(aerial, axis=1, keepdims=True)
    ground /= np.linalg.norm(ground, axis=1, keepdims=True)
    result = recall_at_k(ground, aerial, chunk_size=33)
    # Away from exact ties the float32 result equals the float64 brute force.
    sims = ground.astype(np.float64) @ aerial.astype(np.float64).T
    true = np.diag(sims)
    margin = np.min(np.abs(sims - true[:, None]) + np.eye(200), axis=1)
    clear = margin > 1e-5
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(result["ranks"][clear], brute_force_ranks(ground, aerial)[clear])
    # float16 descriptors are ranked in float32: identical to passing their float32 values.
    half = recall_at_k(ground.astype(np.float16), aerial.astype(np.float16))
    again = recall_at_k(ground.astype(np.float16).astype(np.float32), aerial.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(half["ranks"], again["ranks"])


def test_explicit_positives():
    query = integer_descriptors(5, 8, seed=4)
    reference = integer_descriptors(9, 8, seed=5)
    positives = np.array([8, 0, 3, 3, 5])
    result = recall_at_k(query, reference, positives=positives, chunk_size=2)
    np.testing.assert_array_equal(result["ranks"], brute_force_ranks(query, reference, positives))
    assert result["n_queries"] == 5 and result["n_references"] == 9
    # Not one-to-one: only ground -> aerial is defined.
    with pytest.raises(CvmError, match="one-to-one"):
        evaluate(query, reference, positives=positives)
    only = evaluate(query, reference, positives=positives, directions=("ground_to_aerial",))
    np.testing.assert_array_equal(only["directions"]["ground_to_aerial"]["ranks"], result["ranks"])


def test_positives_from_ids_and_permutation_both_directions():
    perm = np.array([2, 0, 3, 1])
    shuffled = AERIAL[perm]  # reference row i is the original aerial perm[i]
    ids = ["a", "b", "c", "d"]
    result = evaluate(GROUND, shuffled, ids=ids, reference_ids=[ids[p] for p in perm])
    np.testing.assert_array_equal(result["directions"]["ground_to_aerial"]["ranks"], RANKS_G2A)
    a2g = result["directions"]["aerial_to_ground"]["ranks"]
    np.testing.assert_array_equal(a2g, np.array(RANKS_A2G)[perm])
    with pytest.raises(CvmError, match="more than once"):
        evaluate(GROUND, AERIAL, ids=ids, reference_ids=["a", "a", "c", "d"])


def radius_world():
    """Query 0's top-1 is reference 1 (wrong), 5.0 m away; reference 2 (10 m away) is its 2nd best."""
    aerial = np.array(
        [[3, 0, 0, 0],
         [9, 8, 0, 0],
         [6, 0, 7, 0],
         [0, 0, 0, 5]],
        dtype=np.float32,
    )
    east, north = 512345.25, 6100000.75  # UTM-sized numbers: float32 alone resolves only 0.5 m here
    locations = np.array(
        [[east, north], [east, north + 5.0], [east + 10.0, north], [east + 5000.0, north]], dtype=np.float64
    )
    return np.eye(4, dtype=np.float32), aerial, locations


def brute_force_radius_ranks(query, reference, q_loc, r_loc, radius):
    sims = query.astype(np.float64) @ reference.astype(np.float64).T
    ranks = []
    for q in range(len(query)):
        near = [r for r in range(len(reference)) if r == q or np.hypot(*(q_loc[q] - r_loc[r])) <= radius]
        ranks.append(min(int((sims[q] > sims[q, r]).sum()) for r in near))
    return np.array(ranks)


def test_radius_success():
    ground, aerial, locations = radius_world()
    at0 = recall_within_radius(ground, aerial, locations, locations, 0, ks=(1, 2, 3))
    at5 = recall_within_radius(ground, aerial, locations, locations, 5.0, ks=(1, 2, 3))
    at4 = recall_within_radius(ground, aerial, locations, locations, 4.9, ks=(1,))
    # Query 0: true rank 2 (9 and 6 beat 3); within 5 m, reference 1 is top-1.
    assert at0["ranks"][0] == 2 and at5["ranks"][0] == 0 and at4["ranks"][0] == 2
    assert at5["r@1"] == 1.0 and at0["r@1"] == 0.75
    for radius in (0.0, 4.9, 5.0, 10.0, 25.0):
        got = recall_within_radius(ground, aerial, locations, locations, radius, ks=(1,), chunk_size=3)
        np.testing.assert_array_equal(
            got["ranks"], brute_force_radius_ranks(ground, aerial, locations, locations, radius)
        )


def test_evaluate_radii_both_directions():
    ground, aerial, locations = radius_world()
    result = evaluate(ground, aerial, locations=locations, radii=(0, 5, 25), ks=(1,))
    g2a = result["directions"]["ground_to_aerial"]
    assert set(g2a["within_radius"]) == {"5", "25"}
    assert g2a["metrics"]["r@1"] == 0.75 and g2a["within_radius"]["5"]["r@1"] == 1.0
    a2g = result["directions"]["aerial_to_ground"]
    np.testing.assert_array_equal(
        a2g["radius_ranks"]["25"], brute_force_radius_ranks(aerial, ground, locations, locations, 25.0)
    )
    with pytest.raises(CvmError, match="locations"):
        evaluate(ground, aerial, radii=(5,))


def test_recall_curve_matches_metrics():
    ranks = np.array([0, 0, 1, 3, 7, 9])
    curve = recall_curve(ranks, 10)
    assert curve[0] == pytest.approx(2 / 6) and curve[1] == pytest.approx(3 / 6) and curve[-1] == 1.0
    assert curve[4] == pytest.approx(metrics_from_ranks(ranks, 10, ks=(5,))["r@5"])


def test_user_errors():
    with pytest.raises(CvmError, match="as many queries"):
        recall_at_k(GROUND[:3], AERIAL)
    with pytest.raises(CvmError, match="differ in size"):
        recall_at_k(GROUND, AERIAL[:, :3])
    bad = AERIAL.copy()
    bad[2, 1] = np.nan
    with pytest.raises(CvmError, match="NaN"):
        recall_at_k(GROUND, bad)
    with pytest.raises(CvmError, match="NaN"):
        recall_at_k(bad, GROUND)
    with pytest.raises(CvmError, match="positives"):
        recall_at_k(GROUND, AERIAL, positives=[0, 1, 2, 4])
    with pytest.raises(CvmError, match="directions"):
        evaluate(GROUND, AERIAL, directions=("sideways",))


def test_chunk_size_follows_memory_budget():
    # CVACT_test: 92,802 references within 1 GiB of scratch -> several hundred queries per chunk.
    chunk = chunk_size_for(92802, 1 << 30)
    assert 256 <= chunk <= 1024 and chunk % 64 == 0
    assert chunk_size_for(92802, 1 << 30, n_radii=2) < chunk
    assert chunk_size_for(10**9, 1) == 1

"""cvm.data.sampling: neighbour tables against brute-force rankings, and the batches grown from them."""

import json
import os

import numpy as np
import pytest

from cvm.data import sampling
from cvm.errors import CvmError


def brute_nearest(distance: np.ndarray, pool: int) -> np.ndarray:
    """Reference: a full stable sort of each row by distance, the row itself excluded (ties: lower index)."""
    distance = distance.astype(np.float64).copy()
    np.fill_diagonal(distance, np.inf)
    return np.argsort(distance, axis=1, kind="stable")[:, :pool]


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_gps_table_in_metres_is_the_brute_force_ranking_for_any_chunk(chunk):
    rng = np.random.default_rng(0)
    # UTM-sized coordinates (northing 6e6 m): the centring keeps metre resolution.
    locations = rng.uniform(0, 2000, (300, 2)) + np.array([3.2e5, 6.2e6])
    table = sampling.gps_neighbours(locations, "utm", 20, chunk=chunk)
    diff = locations[:, None] - locations[None]
    np.testing.assert_array_equal(table, brute_nearest(np.hypot(diff[..., 0], diff[..., 1]), 20))


def test_gps_table_in_degrees_ranks_by_great_circle_distance():
    rng = np.random.default_rng(1)
    # A wide spread (half the USA) where a planar degree distance would rank differently.
    latlon = np.stack([rng.uniform(25, 49, 400), rng.uniform(-124, -67, 400)], axis=1)
    table = sampling.gps_neighbours(latlon, "latlon", 15, chunk=50)
    # Independent reference: the central angle by the spherical law of cosines' stable form (Vincenty).
    lat, lon = np.radians(latlon[:, 0]), np.radians(latlon[:, 1])
    dl = lon[None] - lon[:, None]
    num = np.hypot(np.cos(lat[None]) * np.sin(dl),
                   np.cos(lat[:, None]) * np.sin(lat[None]) - np.sin(lat[:, None]) * np.cos(lat[None]) * np.cos(dl))
    den = np.sin(lat[:, None]) * np.sin(lat[None]) + np.cos(lat[:, None]) * np.cos(lat[None]) * np.cos(dl)
    np.testing.assert_array_equal(table, brute_nearest(np.arctan2(num, den), 15))
    # A planar ranking on degrees disagrees somewhere here (so the test can tell them apart).
    planar = brute_nearest(np.hypot(*(latlon[:, None] - latlon[None]).transpose(2, 0, 1)), 15)
    assert (planar != table).any()


def test_similarity_table_is_each_ground_views_hardest_aerials():
    rng = np.random.default_rng(2)
    # Small integer descriptors: every dot product is exact in float32 on any CPU, and ties are frequent, so
    # the table must break them as the reference does (the lower index first).
    ground = rng.integers(-3, 4, (250, 16)).astype(np.float32)
    aerial = rng.integers(-3, 4, (250, 16)).astype(np.float32)
    table = sampling.similarity_neighbours(ground, aerial, 30, chunk=40)
    sims = ground.astype(np.float64) @ aerial.T.astype(np.float64)
    np.testing.assert_array_equal(table, brute_nearest(-sims, 30))
    assert (table != np.arange(250)[:, None]).all()  # never the pair itself


def test_similarity_table_leaves_out_pairs_of_the_same_tile():
    rng = np.random.default_rng(3)
    keys = np.repeat(np.arange(50), 3)  # VIGOR-like: three panoramas per tile
    ground = rng.standard_normal((150, 8)).astype(np.float32)
    aerial = ground + 0.1 * rng.standard_normal((150, 8)).astype(np.float32)  # same tile would rank first
    table = sampling.similarity_neighbours(ground, aerial, 20, aerial_keys=keys)
    assert (keys[table] != keys[:, None]).all()


def test_tables_refuse_bad_inputs_naming_them():
    with pytest.raises(CvmError, match=r"\[N, 2\] locations"):
        sampling.gps_neighbours(np.zeros((5, 3)), "utm", 2)
    with pytest.raises(CvmError, match="location kind"):
        sampling.gps_neighbours(np.zeros((5, 2)), "feet", 2)
    with pytest.raises(CvmError, match="at least 2 pairs"):
        sampling.similarity_neighbours(np.zeros((1, 4)), np.zeros((1, 4)), 2)
    with pytest.raises(CvmError, match="same shape|one shape"):
        sampling.similarity_neighbours(np.zeros((4, 4)), np.zeros((4, 3)), 2)


def check_epoch(order, n, batch_size, keys=None):
    assert len(order) % batch_size == 0
    assert len(set(order.tolist())) == len(order)  # each pair at most once an epoch
    assert order.min() >= 0 and order.max() < n
    if keys is not None:
        for batch in order.reshape(-1, batch_size):
            assert len(set(keys[batch].tolist())) == batch_size  # one pair per tile in a batch


def test_shuffle_without_table_uses_every_pair_in_full_batches():
    order = sampling.neighbour_batches(100, 8, np.random.default_rng(0))
    check_epoch(order, 100, 8)
    assert len(order) == 96
    again = sampling.neighbour_batches(100, 8, np.random.default_rng(0))
    other = sampling.neighbour_batches(100, 8, np.random.default_rng(1))
    np.testing.assert_array_equal(order, again)
    assert (order != other).any()


def test_neighbour_batches_gather_each_anchors_neighbours():
    # 40 clusters of 8 pairs at one spot each, clusters 1 km apart: GPS neighbours are the cluster.
    rng = np.random.default_rng(4)
    centres = rng.uniform(0, 40000, (40, 2))
    locations = np.repeat(centres, 8, axis=0) + rng.uniform(-5, 5, (320, 2))
    cluster = np.repeat(np.arange(40), 8)
    table = sampling.gps_neighbours(locations, "metres", 16)
    order = sampling.neighbour_batches(320, 8, np.random.default_rng(0), table, select=14)
    check_epoch(order, 320, 8)
    same = np.mean([len(set(cluster[b].tolist())) == 1 for b in order.reshape(-1, 8)])
    shuffled = sampling.neighbour_batches(320, 8, np.random.default_rng(0))
    same_shuffled = np.mean([len(set(cluster[b].tolist())) == 1 for b in shuffled.reshape(-1, 8)])
    # The nearest half of the selection (7 of 14) is the anchor's own cluster: most batches are one cluster;
    # a random batch of 8 is one cluster with probability ~1e-10.
    assert same > 0.6 and same_shuffled == 0.0


def test_neighbour_batches_keep_tiles_unique_and_are_deterministic():
    rng = np.random.default_rng(5)
    keys = np.repeat(np.arange(60), 2)
    rng.shuffle(keys)
    table = sampling.similarity_neighbours(rng.standard_normal((120, 8)).astype(np.float32),
                                           rng.standard_normal((120, 8)).astype(np.float32), 32, aerial_keys=keys)
    a = sampling.neighbour_batches(120, 10, np.random.default_rng(7), table, select=8, aerial_keys=keys)
    b = sampling.neighbour_batches(120, 10, np.random.default_rng(7), table, select=8, aerial_keys=keys)
    check_epoch(a, 120, 10, keys)
    np.testing.assert_array_equal(a, b)
    assert len(a) >= 100  # the unique-tile rule defers pairs; it drops at most the tail


def test_sampler_schedule_persists_similarity_tables_and_reads_them_back(tmp_path):
    rng = np.random.default_rng(6)
    n = 64
    ground = rng.standard_normal((n, 8)).astype(np.float32)
    aerial = rng.standard_normal((n, 8)).astype(np.float32)
    calls = []

    def embed():
        calls.append(1)
        return ground, aerial

    locations = rng.uniform(0, 1000, (n, 2))
    folder = str(tmp_path / "sampler")
    sampler = sampling.NeighbourSampler(n, 8, seed=3, pool=16, select=6, refresh_epochs=2, locations=locations,
                                        location_kind="metres", embed=embed, folder=folder)
    assert [sampler.table_epoch(e) for e in range(6)] == [None, None, 2, 2, 4, 4]
    assert sampler.source(1) == "GPS neighbours" and "epoch 2" in sampler.source(3)
    for epoch in (0, 1):
        sampler.prepare(epoch)
        np.testing.assert_array_equal(sampler.table(epoch), sampling.gps_neighbours(locations, "metres", 16))
    assert not calls
    sampler.prepare(2)
    sampler.prepare(3)
    assert len(calls) == 1  # one embedding pass per refresh
    np.testing.assert_array_equal(sampler.table(3), sampling.similarity_neighbours(ground, aerial, 16))
    assert json.load(open(os.path.join(folder, "similarity_e002.json")))["n"] == n
    order = sampler.epoch_order(3)
    check_epoch(order, n, 8)

    def no_embed():
        raise AssertionError("a resumed run must read the persisted table")

    resumed = sampling.NeighbourSampler(n, 8, seed=3, pool=16, select=6, refresh_epochs=2, locations=locations,
                                        location_kind="metres", embed=no_embed, folder=folder)
    resumed.prepare(3)
    np.testing.assert_array_equal(resumed.epoch_order(3), order)
    # A damaged table file is recomputed, not trusted.
    with open(os.path.join(folder, "similarity_e002.npy"), "wb") as f:
        f.write(b"garbage")
    again = sampling.NeighbourSampler(n, 8, seed=3, pool=16, select=6, refresh_epochs=2, embed=embed, folder=folder)
    again.prepare(2)
    assert len(calls) == 2


def test_sampler_refuses_inconsistent_settings():
    with pytest.raises(CvmError, match="neighbour_select"):
        sampling.NeighbourSampler(10, 4, pool=4, select=5)
    with pytest.raises(CvmError, match="refresh_epochs"):
        sampling.NeighbourSampler(10, 4, refresh_epochs=-1)
    with pytest.raises(CvmError, match="embedding pass"):
        sampling.NeighbourSampler(10, 4, pool=4, select=2, refresh_epochs=1)

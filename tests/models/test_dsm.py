"""DSM: shapes, circular padding at the seam, correlation and crop distance against a brute-force NumPy
restatement of `corr` / `crop_sat` / `corr_crop_distance`, the FFT evaluator against the convolution path, and
orientation recovered from known crops.

Tolerances: maps are O(1) float32; a correlation sums H*Wg*C <= 256 products, so float32 accumulation errs by
~sqrt(256) * 6e-8 * |sum| < 1e-5 (oneDNN / FFT orders differ between CPUs); 2e-5 absolute on distances.
"""

import keras
import numpy as np
import pytest

from cvm.data.fov_protocol import shift_and_crop
from cvm.errors import CvmError
from cvm.evaluation.correlation import _block_kernel, spectra, stream_correlation_ranks, window_energies
from cvm.evaluation.orientation import orientation_label
from cvm.losses.triplet import weighted_soft_margin_triplet
from cvm.models.dsm import (
    DSM,
    DSMTripletLoss,
    circular_correlation,
    correlation_distance,
    ground_map_width,
    soft_margin_triplet_from_distance,
)
from cvm.models.vgg import VGG16Tower, pad_azimuth

ATOL = 2e-5


def brute_force(aerial, ground):
    """distance.py restated pair by pair in float64: (scores [Ng, Na, Wa], distance [Ng, Na], orientation)."""
    aerial, ground = aerial.astype(np.float64), ground.astype(np.float64)
    ng, na, wa, wg = len(ground), len(aerial), aerial.shape[2], ground.shape[2]
    scores = np.zeros((ng, na, wa))
    dist = np.zeros((ng, na))
    orient = np.zeros((ng, na), np.int64)
    for j in range(ng):
        for i in range(na):
            for k in range(wa):
                window = np.roll(aerial[i], -k, axis=1)[:, :wg]  # columns k .. k+wg-1 mod wa
                scores[j, i, k] = np.sum(window * ground[j])
            k = int(np.argmax(scores[j, i]))
            crop = np.roll(aerial[i], -k, axis=1)[:, :wg]
            crop = crop / np.linalg.norm(crop)
            dist[j, i] = 2 - 2 * np.sum(crop * ground[j])
            orient[j, i] = k
    return scores, dist, orient


def random_maps(rng, n_a, n_g, h=2, wa=8, wg=3, c=4):
    aerial = rng.normal(size=(n_a, h, wa, c)).astype("float32")
    ground = rng.normal(size=(n_g, h, wg, c)).astype("float32")
    ground /= np.linalg.norm(ground.reshape(n_g, -1), axis=1)[:, None, None, None]
    return aerial, ground


def test_circular_correlation_and_crop_distance_equal_brute_force():
    rng = np.random.default_rng(0)
    aerial, ground = random_maps(rng, 3, 4)
    scores, dist, orient = brute_force(aerial, ground)
    np.testing.assert_allclose(np.asarray(circular_correlation(aerial, ground)), scores, atol=ATOL)
    got_dist, got_orient = correlation_distance(aerial, ground)
    np.testing.assert_array_equal(np.asarray(got_orient), orient)
    np.testing.assert_allclose(np.asarray(got_dist), dist, atol=ATOL)


def test_full_fov_ground_is_as_wide_as_the_aerial():
    rng = np.random.default_rng(1)
    aerial, ground = random_maps(rng, 2, 2, wa=6, wg=6)
    _, dist, orient = brute_force(aerial, ground)
    got_dist, got_orient = correlation_distance(aerial, ground)
    np.testing.assert_array_equal(np.asarray(got_orient), orient)
    np.testing.assert_allclose(np.asarray(got_dist), dist, atol=ATOL)


def test_orientation_recovered_from_a_known_crop_of_the_aerial_map():
    rng = np.random.default_rng(2)
    aerial = rng.normal(size=(5, 4, 16, 8)).astype("float32")
    for k0 in (0, 5, 13, 15):  # 13 and 15: the crop wraps across the seam
        crop = np.roll(aerial[2], -k0, axis=1)[:, :6]
        ground = (crop / np.linalg.norm(crop))[None]
        dist, orient = correlation_distance(aerial, ground)
        assert int(orient[0, 2]) == k0
        assert abs(float(dist[0, 2])) < 1e-5  # the crop itself: distance 0
        assert int(np.argmin(np.asarray(dist)[0])) == 2


def test_protocol_label_is_where_the_correlation_peaks():
    """A panorama's feature map, shifted and cropped as the original loader (8 px = 1 column), peaks at its label."""
    rng = np.random.default_rng(3)
    pano = rng.normal(size=(4, 64, 16)).astype("float32")  # aligned with the aerial map (column to column)
    aerial = pano[None]
    for fov, shift_columns in ((360, 0), (180, 7), (90, 40), (70, 63)):
        ground = shift_and_crop(pano, shift_columns, fov)  # crop[:, c] = pano[:, (c - m) mod 64]
        assert ground.shape[1] == int(fov / 360 * 64)
        ground = (ground / np.linalg.norm(ground))[None]
        _, orient = correlation_distance(aerial, ground)
        assert int(orient[0, 0]) == int(orientation_label(8 * shift_columns, 512, 64))


def test_pad_azimuth_wraps_columns_and_zero_pads_rows():
    x = np.arange(2 * 3 * 5 * 2, dtype="float32").reshape(2, 3, 5, 2)
    expected = np.pad(np.pad(x, [(0, 0), (0, 0), (1, 1), (0, 0)], mode="wrap"), [(0, 0), (1, 1), (0, 0), (0, 0)])
    np.testing.assert_array_equal(np.asarray(pad_azimuth(x)), expected)


def test_circular_tower_is_equivariant_to_azimuth_rolls_and_plain_tower_is_unchanged():
    rng = np.random.default_rng(4)
    x = rng.uniform(-50, 50, (1, 16, 32, 3)).astype("float32")
    circ = VGG16Tower(width=0.125, blocks=4, circular=True)
    plain = VGG16Tower(width=0.125, blocks=4)
    out = np.asarray(circ(x))
    assert out.shape == (1, 2, 4, 64)
    rolled = np.asarray(circ(np.roll(x, 8, axis=2)))  # one column of the stride-8 map
    np.testing.assert_allclose(rolled, np.roll(out, 1, axis=2), atol=1e-4 * max(1.0, np.abs(out).max()))
    # SAME zero padding breaks the ring at the seam: the check above would fail for the plain tower.
    plain.build()
    for a, b in zip(plain.convs, circ.convs):
        b.kernel.assign(a.kernel)
        b.bias.assign(a.bias)
    p_out = np.asarray(plain(x))
    assert not np.allclose(np.asarray(plain(np.roll(x, 8, axis=2))), np.roll(p_out, 1, axis=2), atol=1e-3)
    # Away from the seam (and from the top/bottom rows) both see the same pixels.
    first = np.asarray(circ.convs[0](pad_azimuth(x)))
    np.testing.assert_allclose(first[:, :, 1:-1], np.asarray(plain.convs[0](x))[:, :, 1:-1], atol=1e-4)
    assert "blocks" not in VGG16Tower().get_config()  # the plain tower's config is as before


@pytest.fixture(scope="module")
def tiny_model():
    return DSM(backbone_width=0.125, aerial_size=(32, 128))


def test_shapes_and_ground_normalisation(tiny_model):
    rng = np.random.default_rng(5)
    aerial = rng.uniform(-100, 100, (2, 32, 128, 3)).astype("float32")
    ground = rng.uniform(-100, 100, (2, 32, 32, 3)).astype("float32")  # FoV 90 of a 128-wide panorama
    out = tiny_model({"ground": ground, "aerial": aerial})
    assert tiny_model.map_height == 1 and tiny_model.aerial_map_width == 16
    assert tuple(out["aerial"].shape) == (2, 1 * 16 * 16) and tuple(out["ground"].shape) == (2, 1 * 4 * 16)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out["ground"]), axis=1), 1.0, atol=1e-5)
    assert ground_map_width(99) == 13 and ground_map_width(128) == 16 and ground_map_width(512) == 64
    # conv1-conv3 frozen as the original (trainable=False), conv4 and the reductions train.
    frozen = {v.path.split("/")[-2] for v in tiny_model.non_trainable_weights}
    assert frozen == {f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3)) for i in range(1, n + 1)}


def test_paper_size_maps():
    model = DSM(backbone_width=0.0625)
    assert model.aerial_maps(np.zeros((1, 128, 512, 3), "float32")).shape == (1, 4, 64, 16)
    assert model.ground_maps(np.zeros((1, 128, 99, 3), "float32")).shape == (1, 4, 13, 16)  # FoV 70
    assert model.descriptor_dim == 4096 and model.orientation_bins == 64


def test_aerial_branch_is_circular_end_to_end(tiny_model):
    rng = np.random.default_rng(6)
    aerial = rng.uniform(-100, 100, (1, 32, 128, 3)).astype("float32")
    maps = np.asarray(tiny_model.aerial_maps(aerial))
    rolled = np.asarray(tiny_model.aerial_maps(np.roll(aerial, 3 * 8, axis=2)))
    np.testing.assert_allclose(rolled, np.roll(maps, 3, axis=2), atol=1e-4 * max(1.0, np.abs(maps).max()))


def test_dsm_loss_equals_the_formula_on_brute_force_distances(tiny_model):
    rng = np.random.default_rng(7)
    aerial, ground = random_maps(rng, 4, 4, h=1, wa=16, wg=4, c=16)
    loss = DSMTripletLoss.for_model(tiny_model)
    value = float(loss(ground.reshape(4, -1), aerial.reshape(4, -1)))
    _, dist, _ = brute_force(aerial, ground)  # [ground j, aerial i]
    pos = np.diag(dist)
    terms = np.log1p(np.exp(10 * (pos[None, :] - dist))) + np.log1p(np.exp(10 * (pos[:, None] - dist)))
    assert value == pytest.approx(0.5 * terms.sum() / 12, rel=1e-5)


def test_distance_loss_matches_the_descriptor_triplet_loss():
    rng = np.random.default_rng(8)
    g = rng.normal(size=(5, 6)).astype("float32")
    a = rng.normal(size=(5, 6)).astype("float32")
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    mask = (rng.uniform(size=(5, 5)) > 0.3).astype("float32")
    mask = np.minimum(mask, mask.T)
    for kwargs in ({}, {"include_diagonal": False}, {"mask": mask}, {"mask": mask, "mask_mode": "outside"}):
        expected = float(weighted_soft_margin_triplet(g, a, **kwargs))
        got = float(soft_margin_triplet_from_distance(2 - 2 * g @ a.T, **kwargs))  # rows = ground
        assert got == pytest.approx(expected, rel=1e-6)


def test_loss_has_gradients_for_both_towers(tiny_model):
    import tensorflow as tf

    rng = np.random.default_rng(9)
    inputs = {"ground": rng.uniform(-100, 100, (3, 32, 32, 3)).astype("float32"),
              "aerial": rng.uniform(-100, 100, (3, 32, 128, 3)).astype("float32")}
    loss = tiny_model.retrieval_loss()
    with tf.GradientTape() as tape:
        out = tiny_model(inputs, training=True)
        value = loss(out["ground"], out["aerial"])
    grads = tape.gradient(value, tiny_model.trainable_variables)
    assert np.isfinite(float(value))
    for var, grad in zip(tiny_model.trainable_variables, grads):
        assert grad is not None and np.all(np.isfinite(np.asarray(grad))), var.path
    assert any(float(tf.reduce_max(tf.abs(g))) > 0 for g, v in zip(grads, tiny_model.trainable_variables)
               if "VGG_sat" in v.path)


def test_fft_block_equals_the_convolution_path():
    rng = np.random.default_rng(10)
    aerial, ground = random_maps(rng, 7, 5, h=2, wa=16, wg=5, c=4)
    sims, orient = _block_kernel(16)(spectra(ground, 16), spectra(aerial, 16), window_energies(aerial, 5))
    dist, conv_orient = correlation_distance(aerial, ground)
    np.testing.assert_allclose(2 - 2 * np.asarray(sims), np.asarray(dist), atol=ATOL)
    np.testing.assert_array_equal(np.asarray(orient), np.asarray(conv_orient))


@pytest.mark.parametrize("chunk,block", [(None, None), (2, 3), (1, 1)])
def test_streamed_evaluator_equals_brute_force(chunk, block):
    rng = np.random.default_rng(11)
    aerial, ground = random_maps(rng, 9, 9, h=2, wa=8, wg=3, c=4)
    # Make the true pairs findable: each ground a noisy crop of its aerial at a random shift.
    shifts = rng.integers(0, 8, 9)
    for j in range(9):
        crop = np.roll(aerial[j], -shifts[j], axis=1)[:, :3] + rng.normal(0, 0.7, (2, 3, 4))
        ground[j] = crop / np.linalg.norm(crop)
    _, dist, orient = brute_force(aerial, ground)
    expected_ranks = np.array([np.sum(dist[j] < dist[j, j]) for j in range(9)])
    out = stream_correlation_ranks(ground, aerial, top_k=3, chunk_size=chunk, block_size=block)
    np.testing.assert_array_equal(out["ranks"], expected_ranks)
    np.testing.assert_array_equal(out["true_orientations"], np.diag(orient))
    np.testing.assert_array_equal(out["topk_indices"], np.argsort(dist, axis=1, kind="stable")[:, :3])
    np.testing.assert_array_equal(out["topk_orientations"], np.take_along_axis(orient, out["topk_indices"], 1))
    a2g = stream_correlation_ranks(ground, aerial, direction="aerial_to_ground", top_k=2, chunk_size=chunk,
                                   block_size=block)
    np.testing.assert_array_equal(a2g["ranks"], [np.sum(dist[:, i] < dist[i, i]) for i in range(9)])
    np.testing.assert_array_equal(a2g["topk_orientations"][:, 0], orient[np.argmin(dist, axis=0), np.arange(9)])


def test_model_reloads_from_a_keras_file(tiny_model, tmp_path):
    path = str(tmp_path / "dsm.keras")
    tiny_model.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.default_rng(12).uniform(-100, 100, (1, 32, 128, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(loaded.encode_aerial(x)), np.asarray(tiny_model.encode_aerial(x)))
    assert loaded.get_config()["aerial_size"] == [32, 128]


def test_bad_aerial_width_is_refused():
    with pytest.raises(CvmError, match="multiple of 8"):
        DSM(backbone_width=0.125, aerial_size=(32, 100))
    with pytest.raises(CvmError, match="no wider"):
        circular_correlation(np.zeros((1, 2, 4, 3), "float32"), np.zeros((1, 2, 5, 3), "float32"))


def test_the_retrieval_trainer_trains_dsm_with_its_loss(tiny_model):
    """The two-tower trainer needs no change: DSMTripletLoss takes the gathered flattened maps (graph mode)."""
    import tensorflow as tf

    from cvm.training.optimizers import FusedAdam
    from cvm.training.retrieval import RetrievalTrainer

    model = DSM(backbone_width=0.125, aerial_size=(32, 128))
    rng = np.random.default_rng(13)
    batch = ({"ground": rng.uniform(-100, 100, (4, 32, 32, 3)).astype("float32"),
              "aerial": rng.uniform(-100, 100, (4, 32, 128, 3)).astype("float32")}, {"index": np.arange(4)})
    trainer = RetrievalTrainer(model, model.retrieval_loss())
    trainer.compile(optimizer=FusedAdam(1e-3), jit_compile=False)
    before = np.asarray(model.aerial_reduction.convs[-1].kernel).copy()
    frozen = np.asarray(model.aerial_tower.convs[0].kernel).copy()
    history = trainer.fit(tf.data.Dataset.from_tensors(batch).repeat(2), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.allclose(np.asarray(model.aerial_reduction.convs[-1].kernel), before)
    np.testing.assert_array_equal(np.asarray(model.aerial_tower.convs[0].kernel), frozen)  # conv1_1 frozen

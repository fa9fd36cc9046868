"""Weighted soft-margin triplet loss against an explicit-loop NumPy reference of the original TF code."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from cvm.errors import CvmError
from cvm.losses import WeightedSoftMarginTripletLoss, utm_mask, weighted_soft_margin_triplet


def unit_rows(rng, b, d):
    x = rng.normal(size=(b, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def reference_loss(ground, aerial, alpha=10.0, include_diagonal=True, mask=None, mask_mode="inside"):
    """The original formula, one (i, j) at a time in float64: i = aerial index, j = ground index."""
    g = ground.astype(np.float64)
    s = aerial.astype(np.float64)
    b = len(g)
    dist = lambda i, j: 2.0 - 2.0 * float(np.dot(s[i], g[j]))  # noqa: E731
    softplus = lambda x: math.log1p(math.exp(-abs(x))) + max(x, 0.0)  # noqa: E731
    g2a = a2g = 0.0
    for i in range(b):
        for j in range(b):
            if i == j and not include_diagonal:
                continue
            m = 1.0 if mask is None else float(mask[i, j])
            arg_g2a = dist(j, j) - dist(i, j)  # anchor ground j, candidate aerial i
            arg_a2g = dist(i, i) - dist(i, j)  # anchor aerial i, candidate ground j
            if mask_mode == "inside":
                g2a += softplus(alpha * arg_g2a * m)
                a2g += softplus(alpha * arg_a2g * m)
            else:
                g2a += m * softplus(alpha * arg_g2a)
                a2g += m * softplus(alpha * arg_a2g)
    normaliser = b * (b - 1) if mask is None else float(np.sum(mask))
    return 0.5 * (g2a / normaliser + a2g / normaliser)


@pytest.fixture
def pairs():
    rng = np.random.default_rng(3)
    aerial = unit_rows(rng, 6, 16)
    ground = aerial + 0.6 * unit_rows(rng, 6, 16)
    ground /= np.linalg.norm(ground, axis=1, keepdims=True)
    return ground.astype(np.float32), aerial


def test_matches_reference_with_and_without_diagonal(pairs):
    ground, aerial = pairs
    for include in (True, False):
        got = float(weighted_soft_margin_triplet(ground, aerial, include_diagonal=include))
        assert got == pytest.approx(reference_loss(ground, aerial, include_diagonal=include), rel=1e-5)


def test_diagonal_offset_is_log2_over_b_minus_1(pairs):
    ground, aerial = pairs
    b = len(ground)
    with_diag = float(weighted_soft_margin_triplet(ground, aerial))
    without = float(weighted_soft_margin_triplet(ground, aerial, include_diagonal=False))
    assert with_diag - without == pytest.approx(math.log(2.0) / (b - 1), rel=1e-5)


def test_alpha_and_direction_asymmetry(pairs):
    ground, aerial = pairs
    got = float(weighted_soft_margin_triplet(ground, aerial, alpha=3.0))
    assert got == pytest.approx(reference_loss(ground, aerial, alpha=3.0), rel=1e-5)
    # Swapping the towers swaps the two direction terms; their average is unchanged.
    swapped = float(weighted_soft_margin_triplet(aerial, ground, alpha=3.0))
    assert swapped == pytest.approx(got, rel=1e-5)


def test_dynamic_batch_size_in_a_traced_function(pairs):
    ground, aerial = pairs
    fn = tf.function(
        weighted_soft_margin_triplet,
        input_signature=[tf.TensorSpec([None, 16], tf.float32), tf.TensorSpec([None, 16], tf.float32)],
    )
    for b in (6, 4):
        assert float(fn(ground[:b], aerial[:b])) == pytest.approx(reference_loss(ground[:b], aerial[:b]), rel=1e-5)
    no_diagonal = tf.function(
        lambda g, a: weighted_soft_margin_triplet(g, a, include_diagonal=False),
        input_signature=[tf.TensorSpec([None, 16], tf.float32), tf.TensorSpec([None, 16], tf.float32)],
    )
    expected = reference_loss(ground[:5], aerial[:5], include_diagonal=False)
    assert float(no_diagonal(ground[:5], aerial[:5])) == pytest.approx(expected, rel=1e-5)


def locations_with_near_pairs():
    # Pairs 0/1 are 10 m apart and 2/3 are exactly 25 m apart (>= 25 counts as far); 4 and 5 are far away.
    return np.array(
        [[500000.0, 6100000.0], [500010.0, 6100000.0], [500200.0, 6100000.0],
         [500200.0, 6100025.0], [501000.0, 6101000.0], [499000.0, 6099000.0]],
        dtype=np.float64,
    )


def test_utm_mask():
    mask = np.asarray(utm_mask(locations_with_near_pairs(), 25.0))
    assert mask.dtype == np.float32 and mask.shape == (6, 6)
    assert np.all(np.diag(mask) == 0)
    assert mask[0, 1] == 0 and mask[1, 0] == 0
    assert mask[2, 3] == 1  # exactly 25 m: kept, as the original's >= 625
    assert mask.sum() == 36 - 6 - 2


def test_utm_mask_keeps_float64_differences():
    # 24.9 m apart at a UTM northing: float32 would round the second point to 25 m (spacing 0.5 m).
    locations = np.array([[500000.0, 6100000.0], [500000.0, 6100024.9]], dtype=np.float64)
    assert np.float32(6100024.9) - np.float32(6100000.0) == 25.0
    np.testing.assert_array_equal(np.asarray(utm_mask(locations, 25.0)), np.zeros((2, 2)))


@pytest.mark.parametrize("mode", ["inside", "outside"])
def test_mask_modes_match_reference(pairs, mode):
    ground, aerial = pairs
    mask = np.asarray(utm_mask(locations_with_near_pairs(), 25.0))
    got = float(weighted_soft_margin_triplet(ground, aerial, mask=mask, mask_mode=mode))
    assert got == pytest.approx(reference_loss(ground, aerial, mask=mask, mask_mode=mode), rel=1e-5)


def test_mask_inside_vs_outside_differ_by_log2_per_masked_entry(pairs):
    ground, aerial = pairs
    mask = np.asarray(utm_mask(locations_with_near_pairs(), 25.0))
    inside = float(weighted_soft_margin_triplet(ground, aerial, mask=mask, mask_mode="inside"))
    outside = float(weighted_soft_margin_triplet(ground, aerial, mask=mask, mask_mode="outside"))
    masked = mask.size - mask.sum()
    assert inside - outside == pytest.approx(masked * math.log(2.0) / mask.sum(), rel=1e-5)


def test_gradients_flow_and_are_finite(pairs):
    ground, aerial = (tf.constant(x) for x in pairs)
    with tf.GradientTape() as tape:
        tape.watch([ground, aerial])
        loss = weighted_soft_margin_triplet(ground, aerial)
    grads = tape.gradient(loss, [ground, aerial])
    for g in grads:
        g = g.numpy()
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0


def test_mask_gradient_identical_inside_and_outside(pairs):
    ground, aerial = (tf.constant(x) for x in pairs)
    mask = utm_mask(locations_with_near_pairs(), 25.0)
    grads = []
    for mode in ("inside", "outside"):
        with tf.GradientTape() as tape:
            tape.watch(ground)
            loss = weighted_soft_margin_triplet(ground, aerial, mask=mask, mask_mode=mode)
        grads.append(tape.gradient(loss, ground).numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_stable_for_large_alpha(pairs):
    ground, aerial = pairs
    # Opposite vectors as negatives make alpha * (d_jj - d_ij) reach -4000 / +4000: log(1 + exp) overflows.
    aerial_flipped = np.concatenate([aerial[:3], -ground[3:]])
    g = tf.constant(ground)
    a = tf.constant(aerial_flipped)
    with tf.GradientTape() as tape:
        tape.watch([g, a])
        loss = weighted_soft_margin_triplet(g, a, alpha=1000.0)
    grads = tape.gradient(loss, [g, a])
    assert np.isfinite(float(loss))
    assert float(loss) == pytest.approx(reference_loss(ground, aerial_flipped, alpha=1000.0), rel=1e-4)
    assert all(np.all(np.isfinite(x.numpy())) for x in grads)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs_give_float32(pairs, dtype):
    ground, aerial = pairs
    g_low = tf.cast(ground, dtype)
    a_low = tf.cast(aerial, dtype)
    loss = weighted_soft_margin_triplet(g_low, a_low)
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    # The same rounded descriptors in float32: the loss math itself must not run in low precision.
    expected = float(weighted_soft_margin_triplet(tf.cast(g_low, "float32"), tf.cast(a_low, "float32")))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(loss) == pytest.approx(reference_loss(ground, aerial), rel=2e-2)


def test_loss_class_config_round_trip_and_mask(pairs):
    ground, aerial = pairs
    loss = WeightedSoftMarginTripletLoss(alpha=10.0, mask_radius_m=25.0, mask_mode="outside")
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(again, WeightedSoftMarginTripletLoss)
    assert again.get_config() == loss.get_config()
    locs = locations_with_near_pairs()
    mask = np.asarray(utm_mask(locs, 25.0))
    assert float(again(ground, aerial, locs)) == pytest.approx(
        reference_loss(ground, aerial, mask=mask, mask_mode="outside"), rel=1e-5
    )
    plain = WeightedSoftMarginTripletLoss()
    assert float(plain(ground, aerial)) == pytest.approx(reference_loss(ground, aerial), rel=1e-5)
    with pytest.raises(CvmError, match="locations"):
        loss(ground, aerial)
    with pytest.raises(CvmError, match="mask_mode"):
        WeightedSoftMarginTripletLoss(mask_mode="middle")

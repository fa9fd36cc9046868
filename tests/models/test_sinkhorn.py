"""Sinkhorn layer and transport: NumPy references, doubly-stochastic tolerance, stability, gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cvm.models import Sinkhorn
from cvm.models.sinkhorn import sinkhorn_log, transport, transport_map


def numpy_logsumexp(x, axis):
    top = np.max(x, axis=axis, keepdims=True)
    return top + np.log(np.sum(np.exp(x - top), axis=axis, keepdims=True))


def numpy_sinkhorn(cost, iterations, scale):
    """Independent float64 reference of ot_net.py's sinkhorn(scale * cost)."""
    log_alpha = scale * cost.astype("float64")
    for _ in range(iterations):
        log_alpha = log_alpha - numpy_logsumexp(log_alpha, axis=2)
        log_alpha = log_alpha - numpy_logsumexp(log_alpha, axis=1)
    return np.exp(log_alpha)


@pytest.mark.parametrize("scale,iterations", [(-1.0, 1), (-10.0, 20), (-100.0, 20), (-100.0, 3)])
def test_matches_the_numpy_reference(scale, iterations):
    cost = np.random.default_rng(0).uniform(0, 1, (3, 16, 16)).astype("float32")
    got = np.asarray(Sinkhorn(iterations, scale)(cost))
    np.testing.assert_allclose(got, numpy_sinkhorn(cost, iterations, scale), atol=2e-6, rtol=1e-4)


def test_doubly_stochastic_within_the_stated_tolerance():
    # The docstring's numbers: N = 64, costs in [0, 1), scale -10, 20 iterations.
    cost = np.random.default_rng(1).uniform(0, 1, (4, 64, 64)).astype("float32")
    plan = np.asarray(Sinkhorn(20, -10.0)(cost))
    assert np.all(plan >= 0)
    assert np.abs(plan.sum(axis=1) - 1).max() < 1e-5  # columns: normalised last
    assert np.abs(plan.sum(axis=2) - 1).max() < 1e-5  # rows: converged at this temperature
    # At the original's scale -100 the same costs are far from converged after 20 iterations:
    # columns stay exact, rows do not (a fixed 20-step map, not a projection).
    sharp = np.asarray(Sinkhorn(20, -100.0)(cost))
    assert np.abs(sharp.sum(axis=1) - 1).max() < 1e-5
    assert np.abs(sharp.sum(axis=2) - 1).max() > 1e-3


def test_identity_cost_gives_the_anti_identity():
    """CVFT's initial cost (identity bias) at scale -100: no mass on the diagonal, uniform elsewhere."""
    n = 16
    plan = np.asarray(Sinkhorn(20, -100.0)(np.eye(n, dtype="float32")[None]))[0]
    np.testing.assert_allclose(plan, (1 - np.eye(n)) / (n - 1), atol=1e-6)


def test_two_dimensional_input_is_one_batch():
    cost = np.random.default_rng(2).uniform(0, 1, (8, 8)).astype("float32")
    np.testing.assert_allclose(np.asarray(Sinkhorn(5, -3.0)(cost)), numpy_sinkhorn(cost[None], 5, -3.0),
                               atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("scale", [-1000.0, -1e4])
def test_large_scales_are_finite_in_values_and_gradients(scale):
    cost = tf.constant(np.random.default_rng(3).uniform(0, 1, (2, 16, 16)).astype("float32"))
    layer = Sinkhorn(20, scale)
    with tf.GradientTape() as tape:
        tape.watch(cost)
        plan = layer(cost)
        loss = tf.reduce_sum(plan * tf.reshape(tf.range(16 * 16, dtype=tf.float32), (1, 16, 16)) / 256.0)
    gradient = tape.gradient(loss, cost).numpy()
    assert np.all(np.isfinite(plan.numpy())) and np.all(np.isfinite(gradient))
    assert np.abs(gradient).max() > 0
    # At this temperature the plan is (close to) a permutation: columns exact, entries in [0, 1].
    np.testing.assert_allclose(plan.numpy().sum(axis=1), 1.0, atol=1e-5)


def test_log_space_matches_reference_in_log_domain_at_extreme_scale():
    # Entries of exp(-1e4 * ...) underflow to 0; the log plan itself stays exact and finite.
    cost = np.random.default_rng(4).uniform(0, 1, (1, 6, 6)).astype("float32")
    got = np.asarray(sinkhorn_log(tf.constant(cost * -1e4), 20))
    log_alpha = cost.astype("float64") * -1e4
    for _ in range(20):
        log_alpha = log_alpha - numpy_logsumexp(log_alpha, 2)
        log_alpha = log_alpha - numpy_logsumexp(log_alpha, 1)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, log_alpha, rtol=1e-4, atol=0.5)  # float32 of values up to ~1e4


def test_transport_matches_einsum():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 5, 9)).astype("float32")
    plan = rng.uniform(size=(2, 9, 9)).astype("float32")
    np.testing.assert_allclose(np.asarray(transport(x, plan)), np.einsum("bci,bio->bco", x, plan), rtol=1e-5,
                               atol=1e-5)
    # The NHWC form: positions row-major, the same sums.
    feature_map = rng.normal(size=(2, 3, 3, 5)).astype("float32")
    moved = np.asarray(transport_map(feature_map, plan))
    expected = np.einsum("bci,bio->bco", feature_map.reshape(2, 9, 5).transpose(0, 2, 1), plan)
    np.testing.assert_allclose(moved, expected.transpose(0, 2, 1).reshape(2, 3, 3, 5), rtol=1e-5, atol=1e-5)
    # A permutation plan moves position i to position perm[i].
    perm = rng.permutation(9)
    permutation = np.zeros((1, 9, 9), "float32")
    permutation[0, np.arange(9), perm] = 1.0
    flat = np.asarray(transport_map(feature_map[:1], permutation)).reshape(9, 5)
    np.testing.assert_array_equal(flat[perm], feature_map[0].reshape(9, 5))


def test_config_round_trip_and_validation():
    layer = Sinkhorn(iterations=7, scale=-3.5, name="s")
    clone = Sinkhorn.from_config(layer.get_config())
    assert (clone.iterations, clone.scale, clone.name) == (7, -3.5, "s")
    assert keras.saving.get_registered_object("cvm>Sinkhorn") is Sinkhorn
    with pytest.raises(ValueError, match="at least 1"):
        Sinkhorn(iterations=0)

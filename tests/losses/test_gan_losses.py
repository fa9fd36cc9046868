"""GAN losses against NumPy (sigmoid + nn.BCECriterion, nn.AbsCriterion), label smoothing, stability."""

import numpy as np
import pytest
from keras import ops

from cvm.losses.gan import (binary_cross_entropy_with_logits, discriminator_loss, generator_gan_loss, l1_loss)


def _bce_numpy(logits, target):
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    return float(np.mean(-(target * np.log(p) + (1 - target) * np.log(1 - p))))


@pytest.fixture
def logits():
    rng = np.random.default_rng(0)
    return rng.normal(0, 2, (3, 30, 30, 1)).astype("float32"), rng.normal(0, 2, (3, 30, 30, 1)).astype("float32")


def test_bce_matches_sigmoid_then_bce(logits):
    real, _ = logits
    for label in (0.0, 0.9, 1.0):
        value = float(binary_cross_entropy_with_logits(real, label))
        assert value == pytest.approx(_bce_numpy(real, label), rel=1e-5)


def test_discriminator_loss_is_the_unhalved_sum_with_smoothed_real_label(logits):
    real, fake = logits
    expected = _bce_numpy(real, 0.9) + _bce_numpy(fake, 0.0)
    assert float(discriminator_loss(real, fake)) == pytest.approx(expected, rel=1e-5)
    assert float(discriminator_loss(real, fake, real_label=1.0)) == pytest.approx(
        _bce_numpy(real, 1.0) + _bce_numpy(fake, 0.0), rel=1e-5)
    assert float(generator_gan_loss(fake)) == pytest.approx(_bce_numpy(fake, 0.9), rel=1e-5)


def test_l1_is_the_mean_absolute_error_in_float32():
    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, (2, 8, 8, 3)).astype("float16")
    b = rng.uniform(-1, 1, (2, 8, 8, 3)).astype("float32")
    value = l1_loss(a, b)
    assert ops.convert_to_numpy(value).dtype == np.float32
    assert float(value) == pytest.approx(float(np.mean(np.abs(a.astype(np.float64) - b))), rel=1e-6)


def test_bce_is_finite_for_saturated_logits():
    x = np.array([-200.0, -50.0, 50.0, 200.0], "float32")
    value = float(binary_cross_entropy_with_logits(x, 0.9))
    # -[t log s(x) + (1 - t) log(1 - s(x))] ~ |x| * (t if x < 0 else 1 - t) for large |x|
    expected = np.mean([200 * 0.9, 50 * 0.9, 50 * 0.1, 200 * 0.1])
    assert np.isfinite(value) and value == pytest.approx(expected, rel=1e-4)
    assert float(binary_cross_entropy_with_logits(np.float16(np.array([30.0])), 1.0)) < 1e-6

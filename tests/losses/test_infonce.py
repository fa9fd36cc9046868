"""Symmetric InfoNCE (Sample4Geo) against an independent float64 NumPy reference and torch's cross-entropy."""

import math

import numpy as np
import pytest
import tensorflow as tf

from cvm.errors import CvmError
from cvm.losses.infonce import SymmetricInfoNCE, false_negative_mask, pairwise_distance_m, symmetric_infonce

# Tolerances: the loss is a few float32 ops on O(10) numbers (|logits| <= exp(s) <= ~15, B <= 16): log-sum-exp
# in float32 is accurate to ~1e-6 relative; 1e-5 absolute covers it with a margin across CPUs (oneDNN on/off).
ATOL = 1e-5


def unit(rng, b, d):
    x = rng.standard_normal((b, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def numpy_reference(g, a, s, eps, keep=None):
    """Smoothed CE written from its definition: targets q = (1 - eps) onehot + eps / K over the K kept classes."""
    g, a = g.astype(np.float64), a.astype(np.float64)
    logits = math.exp(s) * g @ a.T
    b = len(g)
    keep = np.ones((b, b), bool) if keep is None else keep

    def rows(lg, kp):
        total = 0.0
        for i in range(b):
            cls = np.flatnonzero(kp[i])
            z = lg[i, cls]
            logp = z - (z.max() + np.log(np.exp(z - z.max()).sum()))
            q = np.full(len(cls), eps / len(cls))
            q[cls == i] += 1.0 - eps
            total += -(q * logp).sum()
        return total / b

    return 0.5 * (rows(logits, keep) + rows(logits.T, keep.T))


@pytest.mark.parametrize("b,d,s,eps", [(8, 16, math.log(1 / 0.07), 0.1), (5, 4, 0.3, 0.0), (16, 32, 3.9, 0.25)])
def test_matches_numpy_reference(b, d, s, eps):
    rng = np.random.default_rng(b)
    g, a = unit(rng, b, d), unit(rng, b, d)
    a[:2] = g[:2]  # a few easy positives, so the logits are not all alike
    got = float(symmetric_infonce(g, a, tf.constant(s), label_smoothing=eps))
    assert got == pytest.approx(numpy_reference(g, a, s, eps), abs=ATOL)


def test_matches_torch_cross_entropy_value_and_gradients():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    b, d = 12, 24
    g, a = unit(rng, b, d), unit(rng, b, d)
    s0 = math.log(1 / 0.07)

    # Sample4Geo's loss (sample4geo/loss.py, single process), written out in torch.
    tg, ta = torch.tensor(g, requires_grad=True), torch.tensor(a, requires_grad=True)
    ts = torch.tensor(s0, requires_grad=True)
    logits = ts.exp() * F.normalize(tg, dim=-1) @ F.normalize(ta, dim=-1).T
    labels = torch.arange(b)
    ref = (F.cross_entropy(logits, labels, label_smoothing=0.1) + F.cross_entropy(logits.T, labels,
                                                                                  label_smoothing=0.1)) / 2
    ref.backward()

    vg, va, vs = tf.Variable(g), tf.Variable(a), tf.Variable(s0, dtype=tf.float32)
    loss_fn = SymmetricInfoNCE(label_smoothing=0.1)
    with tf.GradientTape() as tape:
        loss = loss_fn(vg, va, logit_scale=vs)
    grads = tape.gradient(loss, [vg, va, vs])
    assert float(loss) == pytest.approx(float(ref.detach()), abs=ATOL)
    # Unit inputs: torch's F.normalize has Jacobian (I - x x^T) there, so only the tangential parts agree.
    for ours, x, theirs in ((grads[0], g, tg.grad), (grads[1], a, ta.grad)):
        ours = ours.numpy()
        tangential = ours - (ours * x).sum(1, keepdims=True) * x
        np.testing.assert_allclose(tangential, theirs.numpy(), atol=1e-5)
    assert float(grads[2]) == pytest.approx(float(ts.grad), abs=1e-5)
    assert abs(float(grads[2])) > 1e-3  # the scale does learn


def test_false_negative_mask_matches_reference_and_changes_the_loss():
    rng = np.random.default_rng(5)
    b = 6
    g, a = unit(rng, b, 8), unit(rng, b, 8)
    xy = np.array([[0, 0], [10, 0], [100, 0], [100, 24.9], [300, 0], [300, 25.0]], np.float64)
    keep = np.asarray(false_negative_mask(xy, 25.0))
    expected = np.ones((b, b), bool)
    for i, j in ((0, 1), (2, 3)):  # 10 m and 24.9 m apart: masked; 25.0 m is kept (>= radius)
        expected[i, j] = expected[j, i] = False
    np.testing.assert_array_equal(keep, expected)
    loss = SymmetricInfoNCE(mask_radius_m=25.0)
    got = float(loss(g, a, locations=xy, logit_scale=2.0))
    assert got == pytest.approx(numpy_reference(g, a, 2.0, 0.1, keep=expected), abs=ATOL)
    assert abs(got - float(symmetric_infonce(g, a, 2.0))) > 1e-3


def test_latlon_distances_are_great_circle_metres():
    # 0.001 deg of latitude = 111.195 m on the 6,371,008.8 m sphere; 0.001 deg of longitude at 60 deg: half of it.
    ll = np.array([[60.0, 10.0], [60.001, 10.0], [60.0, 10.001]])
    dist = np.asarray(pairwise_distance_m(ll, "latlon"))
    per_deg = 6371008.8 * math.pi / 180
    assert dist[0, 1] == pytest.approx(0.001 * per_deg, rel=1e-6)
    assert dist[0, 2] == pytest.approx(0.001 * per_deg * math.cos(math.radians(60)), rel=1e-4)
    keep = np.asarray(false_negative_mask(ll, 60.0, "latlon"))
    assert not keep[0, 2] and keep[0, 1] and keep.diagonal().all()


def test_mixed_precision_inputs_give_float32_loss():
    rng = np.random.default_rng(0)
    g, a = unit(rng, 8, 16), unit(rng, 8, 16)
    loss16 = symmetric_infonce(tf.constant(g, tf.bfloat16), tf.constant(a, tf.bfloat16), tf.constant(2.6))
    assert loss16.dtype == tf.float32
    # bfloat16 descriptors carry ~3 significant digits: the loss moves by at most ~exp(s) * 2^-8 * 2.
    assert float(loss16) == pytest.approx(numpy_reference(g, a, 2.6, 0.1), abs=0.15)


def test_bad_settings_raise_cvm_error():
    with pytest.raises(CvmError, match="label_smoothing"):
        SymmetricInfoNCE(label_smoothing=1.0)
    with pytest.raises(CvmError, match="location_kind"):
        SymmetricInfoNCE(location_kind="utm-ish")
    with pytest.raises(CvmError, match="no locations"):
        SymmetricInfoNCE(mask_radius_m=25.0)(np.eye(2, dtype="float32"), np.eye(2, dtype="float32"), logit_scale=1.0)
    with pytest.raises(CvmError, match="logit_scale"):
        SymmetricInfoNCE()(np.eye(2, dtype="float32"), np.eye(2, dtype="float32"))

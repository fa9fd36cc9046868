"""CVFT and its baselines: registry, resize parity with TF1, the OT head against NumPy, gradients,
paper shapes, freezing, .keras round trip, and learning on the synthetic world."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cvm.errors import CvmError
from cvm.models import CVFT, CVFTVGGConv, CVFTVGGGP, available_methods, build_model, builder_options
from cvm.models.cvft import ot_map_size, resize_bilinear

SMALL = dict(backbone_width=0.125, aerial_size=(96, 96))  # 3x3 aerial map: N = 9
GROUND, AERIAL = (48, 160), (96, 96)


def small_batch(seed=0, batch=2):
    rng = np.random.default_rng(seed)
    return {
        "ground": rng.uniform(-100, 100, (batch, *GROUND, 3)).astype("float32"),
        "aerial": rng.uniform(-100, 100, (batch, *AERIAL, 3)).astype("float32"),
    }


def test_registered_with_the_training_options():
    assert {"cvft", "cvft_vgg_conv", "cvft_vgg_gp"} <= set(available_methods())
    options = builder_options("cvft")
    assert options["sinkhorn_iterations"] == 20 and options["sinkhorn_scale"] == -100.0
    assert options["resize_mode"] == "legacy" and options["keep_prob"] == 0.8 and options["freeze_blocks"] == 3
    assert "sinkhorn_iterations" not in builder_options("cvft_vgg_conv")
    with pytest.raises(CvmError, match="resize_mode"):
        build_model("cvft", resize_mode="nearest", **SMALL)
    with pytest.raises(CvmError, match="sinkhorn_iterations"):
        build_model("cvft", sinkhorn_iterations=0, **SMALL)
    with pytest.raises(CvmError, match="keep_prob"):
        build_model("cvft_vgg_gp", keep_prob=1.5)


@pytest.mark.parametrize("source,target", [((4, 20), (8, 8)), ((7, 39), (8, 8)), ((2, 5), (3, 3)),
                                           ((5, 3), (2, 7)), ((1, 1), (3, 2)), ((6, 6), (6, 6))])
def test_resize_matches_tensorflow(source, target):
    images = np.random.default_rng(0).normal(size=(2, *source, 3)).astype("float32")
    legacy = np.asarray(resize_bilinear(images, target, "legacy"))
    expected = tf.compat.v1.image.resize_bilinear(images, target, align_corners=False).numpy()
    np.testing.assert_allclose(legacy, expected, atol=1e-6, rtol=1e-6)
    half = np.asarray(resize_bilinear(images, target, "half_pixel"))
    np.testing.assert_allclose(half, tf.image.resize(images, target, "bilinear").numpy(), atol=1e-6, rtol=1e-6)
    if source != target and source != (1, 1):
        assert np.abs(legacy - half).max() > 1e-3  # the two conventions do differ


def test_legacy_resize_by_hand():
    # 1 x 2 -> 1 x 4, legacy: sources 0, 0.5, 1, 1.5 -> clamped at the last pixel.
    row = np.array([10.0, 20.0], "float32").reshape(1, 1, 2, 1)
    got = np.asarray(resize_bilinear(row, (1, 4), "legacy")).ravel()
    np.testing.assert_allclose(got, [10, 15, 20, 20])
    got = np.asarray(resize_bilinear(row, (1, 4), "half_pixel")).ravel()  # sources -0.25, 0.25, 0.75, 1.25
    np.testing.assert_allclose(got, [10, 12.5, 17.5, 20])


def numpy_ot_head(model, ground_map):
    """Independent NumPy forward of CVFT's OT module and descriptor from the resized ground map."""
    b, h, w, c = ground_map.shape
    n = h * w
    kernel, bias = (np.asarray(v, "float64") for v in model.cost_conv.weights)
    cost = np.maximum(ground_map.reshape(b, n, c) @ kernel.reshape(c, 1) + bias, 0).reshape(b, n)
    fc_kernel, fc_bias = (np.asarray(v, "float64") for v in model.cost_fc.weights)
    log_alpha = model.sinkhorn_scale * (cost @ fc_kernel + fc_bias).reshape(b, n, n)
    for _ in range(model.sinkhorn_iterations):
        for axis in (2, 1):
            top = log_alpha.max(axis=axis, keepdims=True)
            log_alpha = log_alpha - (top + np.log(np.exp(log_alpha - top).sum(axis=axis, keepdims=True)))
    plan = np.exp(log_alpha)
    moved = np.einsum("bci,bio->bco", ground_map.reshape(b, n, c).transpose(0, 2, 1), plan)
    flat = moved.transpose(0, 2, 1).reshape(b, -1)
    return flat / np.linalg.norm(flat, axis=1, keepdims=True), plan


def test_ot_head_matches_numpy():
    model = build_model("cvft", sinkhorn_scale=-10.0, **SMALL)
    rng = np.random.default_rng(1)
    # Give the cost input-dependent weights: at the cost FC's init every input gets nearly the same plan,
    # and a negative cost-conv bias can leave the ReLU'd cost at zero (then the plan is the anti-identity).
    model.cost_fc.kernel.assign(rng.normal(0, 0.05, model.cost_fc.kernel.shape).astype("float32"))
    model.cost_conv.kernel.assign(rng.normal(0, 0.05, model.cost_conv.kernel.shape).astype("float32"))
    model.cost_conv.bias.assign(np.full((1,), 0.5, "float32"))
    batch = small_batch()
    ground_map = np.asarray(model._ground_map(batch["ground"], False))
    assert ground_map.shape == (2, 3, 3, 64)
    descriptor, plan = numpy_ot_head(model, ground_map.astype("float64"))
    np.testing.assert_allclose(np.asarray(model.transport_plan(ground_map)), plan, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(model.encode_ground(batch["ground"])), descriptor, atol=1e-5,
                               rtol=1e-4)
    assert not np.allclose(plan[0], plan[1], atol=1e-3)  # the plan depends on the image


def test_vgg_conv_is_cvft_without_transport():
    cvft = build_model("cvft", **SMALL)
    conv = build_model("cvft_vgg_conv", **SMALL)
    for a, b in zip(conv.weights, [w for w in cvft.weights if "ot_grd_branch" not in w.path]):
        b.assign(a)
    batch = small_batch()
    np.testing.assert_allclose(np.asarray(conv.encode_aerial(batch["aerial"])),
                               np.asarray(cvft.encode_aerial(batch["aerial"])), atol=1e-6)
    ground_map = np.asarray(conv._ground_map(batch["ground"], False)).reshape(2, -1)
    np.testing.assert_allclose(np.asarray(conv.encode_ground(batch["ground"])),
                               ground_map / np.linalg.norm(ground_map, axis=1, keepdims=True), atol=1e-6)


def test_vgg_gp_is_the_global_max_of_conv5_3():
    model = build_model("cvft_vgg_gp", backbone_width=0.125)
    assert model.descriptor_dim == 64 and model.l2_normalized
    images = small_batch()["ground"]
    pooled = np.asarray(model.ground_tower(images)).max(axis=(1, 2))
    np.testing.assert_allclose(np.asarray(model.encode_ground(images)),
                               pooled / np.linalg.norm(pooled, axis=1, keepdims=True), atol=1e-6)


def test_gradients_reach_the_cost_fc_and_towers_are_frozen_up_to_conv3():
    keras.utils.set_random_seed(0)
    model = build_model("cvft", **SMALL)
    # A live cost ReLU (with the original's Xavier bias on one unit it is dead for many seeds: then the
    # cost is 0, the plan the fixed anti-identity and no gradient reaches the cost layers at all).
    model.cost_conv.bias.assign(np.full((1,), 0.5, "float32"))
    batch = small_batch()
    with tf.GradientTape() as tape:
        out = model(batch, training=True)
        loss = tf.reduce_sum(tf.matmul(out["ground"], out["aerial"], transpose_b=True) * tf.eye(2))
    names = [v.path for v in model.trainable_variables]
    gradients = dict(zip(names, tape.gradient(loss, model.trainable_variables)))
    for name in ("ot_grd_branchot_fc/kernel", "ot_grd_branchot_fc/bias", "ot_grd_branchot_conv/kernel"):
        (gradient,) = [g for n, g in gradients.items() if name in n]
        assert np.all(np.isfinite(gradient.numpy())) and np.abs(gradient.numpy()).max() > 0, name
    assert not any(f"conv{b}_" in n for n in names for b in (1, 2, 3))
    assert any("VGG_grd/conv4_1" in n for n in names)
    # Dropout only while training.
    eval_a, eval_b = model(batch)["ground"], model(batch)["ground"]
    np.testing.assert_array_equal(np.asarray(eval_a), np.asarray(eval_b))
    assert np.abs(np.asarray(model(batch, training=True)["ground"]) - np.asarray(eval_a)).max() > 1e-4


def test_paper_sizes():
    # Build only at full width: the descriptor is 8 * 8 * 64 = 4096 and the cost FC 64 -> 4096.
    model = build_model("cvft")
    assert model.descriptor_dim == 4096 and model.positions == 64
    assert tuple(model.cost_fc.kernel.shape) == (64, 4096)
    np.testing.assert_array_equal(np.asarray(model.cost_fc.bias).reshape(64, 64), np.eye(64))
    assert (ot_map_size(112), ot_map_size(616), ot_map_size(256)) == (4, 20, 8)
    assert build_model("cvft_vgg_conv").descriptor_dim == 4096
    assert build_model("cvft_vgg_gp").descriptor_dim == 512
    # One forward at paper sizes with 1/8-wide towers.
    small = build_model("cvft", backbone_width=0.125)
    rng = np.random.default_rng(0)
    out = small({"ground": rng.uniform(-100, 100, (1, 112, 616, 3)).astype("float32"),
                 "aerial": rng.uniform(-100, 100, (1, 256, 256, 3)).astype("float32")})
    for view in ("ground", "aerial"):
        assert out[view].shape == (1, 4096)
        np.testing.assert_allclose(np.linalg.norm(np.asarray(out[view]), axis=1), 1.0, atol=1e-5)


def test_aerial_size_must_match_the_built_size():
    model = build_model("cvft", **SMALL)
    with pytest.raises(CvmError, match=r"aerial_size=\(96, 96\).*64x64.*aerial_size=\(64, 64\)"):
        model.encode_aerial(np.zeros((1, 64, 64, 3), "float32"))
    # Sizes that give the same map are fine (SAME padding: 81..96 -> 3).
    assert model.encode_aerial(np.zeros((1, 90, 90, 3), "float32")).shape == (1, 9 * 64)


@pytest.mark.parametrize("method,cls", [("cvft", CVFT), ("cvft_vgg_conv", CVFTVGGConv), ("cvft_vgg_gp", CVFTVGGGP)])
def test_keras_round_trip(method, cls, tmp_path):
    options = dict(SMALL, keep_prob=0.5, init="he")
    if method == "cvft":
        options.update(sinkhorn_iterations=7, sinkhorn_scale=-30.0, resize_mode="half_pixel")
    model = build_model(method, **options)
    batch = small_batch()
    expected = model(batch)
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert isinstance(reloaded, cls) and reloaded.descriptor_dim == model.descriptor_dim
    assert reloaded.keep_prob == 0.5 and reloaded.aerial_size == (96, 96)
    if method == "cvft":
        assert (reloaded.sinkhorn_iterations, reloaded.sinkhorn_scale, reloaded.resize_mode) == (7, -30.0,
                                                                                                  "half_pixel")
    got = reloaded(batch)
    for view in ("ground", "aerial"):
        np.testing.assert_allclose(np.asarray(got[view]), np.asarray(expected[view]), atol=1e-6)


@pytest.mark.slow  # 25 s alone on 2 CPU cores (78 s with the machine shared)
def test_training_on_the_synthetic_world_improves_recall(tmp_path):
    from cvm.training.config import TrainConfig
    from cvm.training.loop import Run

    config = TrainConfig(model_dir=str(tmp_path / "run"), method="cvft", synthetic_pairs=120,
                         ground_size=(32, 128), aerial_size=(128, 128), batch_size=8, keep_prob=1.0, lr=3e-4,
                         eval_batch_size=24, jit_compile=False, epochs=4, best_metric="r@5")
    run = Run(config, progress=False)
    assert run.encoder.aerial_size == (128, 128) and run.encoder.positions == 16  # built for the image size
    before = run.validate(0)
    state = run.train()
    after = max(state["history"], key=lambda h: h["r@5"])
    assert after["r@5"] > before["r@5"] + 0.2, (before, state["history"])
    assert after["r@1"] > before["r@1"], (before, state["history"])


def test_a_dead_cost_relu_leaves_the_fixed_anti_identity():
    """The original's single-unit cost ReLU negative everywhere: cost = FC bias, no gradient to the cost conv."""
    model = build_model("cvft", **SMALL)
    model.cost_conv.bias.assign(np.full((1,), -1e4, "float32"))
    batch = small_batch()
    ground_map = model._ground_map(batch["ground"], False)
    plan = np.asarray(model.transport_plan(ground_map))
    np.testing.assert_allclose(plan, np.broadcast_to((1 - np.eye(9)) / 8, plan.shape), atol=1e-6)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model.encode_ground(batch["ground"], training=True)[:, :10])
    fc_kernel, fc_bias, conv_kernel = (np.asarray(g) for g in tape.gradient(
        loss, [model.cost_fc.kernel, model.cost_fc.bias, model.cost_conv.kernel]))
    assert np.all(fc_kernel == 0) and np.all(conv_kernel == 0)
    assert np.abs(fc_bias).max() > 0  # only an input-independent plan can still be learnt

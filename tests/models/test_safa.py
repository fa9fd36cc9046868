"""SAFA: importance generator and aggregation against NumPy, paper shapes, errors, .keras round trip,
and a short synthetic-world training that learns."""

import keras
import numpy as np
import pytest

from cvm.errors import CvmError
from cvm.models import SAFA, SpatialAwareImportance, available_methods, build_model
from cvm.models.safa import feature_map_size, spatial_aware_aggregate

SMALL = dict(backbone_width=0.125, ground_size=(64, 256), aerial_size=(64, 64))


def small_batch(seed=0, batch=2, ground=(64, 256), aerial=(64, 64)):
    rng = np.random.default_rng(seed)
    return {
        "ground": rng.uniform(-100, 100, (batch, *ground, 3)).astype("float32"),
        "aerial": rng.uniform(-100, 100, (batch, *aerial, 3)).astype("float32"),
    }


def numpy_aggregate(local, importance):
    """global[b, d, c] = sum_i local[b, i, c] importance[b, i, d], flattened d-major, with loops."""
    batch, h, w, channels = local.shape
    flat = local.reshape(batch, h * w, channels)
    maps = importance.shape[-1]
    out = np.zeros((batch, maps * channels))
    for b in range(batch):
        for d in range(maps):
            for c in range(channels):
                out[b, d * channels + c] = sum(flat[b, i, c] * importance[b, i, d] for i in range(h * w))
    return out


def numpy_importance(local, w1, b1, w2, b2):
    """Channel mean -> per map d: (N -> N/2) then (N/2 -> N), independent weights, no nonlinearity."""
    batch = local.shape[0]
    vec1 = local.mean(axis=-1).reshape(batch, -1)
    maps = w1.shape[-1]
    out = np.zeros((batch, w2.shape[1], maps))
    for d in range(maps):
        hidden = vec1 @ w1[:, :, d] + b1[0, :, d]
        out[:, :, d] = hidden @ w2[:, :, d] + b2[0, :, d]
    return out


def test_aggregation_matches_numpy():
    rng = np.random.default_rng(0)
    local = rng.normal(size=(2, 2, 3, 5)).astype("float32")
    importance = rng.normal(size=(2, 6, 4)).astype("float32")
    got = np.asarray(spatial_aware_aggregate(local, importance))
    assert got.shape == (2, 20)
    np.testing.assert_allclose(got, numpy_aggregate(local, importance), rtol=1e-5, atol=1e-5)


def test_importance_generator_matches_numpy_and_initialisers():
    layer = SpatialAwareImportance(maps=3)
    layer.build((None, 3, 5, 7))  # N = 15 -> floor(15 / 2) = 7 hidden cells, as int(h * w / 2)
    assert tuple(layer.weights1.shape) == (15, 7, 3) and tuple(layer.biases2.shape) == (1, 15, 3)
    np.testing.assert_array_equal(np.asarray(layer.biases1), np.float32(0.1))
    w = np.asarray(layer.weights1)
    assert abs(w.std() - 0.005 * 0.88) < 0.0015 and np.abs(w).max() <= 0.01 + 1e-6  # truncated normal, std 0.005
    rng = np.random.default_rng(1)
    for variable in layer.weights:
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    local = rng.normal(size=(2, 3, 5, 7)).astype("float32")
    expected = numpy_importance(local, *(np.asarray(v) for v in (layer.weights1, layer.biases1, layer.weights2,
                                                                   layer.biases2)))
    np.testing.assert_allclose(np.asarray(layer(local)), expected, rtol=1e-4, atol=1e-3)


def test_model_is_tower_pool_importance_aggregate_normalise():
    model = build_model("safa", **SMALL, spatial_maps=3)
    assert model.built and model.l2_normalized and model.descriptor_dim == 3 * 64
    rng = np.random.default_rng(2)
    for layer in (model.ground_importance, model.aerial_importance):  # non-trivial importance maps
        for variable in layer.weights:
            variable.assign(rng.normal(0, 0.05, size=variable.shape).astype("float32"))
    batch = small_batch()
    out = model(batch)
    for view, tower, layer in (("ground", model.ground_tower, model.ground_importance),
                               ("aerial", model.aerial_tower, model.aerial_importance)):
        features = np.asarray(tower(batch[view]))
        b, h, w, c = features.shape
        padded = np.full((b, h + h % 2, w + w % 2, c), -np.inf, np.float32)  # SAME 2x2/2 pool
        padded[:, :h, :w] = features
        pooled = padded.reshape(b, (h + 1) // 2, 2, (w + 1) // 2, 2, c).max(axis=(2, 4))
        importance = numpy_importance(pooled, *(np.asarray(v) for v in (layer.weights1, layer.biases1,
                                                                          layer.weights2, layer.biases2)))
        descriptor = numpy_aggregate(pooled, importance)
        descriptor /= np.linalg.norm(descriptor, axis=1, keepdims=True)
        np.testing.assert_allclose(np.asarray(out[view]), descriptor, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(np.asarray(out[view]), axis=1), 1.0, atol=1e-5)


def test_paper_shapes_polar_and_plain():
    assert "safa" in available_methods()
    assert feature_map_size((112, 616)) == (4, 20) and feature_map_size((256, 256)) == (8, 8)
    polar = build_model("safa")  # 112x616 panorama and polar aerial (SAFA_8)
    assert polar.descriptor_dim == 4096 and polar.keep_prob == 0.8 and polar.freeze_blocks == 0
    assert tuple(polar.ground_importance.weights1.shape) == (80, 40, 8)
    assert tuple(polar.aerial_importance.weights2.shape) == (40, 80, 8)
    # SAFA trains every VGG layer: 2 towers x 13 convs x (kernel, bias) + 2 x 4 importance variables.
    assert len(polar.trainable_weights) == 2 * 13 * 2 + 8
    plain = build_model("safa", aerial_size=(256, 256))
    assert plain.descriptor_dim == 4096
    assert tuple(plain.aerial_importance.weights1.shape) == (64, 32, 8)
    assert tuple(plain.ground_importance.weights1.shape) == (80, 40, 8)


def test_dropout_only_when_training():
    model = build_model("safa", **SMALL)
    batch = small_batch(3)
    a = np.asarray(model.encode_aerial(batch["aerial"]))
    np.testing.assert_array_equal(a, np.asarray(model.encode_aerial(batch["aerial"])))
    assert np.abs(np.asarray(model.encode_aerial(batch["aerial"], training=True)) - a).max() > 1e-3
    frozen = build_model("safa", **SMALL, freeze_blocks=3)
    assert len(frozen.trainable_weights) == 2 * (13 - 7) * 2 + 8


def test_user_errors():
    with pytest.raises(CvmError, match="keep_prob"):
        build_model("safa", keep_prob=0.0, **SMALL)
    with pytest.raises(CvmError, match="spatial_maps"):
        build_model("safa", spatial_maps=0, **SMALL)
    with pytest.raises(CvmError, match="at least 2 positions"):
        build_model("safa", backbone_width=0.125, ground_size=(32, 32), aerial_size=(64, 64))
    with pytest.raises(CvmError, match="backbone_width=1.0"):
        build_model("safa", weights="imagenet", backbone_width=0.5)
    model = build_model("safa", **SMALL)
    with pytest.raises(CvmError, match="aerial_size=\\(64, 64\\).*\\(128, 128\\)"):
        model.encode_aerial(np.zeros((1, 128, 128, 3), "float32"))


def test_keras_round_trip(tmp_path):
    model = build_model("safa", **SMALL, keep_prob=0.5, spatial_maps=2)
    batch = small_batch(4)
    expected = {k: np.asarray(v) for k, v in model(batch).items()}
    path = str(tmp_path / "safa.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert isinstance(reloaded, SAFA)
    assert (reloaded.keep_prob, reloaded.spatial_maps, reloaded.aerial_size) == (0.5, 2, (64, 64))
    for view, value in reloaded(batch).items():
        np.testing.assert_allclose(np.asarray(value), expected[view], atol=1e-6)


@pytest.mark.slow  # ~30 s on an idle 2-core CPU, 90 s on the shared one
def test_short_training_on_the_synthetic_world_improves_recall(tmp_path):
    """Polar SAFA (the paper's setting, at 1/8 width and small sizes) learns within a few epochs."""
    from cvm.training.config import TrainConfig
    from cvm.training.loop import Run

    config = TrainConfig(model_dir=str(tmp_path / "run"), method="safa", synthetic_pairs=120,
                         ground_size=(48, 192), aerial_size=(48, 192), aerial_polar=True, batch_size=8,
                         keep_prob=1.0, lr=3e-4, init="he", epochs=5, eval_batch_size=24, jit_compile=False,
                         best_metric="r@5")
    run = Run(config, progress=False)
    assert run.encoder.aerial_importance.positions == 12  # 48x192 -> 2x6 map, built from the config's sizes
    before = run.validate(0)
    state = run.train()
    after = max(state["history"], key=lambda h: h["r@5"])  # chance R@5 = 5/24 ~ 0.21
    assert after["r@5"] > before["r@5"] + 0.2, (before, state["history"])
    assert after["r@1"] > before["r@1"], (before, state["history"])


def test_safa_is_built_for_the_fov_crop_it_is_trained_on(tmp_path):
    """--fov_deg 90: the importance weights are sized for the 90-degree crop, not the whole panorama."""
    from cvm.training.config import TrainConfig
    from cvm.training.loop import Run

    config = TrainConfig(model_dir=str(tmp_path / "run"), method="safa", synthetic_pairs=24, ground_size=(64, 256),
                         aerial_size=(32, 128), aerial_polar=True, spatial_maps=2, fov_deg=90.0, azimuth_shift=True,
                         backbone_width=0.0625, batch_size=4, epochs=1, steps_per_epoch=2, eval_batch_size=8,
                         jit_compile=False)
    run = Run(config, progress=False)
    assert run.encoder.ground_size == (64, 64)  # round(256 * 90 / 360) columns
    state = run.train()
    assert np.isfinite(state["best"]["score"])

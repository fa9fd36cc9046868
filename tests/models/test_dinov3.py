"""DINOv3 backbones through keras-hub's DINOV3Backbone (cvm.models.backbones.dinov3) and in Sample4Geo."""

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")
if not hasattr(keras_hub.models, "DINOV3Backbone"):
    pytest.skip("keras-hub without DINOV3Backbone (needs >= 0.32)", allow_module_level=True)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from cvm.errors import CvmError  # noqa: E402
from cvm.models.backbones.dinov3 import DINOv3Backbone, dinov3_config  # noqa: E402
from cvm.models.sample4geo import Sample4Geo  # noqa: E402

TINY = dict(variant="dinov3_vit_small", width=0.125, depth=2)  # 48 wide, 6 heads of 8 channels, 2 blocks


def images(seed, batch, height, width):
    return np.random.default_rng(seed).normal(size=(batch, height, width, 3)).astype("float32")


def randomize(model, seed=0):
    """Every weight random and O(1) (LayerScale 1e-5 at init would make the blocks near-identities)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        offset = 1.0 if variable.path.endswith(("gamma", "lambda1")) else 0.0
        variable.assign(offset + rng.normal(0.0, 0.3, size=tuple(variable.shape)).astype("float32"))


def keras_hub_cls(layer, x):
    """The CLS token of keras-hub's own functional DINOV3Backbone (final LayerNorm applied) built for x's size
    with `layer`'s keras-hub weights."""
    config = dict(layer.hub_config(), image_shape=tuple(x.shape[1:]))
    reference = keras_hub.models.DINOV3Backbone(**config)
    reference.set_weights(layer.hub.get_weights())
    return np.asarray(reference({"pixel_values": x}))[:, 0]


@pytest.fixture(scope="module")
def tiny():
    layer = DINOv3Backbone(**TINY)
    randomize(layer.hub)
    return layer


def test_cls_equals_keras_hub_output_at_several_sizes_in_one_instance(tiny):
    # Two non-square sizes, a square one, and sides that are not multiples of 16 (floored: 4x15 patches).
    outputs = {}
    for i, (height, width) in enumerate([(64, 256), (112, 80), (112, 112), (70, 250)]):
        x = images(i, 2, height, width)
        outputs[height, width] = out = np.asarray(tiny(x))
        assert out.shape == (2, 48)
        np.testing.assert_allclose(out, keras_hub_cls(tiny, x), atol=2e-5, rtol=1e-5)
    assert np.abs(outputs[64, 256] - outputs[112, 80]).max() > 1e-2


def test_rope_is_keras_hubs_and_traces_with_unknown_sides(tiny):
    for height, width in [(64, 256), (112, 80), (70, 250)]:
        x = np.zeros((1, height, width, 3), "float32")
        ours, theirs = tiny.rope(x), tiny.hub.rope_embedding(x)
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    # keras-hub's own RoPE layer cannot trace with None sides; the layer must (SavedModel export does).
    encode = tf.function(tiny.call, input_signature=[tf.TensorSpec([None, None, None, 3])])
    for i, (height, width) in enumerate([(64, 256), (112, 112)]):
        x = images(10 + i, 2, height, width)
        np.testing.assert_allclose(encode(x).numpy(), np.asarray(tiny(x)), atol=1e-5)


def test_sample4geo_dinov3_unit_descriptors_and_keras_reload(tmp_path):
    model = Sample4Geo(backbone="dinov3_vit_small", backbone_width=0.125, backbone_depths=(2,))
    assert len(model.backbones) == 1 and isinstance(model.ground_backbone, DINOv3Backbone)
    assert model.descriptor_dim == 48 and model.ground_backbone.depth == 2
    randomize(model.ground_backbone.hub, seed=3)
    data = {"ground": images(20, 2, 64, 256), "aerial": images(21, 2, 112, 112)}
    out = model(data)
    for view in ("ground", "aerial"):
        assert out[view].shape == (2, 48) and out[view].dtype == "float32"
        np.testing.assert_allclose(np.linalg.norm(np.asarray(out[view]), axis=1), 1.0, atol=1e-6)
    cls = keras_hub_cls(model.ground_backbone, data["ground"])
    np.testing.assert_allclose(np.asarray(out["ground"]), cls / np.linalg.norm(cls, axis=1, keepdims=True),
                               atol=1e-5)
    path = str(tmp_path / "s4g_dinov3.keras")
    model.save(path)
    again = keras.saving.load_model(path)
    assert again.backbone == "dinov3_vit_small" and again.get_config()["backbone_depths"] == [2]
    reloaded = again(data)
    for view in ("ground", "aerial"):
        np.testing.assert_array_equal(np.asarray(reloaded[view]), np.asarray(out[view]))


def test_sample4geo_refuses_flatten_pooling_and_pos_grid():
    with pytest.raises(CvmError, match="CLS token"):
        Sample4Geo(backbone="dinov3_vit_small", backbone_width=0.125, backbone_depths=(1,), pooling="flatten")
    with pytest.raises(CvmError, match="backbone_pos_grid"):
        Sample4Geo(backbone="dinov3_vit_small", backbone_width=0.125, backbone_depths=(1,), backbone_pos_grid=14)


def test_preset_names_give_the_no_download_error(tmp_path):
    for name in ("dinov3_vit_small_lvd1689m", "dinov3_vit_large_sat493m", "dinov3_vit_small"):
        with pytest.raises(CvmError, match="cannot be downloaded.*save_to_preset"):
            DINOv3Backbone(**TINY, weights=name)
    with pytest.raises(CvmError, match="cannot be downloaded"):
        Sample4Geo(backbone="dinov3_vit_small", weights="dinov3_vit_small_lvd1689m")
    with pytest.raises(CvmError, match="not found"):
        DINOv3Backbone(**TINY, weights=str(tmp_path / "missing"))


def test_keras_hub_preset_directory_loads_strictly(tmp_path):
    source = DINOv3Backbone(**TINY)
    randomize(source.hub, seed=5)
    preset = str(tmp_path / "tiny_dinov3_preset")
    source.hub.save_to_preset(preset)
    loaded = DINOv3Backbone(**TINY, weights=preset)
    for i, (height, width) in enumerate([(64, 256), (112, 80)]):
        x = images(30 + i, 2, height, width)
        np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(source(x)), atol=1e-6)
    # Independently of this module: keras-hub's own from_preset model at one size.
    hub = keras_hub.models.DINOV3Backbone.from_preset(preset, image_shape=(64, 256, 3))
    x = images(40, 2, 64, 256)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(hub({"pixel_values": x}))[:, 0], atol=2e-5)
    # Another architecture is refused by name, nothing assigned.
    with pytest.raises(CvmError, match="num_layers=2"):
        DINOv3Backbone("dinov3_vit_small", width=0.125, depth=3, weights=preset)


def test_variants_options_and_config():
    assert dinov3_config("dinov3_vit_small") == (384, 12, 6)
    assert dinov3_config("dinov3_vit_base") == (768, 12, 12)
    assert dinov3_config("dinov3_vit_large") == (1024, 24, 16)
    with pytest.raises(CvmError, match="RoPE"):
        dinov3_config("dinov3_vit_small", width=0.1)  # 38 channels: not 6 heads x a multiple of 4
    with pytest.raises(CvmError, match="unknown DINOv3 variant"):
        dinov3_config("dinov3_vit_giant")
    layer = DINOv3Backbone(**TINY)
    config = layer.get_config()
    again = DINOv3Backbone.from_config(config)
    assert (again.dim, again.depth, again.num_heads, again.variant) == (48, 2, 6, "dinov3_vit_small")
    assert "weights" not in config

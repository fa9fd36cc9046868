"""Sample4Geo's pooling="flatten": the head's LayerNorm at every position of the last map, flattened row by row."""

import numpy as np
import pytest

from cvm.errors import CvmError
from cvm.models.backbones.convnext import ConvNeXtBackbone
from cvm.models.sample4geo import Sample4Geo

SMALL = dict(backbone="convnext_tiny", backbone_width=0.25, backbone_depths=(1, 1, 1, 1))


def numpy_layer_norm(x, gamma, beta, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


@pytest.mark.parametrize("size, expected", [((140, 768), (4, 24)), ((64, 256), (2, 8)), ((63, 250), (1, 7))])
def test_map_size_is_the_last_stage_output_size(size, expected):
    backbone = ConvNeXtBackbone("convnext_tiny", width=0.125, depths=(1, 1, 1, 1))
    maps = backbone.stage_outputs(np.zeros((1, *size, 3), np.float32))
    assert tuple(maps[-1].shape[1:3]) == expected == ConvNeXtBackbone.map_size(size)


def test_flatten_is_the_normed_map_in_row_major_order():
    model = Sample4Geo(pooling="flatten", ground_size=(64, 256), aerial_size=(64, 256), **SMALL)
    backbone = model.ground_backbone
    rng = np.random.default_rng(0)
    # A non-trivial affine in the head's LayerNorm, so that a missing or misplaced norm shows.
    gamma = rng.uniform(0.5, 1.5, backbone.output_dim).astype(np.float32)
    beta = rng.normal(0, 0.2, backbone.output_dim).astype(np.float32)
    backbone.head_norm.set_weights([gamma, beta])
    images = rng.normal(size=(2, 64, 256, 3)).astype(np.float32)
    out = model({"ground": images, "aerial": images[::-1]})
    maps = np.asarray(backbone.stage_outputs(images)[-1], np.float64)  # [2, 2, 8, C]
    expected = numpy_layer_norm(maps, gamma, beta).reshape(2, -1)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert model.descriptor_dim == 2 * 8 * backbone.output_dim == out["ground"].shape[1]
    # float32 LayerNorm over 192 channels and a 3,072-long norm: relative errors ~1e-6, far inside 1e-5.
    np.testing.assert_allclose(np.asarray(out["ground"]), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["aerial"]), expected[::-1], rtol=1e-5, atol=1e-6)
    # The layout is in the descriptor: rolling the input's columns by one map cell (32 px) changes it.
    rolled = np.roll(images, 32, axis=2)
    moved = np.asarray(model.encode_ground(rolled))
    assert np.abs(moved - np.asarray(out["ground"])).max() > 1e-2


def test_flatten_needs_views_with_one_map_size_and_a_convnext():
    with pytest.raises(CvmError, match=r"ground \(64, 256\) gives \(2, 8\), the aerial \(128, 128\) gives \(4, 4\)"):
        Sample4Geo(pooling="flatten", ground_size=(64, 256), aerial_size=(128, 128), **SMALL)
    with pytest.raises(CvmError, match="a ViT backbone"):
        Sample4Geo(backbone="dinov2_small", backbone_width=0.125, backbone_depths=(1,), pooling="flatten")
    with pytest.raises(CvmError, match="pooling must be one of"):
        Sample4Geo(pooling="max", **SMALL)


def test_a_flatten_model_reloads_from_a_keras_file(tmp_path):
    import keras

    model = Sample4Geo(pooling="flatten", ground_size=(64, 256), aerial_size=(64, 256), **SMALL)
    images = np.random.default_rng(1).normal(size=(1, 64, 256, 3)).astype(np.float32)
    before = model({"ground": images, "aerial": images})
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.pooling == "flatten" and loaded.descriptor_dim == model.descriptor_dim
    after = loaded({"ground": images, "aerial": images})
    np.testing.assert_array_equal(np.asarray(before["ground"]), np.asarray(after["ground"]))

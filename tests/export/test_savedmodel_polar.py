"""SavedModel export of a polar-aerial model (SAFA): the polar transform runs inside the serving graph."""

import numpy as np
import pytest
import tensorflow as tf

from cvm.data.images import ImageSpec, normalise
from cvm.data.polar import polar_transform
from cvm.export.savedmodel import export_savedmodel, polar_transform_tf
from cvm.models import build_model


@pytest.mark.parametrize("stretch", [False, True])
def test_graph_polar_transform_equals_the_numpy_one(stretch):
    rng = np.random.default_rng(1)
    for size in (60, 97):  # even and odd sides
        aerials = rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
        got = polar_transform_tf(tf.constant(aerials), 16, 88, stretch).numpy()
        for aerial, polar in zip(aerials, got):
            np.testing.assert_array_equal(polar, polar_transform(aerial, 16, 88, stretch=stretch))


def test_exported_polar_model_matches_keras_on_the_pipeline_input(tmp_path):
    spec = ImageSpec(ground_size=(16, 88), aerial_size=(16, 88), aerial_polar=True, polar_stretch=True)
    model = build_model("safa", backbone_width=0.0625, spatial_maps=2, keep_prob=1.0, init="he",
                        ground_size=spec.ground_size, aerial_size=spec.aerial_size)
    export_savedmodel(model, spec, str(tmp_path / "sm"), input_order="bgr")
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    rng = np.random.default_rng(0)
    aerials = rng.integers(0, 256, (2, 120, 120, 3), dtype=np.uint8)  # full-resolution tiles, any side
    polar = np.stack([polar_transform(a, 16, 88, stretch=True) for a in aerials])
    expected = model.encode_aerial(normalise(polar, spec), training=False).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(loaded.aerial(aerials).numpy(), expected, atol=1e-5)


def test_regmi_two_stream_exports_to_a_savedmodel(tmp_path):
    """Its encoder's dropouts are tracked under string keys (a dict keyed by ints cannot be saved)."""
    spec = ImageSpec(ground_size=(32, 128), aerial_size=(64, 64))
    model = build_model("regmi_two_stream", backbone_width=0.0625, output_dim=8, keep_prob=0.5,
                        ground_size=spec.ground_size, aerial_size=spec.aerial_size)
    export_savedmodel(model, spec, str(tmp_path / "sm"), input_order="bgr")
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    images = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    expected = model.encode_aerial(normalise(images, spec), training=False).numpy()
    np.testing.assert_allclose(loaded.aerial(images).numpy(), expected, atol=1e-5)

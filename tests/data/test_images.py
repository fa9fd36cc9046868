"""Exact pixel values of the preprocessing (OpenCV BGR, INTER_AREA, Caffe mean)."""

import cv2
import numpy as np
import pytest

from cvm.data import images
from cvm.data.pipeline import Pipeline
from cvm.errors import CvmError


def test_normalise_subtracts_caffe_mean_in_bgr():
    img = np.array([[[10, 20, 30]]], np.uint8)
    out = images.normalise(img, images.ImageSpec())
    np.testing.assert_array_equal(out, np.array([[[10 - 103.939, 20 - 116.779, 30 - 123.6]]], np.float32))
    assert out.dtype == np.float32


def test_rgb_order_and_scale_and_round_trip():
    spec = images.ImageSpec(channel_order="rgb", mean=(1.0, 2.0, 3.0), scale=0.5)
    img = np.array([[[10, 20, 30]]], np.uint8)
    out = images.normalise(img, spec)
    np.testing.assert_allclose(out[0, 0], [(30 - 1) * 0.5, (20 - 2) * 0.5, (10 - 3) * 0.5])
    np.testing.assert_array_equal(images.denormalise(out, spec), img)


def test_crop_rows_keeps_cvact_central_half():
    pano = np.arange(832, dtype=np.int32).repeat(4).reshape(832, 4, 1)
    kept = images.crop_rows(pano, (0.25, 0.75))
    assert kept.shape[0] == 416
    assert kept[0, 0, 0] == 208 and kept[-1, 0, 0] == 623


def test_resize_area_is_opencv_inter_area():
    img = np.random.default_rng(0).integers(0, 256, (750, 750, 3), dtype=np.uint8)
    np.testing.assert_array_equal(images.resize_area(img, (512, 512)),
                                  cv2.resize(img, (512, 512), interpolation=cv2.INTER_AREA))
    assert images.resize_area(img, (750, 750)) is img


def test_pipeline_pixels_equal_the_original_loader(toy_split):
    """The eval pipeline's floats are bit-identical to imread + INTER_AREA + mean subtraction."""
    spec = images.ImageSpec(ground_size=(28, 154), aerial_size=(64, 64))
    features, meta = next(iter(Pipeline(toy_split, spec).eval(batch_size=4)))
    for b, i in enumerate(meta["index"].numpy()):
        pair = toy_split[i]
        ground = cv2.resize(cv2.imread(pair.ground_path), (154, 28), interpolation=cv2.INTER_AREA).astype(np.float32)
        aerial = cv2.resize(cv2.imread(pair.aerial_path), (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32)
        ground -= np.array([103.939, 116.779, 123.6], np.float32)
        aerial -= np.array([103.939, 116.779, 123.6], np.float32)
        np.testing.assert_array_equal(features["ground"][b].numpy(), ground)
        np.testing.assert_array_equal(features["aerial"][b].numpy(), aerial)


def test_presets_follow_the_original_sizes():
    assert images.preset("cvm_net").aerial_size == (512, 512)
    assert images.preset("cvm_net").ground_size == (224, 1232)
    assert images.preset("cvft").ground_size == (112, 616)
    assert images.preset("safa_polar").aerial_polar
    with pytest.raises(CvmError, match="unknown image preset 'nope'"):
        images.preset("nope")


def test_bad_spec_values_are_errors():
    with pytest.raises(CvmError, match="channel_order"):
        images.ImageSpec(channel_order="hsv")
    with pytest.raises(CvmError, match="aerial_size"):
        images.ImageSpec(aerial_size=(0, 10))


def test_sample4geo_presets_resize_as_their_albumentations_resize():
    """Sample4Geo resizes with cv2.INTER_LINEAR_EXACT; the originals' loaders (and every other preset) INTER_AREA."""
    import cv2

    from cvm.data import images as images_lib

    rng = np.random.default_rng(0)
    pano = rng.integers(0, 256, (224, 1232, 3), dtype=np.uint8)
    spec = images_lib.preset("sample4geo")
    assert spec.interpolation == "linear_exact" and images_lib.preset("safa").interpolation == "area"
    out = images_lib.prepare_ground(pano, spec)
    np.testing.assert_array_equal(out, cv2.resize(pano, (768, 140), interpolation=cv2.INTER_LINEAR_EXACT))
    assert (out != cv2.resize(pano, (768, 140), interpolation=cv2.INTER_AREA)).any()
    aerial = rng.integers(0, 256, (750, 750, 3), dtype=np.uint8)
    np.testing.assert_array_equal(images_lib.prepare_aerial(aerial, spec),
                                  cv2.resize(aerial, (384, 384), interpolation=cv2.INTER_LINEAR_EXACT))
    with pytest.raises(CvmError, match="interpolation must be one of"):
        images_lib.ImageSpec(interpolation="cubic")

"""Augmentations: the CVM-Net recipe's draws and geometry, the joint transforms' consistency."""

import cv2
import numpy as np
import pytest

from cvm.data import augment
from cvm.errors import CvmError


def test_zoom_crop_draws_like_the_original():
    """c ~ U{1..748}; crop the centred c x c when c > 512, so ~31.6% of samples zoom."""
    img = np.zeros((750, 750, 3), np.uint8)
    sizes = [augment.zoom_crop(img, np.random.default_rng(s)).shape[0] for s in range(4000)]
    zoomed = np.array([s for s in sizes if s != 750])
    assert zoomed.min() >= 513 and zoomed.max() <= 748
    assert abs(len(zoomed) / len(sizes) - 236 / 748) < 0.03
    # The crop is centred: offset floor((750 - c) / 2).
    ramp = np.arange(750)[None, :, None].repeat(750, 0).astype(np.int32)
    rng = np.random.default_rng(0)
    c = None
    while c is None or c <= 512:
        state = rng.bit_generator.state
        c = int(rng.integers(1, 748, endpoint=True))
    rng.bit_generator.state = state
    out = augment.zoom_crop(ramp, rng)
    assert out.shape[:2] == (c, c) and out[0, 0, 0] == (750 - c) // 2


def test_quarter_turn_draws_keep_or_fix_the_double_zero():
    draws = np.array([augment.draw_quarter_turns(np.random.default_rng(s)) for s in range(5000)])
    assert abs(np.mean(draws == 0) - 0.4) < 0.03  # randint(0, 4) inclusive: 0 and 360 degrees
    fixed = np.array([augment.draw_quarter_turns(np.random.default_rng(s), double_zero=False) for s in range(5000)])
    assert abs(np.mean(fixed == 0) - 0.25) < 0.03
    assert set(np.unique(fixed)) == {0, 1, 2, 3}


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rotation_as_the_original_is_rot90_shifted_by_one_pixel(k):
    img = np.random.default_rng(k).integers(1, 255, (16, 16, 3), dtype=np.uint8)
    original = cv2.warpAffine(img, cv2.getRotationMatrix2D((8, 8), 90 * k, 1), (16, 16))
    warped = augment.rotate_aerial(img, k, "warp_affine")
    np.testing.assert_array_equal(warped, original)
    exact = augment.rotate_aerial(img, k, "exact")
    np.testing.assert_array_equal(exact, np.rot90(img, k))
    # The original's 90-degree turn about (S/2, S/2) is the exact turn moved by one pixel, with a
    # zero line where nothing maps.
    shifted = {1: (slice(1, None), slice(None)), 2: (slice(1, None), slice(1, None)),
               3: (slice(None), slice(1, None))}[k]
    back = {1: (slice(None, -1), slice(None)), 2: (slice(None, -1), slice(None, -1)),
            3: (slice(None), slice(None, -1))}[k]
    np.testing.assert_array_equal(warped[shifted], exact[back])


def test_roll_panorama_recentres_on_the_given_azimuth():
    w = 16
    pano = np.arange(w)[None, :, None].repeat(2, 0)
    # Centre column 8 shows azimuth 0 (north); column 12 shows azimuth 90 (east).
    rolled = augment.roll_panorama(pano, 90.0)
    assert rolled[0, 8, 0] == 12
    assert augment.roll_panorama(pano, 360.0) is pano


def test_fov_crop_is_centred_on_the_heading():
    pano = np.arange(360)[None, :, None]
    crop = augment.fov_crop(pano, 90.0)
    assert crop.shape[1] == 90 and crop[0, 0, 0] == 135 and crop[0, -1, 0] == 224


def test_joint_rot90_rotates_the_aerial_and_rolls_the_panorama():
    aerial = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    pano = np.arange(16)[None, :, None].repeat(4, 0)
    a, p = augment.joint_rot90(aerial, pano, 1)
    np.testing.assert_array_equal(a, np.rot90(aerial, 1))
    np.testing.assert_array_equal(p, np.roll(pano, -4, axis=1))


def test_apply_is_a_pure_function_of_the_rng_state():
    rng_img = np.random.default_rng(3)
    ground = rng_img.integers(0, 255, (32, 128, 3), dtype=np.uint8)
    aerial = rng_img.integers(0, 255, (100, 100, 3), dtype=np.uint8)
    spec = augment.AugmentSpec(zoom_crop=True, rotation="joint", joint_flip=0.5, azimuth_shift=True, fov_deg=180)
    resize = lambda a: cv2.resize(a, (64, 64), interpolation=cv2.INTER_AREA)  # noqa: E731
    out1 = augment.apply(spec, ground, aerial, np.random.default_rng([1, 2, 3]), resize)
    out2 = augment.apply(spec, ground, aerial, np.random.default_rng([1, 2, 3]), resize)
    out3 = augment.apply(spec, ground, aerial, np.random.default_rng([1, 2, 4]), resize)
    np.testing.assert_array_equal(out1[0], out2[0])
    np.testing.assert_array_equal(out1[1], out2[1])
    assert out1[2] == out2[2] and out1[2] != out3[2]
    assert out1[0].shape == (32, 64, 3) and out1[1].shape == (64, 64, 3)


def test_bad_augment_values_are_errors():
    with pytest.raises(CvmError, match="rotation"):
        augment.AugmentSpec(rotation="spin")
    with pytest.raises(CvmError, match="fov_deg"):
        augment.AugmentSpec(fov_deg=0)
    with pytest.raises(CvmError, match="joint_flip"):
        augment.AugmentSpec(joint_flip=2)

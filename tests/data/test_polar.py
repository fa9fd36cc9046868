"""SAFA polar transform: against a slow NumPy reference, and its rotation / panorama-roll convention."""

import cv2
import numpy as np
import pytest

from cvm.data.polar import polar_maps, polar_transform


def reference_polar(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Explicit bilinear SAFA polar transform in float64, zeros outside (slow, independent of cv2)."""
    size = image.shape[0]
    img = image.astype(np.float64).reshape(size, size, -1)
    out = np.zeros((height, width, img.shape[2]))
    for i in range(height):
        r = (size / 2.0) * (height - 1 - i) / height
        for j in range(width):
            theta = 2.0 * np.pi * j / width
            y, x = size / 2.0 + r * np.cos(theta), size / 2.0 - r * np.sin(theta)
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            fy, fx = y - y0, x - x0
            acc = np.zeros(img.shape[2])
            for yy, wy in ((y0, 1.0 - fy), (y0 + 1, fy)):
                for xx, wx in ((x0, 1.0 - fx), (x0 + 1, fx)):
                    if 0 <= yy < size and 0 <= xx < size:
                        acc += wy * wx * img[yy, xx]
            out[i, j] = acc
    return out.reshape((height, width) + image.shape[2:])


def smooth_image(size: int, seed: int) -> np.ndarray:
    """Blurred random colour image: shifts of a pixel change it by little, unlike white noise."""
    rng = np.random.default_rng(seed)
    img = rng.random((size, size, 3)).astype(np.float32) * 255.0
    return cv2.GaussianBlur(img, (0, 0), 4.0)


def test_maps_formula_and_cache():
    map_x, map_y = polar_maps(64, 16, 40)
    assert map_x.shape == map_y.shape == (16, 40) and map_x.dtype == np.float32
    # Bottom row is (almost) the centre, top row the outer ring; column 0 looks south (larger row).
    assert map_y[0, 0] == pytest.approx(32 + 32 * 15 / 16)
    assert map_x[0, 0] == pytest.approx(32)
    assert map_x[0, 10] == pytest.approx(32 - 32 * 15 / 16, abs=1e-4)  # quarter turn: west
    assert polar_maps(64, 16, 40) is polar_maps(64, 16, 40)  # cached


def test_uint8_matches_reference():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    ours = polar_transform(image, 20, 72)
    ref = reference_polar(image, 20, 72)
    assert ours.dtype == np.uint8 and ours.shape == (20, 72, 3)
    # cv2.remap may interpolate with fixed-point weights: allow one grey level from the exact value.
    assert np.abs(ours.astype(np.float64) - ref).max() <= 1.0 + 1e-6


def test_float32_matches_reference_and_grey_images():
    rng = np.random.default_rng(1)
    image = rng.random((40, 40)).astype(np.float32)
    ours = polar_transform(image, 16, 64)
    assert ours.dtype == np.float32 and ours.shape == (16, 64)
    assert np.abs(ours - reference_polar(image, 16, 64)).max() < 1e-2
    multi = rng.random((40, 40, 6)).astype(np.float32)  # more channels than cv2 remaps finely at once
    assert np.abs(polar_transform(multi, 8, 32) - reference_polar(multi, 8, 32)).max() < 1e-2
    two = np.ascontiguousarray(multi[..., :2])
    assert np.abs(polar_transform(two, 8, 32) - reference_polar(two, 8, 32)).max() < 1e-2


def test_stretch_rescales_to_full_range():
    image = (smooth_image(32, 2) * 0.3 + 40).astype(np.uint8)
    out = polar_transform(image, 8, 32, stretch=True)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    out_f = polar_transform(image.astype(np.float32), 8, 32, stretch=True)
    assert out_f.dtype == np.float32 and out_f.min() == 0 and out_f.max() == pytest.approx(255)


def test_rot90_rolls_by_minus_quarter():
    """np.rot90(aerial, 1) (counter-clockwise: east comes to the top) == polar rolled by -width/4."""
    image = smooth_image(128, 3)
    width = 256
    polar = polar_transform(image, 64, width)
    rotated = polar_transform(np.ascontiguousarray(np.rot90(image, 1)), 64, width)
    expected = np.roll(polar, -width // 4, axis=1)
    # The rotation is about (S-1)/2 while the transform centres on S/2: a 1 px shift on a smooth image.
    error = np.abs(rotated - expected)[:-1]  # the bottom row samples one centre pixel, off by the shift
    assert error.mean() < 1.5 and error.max() < 20
    wrong_sign = np.abs(rotated - np.roll(polar, width // 4, axis=1)).mean()
    assert wrong_sign > 5 * error.mean()


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        polar_transform(np.zeros((10, 12, 3), np.uint8))
    with pytest.raises(ValueError):
        polar_transform(np.zeros((10, 10, 3), np.float64))

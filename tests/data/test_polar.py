"""SAFA polar transform: against independent NumPy references (a per-pixel loop and a restatement of
data_preparation.py + scipy's bytescale), its orientation, and the on-the-fly pipeline path."""

import cv2
import numpy as np
import pytest

from cvm.data import images
from cvm.data.pipeline import Pipeline
from cvm.data.polar import polar_maps, polar_transform, sample_bilinear


def reference_polar(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Explicit bilinear SAFA polar transform in float64, zeros outside (slow, one pixel at a time)."""
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


def safa_script_polar(signal: np.ndarray, height: int = 112, width: int = 616) -> np.ndarray:
    """What SAFA's data_preparation.py writes for a decoded aerial: its sampling restated with the same
    float64 operations, then scipy.misc.imsave's bytescale (global min-max, +0.5, truncation)."""
    size = signal.shape[0]
    ii, jj = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    ry = size / 2. - size / 2. / height * (height - 1 - ii) * np.sin(2 * np.pi * jj / width)
    rx = size / 2. + size / 2. / height * (height - 1 - ii) * np.cos(2 * np.pi * jj / width)
    ix0, iy0 = rx.astype(int), ry.astype(int)
    ix1, iy1 = ix0 + 1, iy0 + 1

    def at(x, y):
        inside = (x >= 0) & (x < size) & (y >= 0) & (y < size)
        out = np.zeros(x.shape + (signal.shape[-1],))
        out[inside, :] = signal[x[inside], y[inside], :]
        return out

    s00, s10, s01, s11 = at(ix0, iy0), at(ix1, iy0), at(ix0, iy1), at(ix1, iy1)
    fx1 = (ix1 - rx)[..., None] * s00 + (rx - ix0)[..., None] * s10
    fx2 = (ix1 - rx)[..., None] * s01 + (rx - ix0)[..., None] * s11
    sampled = (iy1 - ry)[..., None] * fx1 + (ry - iy0)[..., None] * fx2
    low, high = sampled.min(), sampled.max()
    scaled = (sampled - low) * (255.0 / ((high - low) or 1))
    return sampled, (scaled.clip(0, 255) + 0.5).astype(np.uint8)


def smooth_image(size: int, seed: int) -> np.ndarray:
    """Blurred random colour image: shifts of a pixel change it by little, unlike white noise."""
    rng = np.random.default_rng(seed)
    img = rng.random((size, size, 3)).astype(np.float32) * 255.0
    return cv2.GaussianBlur(img, (0, 0), 4.0)


def test_maps_formula():
    map_x, map_y = polar_maps(64, 16, 40)
    assert map_x.shape == map_y.shape == (16, 40) and map_x.dtype == np.float32
    # Bottom row is (almost) the centre, top row the outer ring; column 0 looks south (larger row).
    assert map_y[0, 0] == pytest.approx(32 + 32 * 15 / 16)
    assert map_x[0, 0] == pytest.approx(32)
    assert map_x[0, 10] == pytest.approx(32 - 32 * 15 / 16, abs=1e-4)  # quarter turn: west
    assert map_y[15, 7] == pytest.approx(32) and map_x[15, 7] == pytest.approx(32)  # bottom row: centre


def test_uint8_matches_reference():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    ref = reference_polar(image, 20, 72)
    np.testing.assert_allclose(sample_bilinear(image, 20, 72), ref, atol=1e-9)
    ours = polar_transform(image, 20, 72)
    assert ours.dtype == np.uint8 and ours.shape == (20, 72, 3)
    assert np.abs(ours.astype(np.float64) - ref).max() <= 0.5 + 1e-9  # rounded, not rescaled
    assert np.mean(ours == np.floor(ref + 0.5)) > 0.999


def test_float32_matches_reference_and_grey_and_many_channels():
    rng = np.random.default_rng(1)
    image = rng.random((40, 40)).astype(np.float32)
    ours = polar_transform(image, 16, 64)
    assert ours.dtype == np.float32 and ours.shape == (16, 64)
    np.testing.assert_allclose(ours, reference_polar(image, 16, 64), atol=1e-6)
    multi = rng.random((40, 40, 6)).astype(np.float32)  # e.g. one-hot class maps
    np.testing.assert_allclose(polar_transform(multi, 8, 32), reference_polar(multi, 8, 32), atol=1e-6)


def test_corners_outside_the_image_count_as_zero():
    # S = 40, 32 rows: the outer row reaches row 39.375, whose lower corner (row 40) is outside.
    ones = np.ones((40, 40), np.float32)
    polar = polar_transform(ones, 32, 64)
    assert polar[0, 0] == pytest.approx(40 - 39.375)  # only the inside corner's weight remains
    assert polar[16:].min() == pytest.approx(1.0) and polar[16:].max() == pytest.approx(1.0)
    np.testing.assert_allclose(polar, reference_polar(ones, 32, 64), atol=1e-9)


def test_stretch_reproduces_safa_published_maps_bit_for_bit():
    """A 750 px aerial -> 112x616, as data_preparation.py + scipy.misc.imsave wrote CVUSA's polarmap/."""
    rng = np.random.default_rng(4)
    aerial = (smooth_image(750, 5) * 0.6 + 40).astype(np.uint8)
    aerial[rng.random((750, 750)) < 0.001] = 255  # a few hot pixels: the max is not always sampled
    sampled, published = safa_script_polar(aerial)
    ours = polar_transform(aerial, stretch=True)
    assert ours.dtype == np.uint8 and ours.shape == (112, 616, 3)
    np.testing.assert_array_equal(ours, published)
    assert published.min() == 0 and published.max() == 255 and sampled.min() > 30  # the stretch did something
    np.testing.assert_array_equal(polar_transform(aerial), np.floor(sampled + 0.5).astype(np.uint8))
    # float32 input: the same map, rescaled but not rounded.
    as_float = polar_transform(aerial.astype(np.float32), stretch=True)
    assert as_float.dtype == np.float32 and np.abs(as_float - published).max() <= 0.5 + 1e-3
    # A constant image stretches to zeros, as scipy's bytescale.
    assert polar_transform(np.full((40, 40, 3), 7, np.uint8), 8, 16, stretch=True).max() == 0


def test_north_is_the_centre_column_and_west_a_quarter():
    size, height, width = 200, 50, 200
    for name, (row, col), column in (("north", (20, 100), width // 2), ("south", (180, 100), 0),
                                     ("west", (100, 20), width // 4), ("east", (100, 180), 3 * width // 4)):
        image = np.zeros((size, size), np.float32)
        cv2.circle(image, (col, row), 6, 1.0, -1)
        polar = polar_transform(image, height, width)
        found = int(np.argmax(polar.sum(axis=0)))
        assert min(abs(found - column), width - abs(found - column)) <= 2, name


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
    with pytest.raises(ValueError):
        polar_transform(np.zeros((10, 10, 3), np.uint8), 0, 16)


@pytest.mark.parametrize("stretch", [False, True])
def test_pipeline_polar_uses_the_full_resolution_aerial(toy_split, stretch):
    """ImageSpec(aerial_polar=True): the tf.data pipeline polar-transforms the 96 px file, not a resized copy."""
    spec = images.ImageSpec(ground_size=(16, 64), aerial_size=(24, 80), aerial_polar=True, polar_stretch=stretch)
    features, meta = next(iter(Pipeline(toy_split, spec, normalize=False).eval(4)))
    for row, index in enumerate(np.asarray(meta["index"])):
        full = cv2.imread(toy_split[int(index)].aerial_path)
        assert full.shape == (96, 96, 3)
        expected = polar_transform(full, 24, 80, stretch=stretch)
        np.testing.assert_array_equal(np.asarray(features["aerial"][row]), expected)
    # The polar map of a resized aerial is a different image: the test above could tell them apart.
    resized = polar_transform(images.resize_area(cv2.imread(toy_split[0].aerial_path), (48, 48)), 24, 80)
    assert np.abs(resized.astype(int) - polar_transform(cv2.imread(toy_split[0].aerial_path), 24, 80)).mean() > 5

"""Sample4Geo's training augmentations (Deuser et al., ICCV 2023): each op against an independent
reference, the recipe's draw probabilities, determinism, pair alignment and the --augment flag.

Images are uint8 BGR, as the split readers return them.
"""

import itertools

import cv2
import numpy as np
import pytest

from cvm.data import augment
from cvm.errors import CvmError

S4G = augment.SAMPLE4GEO


def smooth_image(h, w, seed=0):
    """Random low-frequency colour image (JPEG- and blur-friendly, yet every pixel distinct enough)."""
    small = np.random.default_rng(seed).integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def noise_image(h, w, seed=0, lo=1, hi=255):
    return np.random.default_rng(seed).integers(lo, hi, (h, w, 3), dtype=np.uint8)


def four_sigma(p, n):
    return 4.0 * np.sqrt(p * (1.0 - p) / n)


# --- shape, dtype, purity --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(140, 768, 3), (384, 384, 3), (7, 13, 3), (40, 30), (40, 30, 1)])
@pytest.mark.parametrize("name", augment.PHOTOMETRIC_OPS)
def test_every_op_keeps_shape_and_dtype_and_leaves_its_input_alone(name, shape):
    img = np.random.default_rng(0).integers(1, 255, shape, dtype=np.uint8)
    before = img.copy()
    for seed in range(3):
        out = augment.run_photometric_op(name, img, np.random.default_rng(seed), 0.4)
        assert out.shape == img.shape and out.dtype == np.uint8, (name, out.shape, out.dtype)
    np.testing.assert_array_equal(img, before)


def test_a_non_contiguous_fov_crop_is_handled():
    pano = smooth_image(32, 128)
    crop = augment.fov_crop(pano, 90.0)  # a column slice: not C-contiguous
    assert not crop.flags["C_CONTIGUOUS"]
    spec = augment.AugmentSpec(jpeg=1.0, color_jitter=1.0, blur_sharpen=1.0, dropout=1.0)
    out = augment.photometric(crop, spec, np.random.default_rng(0), 0.5)
    assert out.shape == crop.shape and out.dtype == np.uint8


# --- colour jitter: each factor against a direct computation ---------------------------------------

@pytest.mark.parametrize("v,f", [(100, 0.85), (101, 0.85), (99, 1.15), (201, 1.07), (240, 1.15), (0, 1.1)])
def test_brightness_scales_and_saturates(v, f):
    img = np.full((4, 5, 3), v, np.uint8)
    out = augment.adjust_brightness(img, f)
    np.testing.assert_array_equal(out, np.full_like(img, min(255, int(np.floor(f * v + 0.5)))))


def test_contrast_pivots_on_the_mean_luma_of_a_bgr_image():
    # Strong blue, little red: reading the BGR image as RGB would move the pivot by ~40 levels.
    rng = np.random.default_rng(1)
    img = np.stack([rng.integers(150, 250, (20, 30)), rng.integers(60, 140, (20, 30)),
                    rng.integers(0, 60, (20, 30))], -1).astype(np.uint8)
    luma = (0.114 * img[..., 0] + 0.587 * img[..., 1] + 0.299 * img[..., 2]).mean()
    for f in (0.85, 1.15, 0.5):
        ref = np.clip(f * img.astype(float) + (1 - f) * luma, 0, 255)
        out = augment.adjust_contrast(img, f)
        assert np.abs(out.astype(float) - ref).max() <= 1.0, f


def test_saturation_zero_is_the_grey_image_and_other_factors_blend_with_it():
    img = noise_image(24, 32, seed=2, lo=0, hi=256)
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(int)
    out = augment.adjust_saturation(img, 0.0).astype(int)
    for c in range(3):
        assert np.abs(out[..., c] - grey).max() <= 1
    luma = 0.114 * img[..., 0] + 0.587 * img[..., 1] + 0.299 * img[..., 2]
    for f in (0.85, 1.15):
        ref = np.clip(f * img + (1 - f) * luma[..., None], 0, 255)
        assert np.abs(augment.adjust_saturation(img, f) - ref).max() <= 1.0


@pytest.mark.parametrize("shift,expected", [(1 / 3, (0, 255, 0)), (-1 / 3, (255, 0, 0)), (1.0, (0, 0, 255)),
                                            (1 / 6, (0, 255, 255))])
def test_hue_turns_pure_red_the_right_way_in_bgr(shift, expected):
    red = np.zeros((3, 4, 3), np.uint8)
    red[..., 2] = 255  # BGR: pure red
    out = augment.adjust_hue(red, shift)
    assert np.abs(out.astype(int) - np.array(expected)).max() <= 6, (shift, out[0, 0])


def test_hue_leaves_grey_alone():
    grey = np.full((5, 5, 3), 90, np.uint8)
    np.testing.assert_array_equal(augment.adjust_hue(grey, 0.15), grey)


def test_color_jitter_draws_factors_in_the_sample4geo_ranges():
    # On a uniform grey image hue, saturation and contrast are identities: only brightness acts,
    # so the output is round(f * 128) with f ~ U[0.85, 1.15].
    grey = np.full((4, 4, 3), 128, np.uint8)
    values = []
    for seed in range(300):
        out = augment.color_jitter(grey, np.random.default_rng(seed))
        assert (out == out[0, 0, 0]).all()
        values.append(int(out[0, 0, 0]))
    assert min(values) >= round(0.85 * 128) and max(values) <= round(1.15 * 128)
    assert min(values) <= 112 and max(values) >= 144  # the whole range is used
    # On a colour image the hue moves by at most 0.15 of a turn (54 degrees), and does move.
    img = np.zeros((2, 2, 3), np.uint8)
    img[..., 1] = 200  # green: hue 120 degrees, away from the wrap
    hues = [cv2.cvtColor(augment.color_jitter(img, np.random.default_rng(s)), cv2.COLOR_BGR2HSV_FULL)[0, 0, 0]
            for s in range(300)]
    turns = (np.array(hues, float) - 256 / 3) / 256
    assert np.abs(turns).max() <= 0.15 + 0.01 and np.abs(turns).max() >= 0.12


def test_color_jitter_shuffles_its_four_steps_like_albumentations():
    # Replay the factor draws (brightness, contrast, saturation, hue: the documented order) and find
    # which of the 24 step orders gives the output: a fixed order would explain every sample alone.
    img = noise_image(12, 12, seed=3, lo=0, hi=256)
    steps = (augment.adjust_brightness, augment.adjust_contrast, augment.adjust_saturation, augment.adjust_hue)
    used = set()
    for seed in range(120):
        out = augment.color_jitter(img, np.random.default_rng(seed))
        replay = np.random.default_rng(seed)
        factors = [replay.uniform(0.85, 1.15) for _ in range(3)] + [replay.uniform(-0.15, 0.15)]
        matches = []
        for order in itertools.permutations(range(4)):
            ref = img
            for i in order:
                ref = steps[i](ref, factors[i])
            if np.array_equal(ref, out):
                matches.append(order)
        assert matches, seed
        if len(matches) == 1:
            used.add(matches[0])
    assert len(used) >= 16, len(used)


# --- JPEG ------------------------------------------------------------------------------------------

def test_jpeg_at_quality_100_barely_changes_a_smooth_image_and_90_changes_noise_more():
    grey = cv2.cvtColor(cv2.cvtColor(smooth_image(64, 96, seed=3), cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    assert np.abs(augment.jpeg_recompress(grey, 100).astype(int) - grey).max() <= 2
    # In colour, OpenCV's default 4:2:0 chroma subsampling (as albumentations') costs a little more.
    img = cv2.resize(smooth_image(32, 48, seed=3), (96, 64), interpolation=cv2.INTER_CUBIC)
    assert np.abs(augment.jpeg_recompress(img, 100).astype(int) - img).mean() < 1.5
    noise = np.repeat(noise_image(64, 96, seed=4)[..., :1], 3, axis=-1)  # grey: no chroma loss
    d90 = np.abs(augment.jpeg_recompress(noise, 90).astype(int) - noise).mean()
    d100 = np.abs(augment.jpeg_recompress(noise, 100).astype(int) - noise).mean()
    assert d90 > d100 + 2.0


def test_image_compression_draws_the_quality_in_90_to_100():
    img = noise_image(16, 16, seed=5)
    by_quality = {q: augment.jpeg_recompress(img, q) for q in range(85, 101)}
    seen = set()
    for seed in range(200):
        out = augment.image_compression(img, np.random.default_rng(seed))
        matches = {q for q, ref in by_quality.items() if np.array_equal(out, ref)}
        assert matches and matches <= set(range(90, 101)), matches
        seen |= matches
    assert {90, 100} <= seen


# --- blur / sharpen --------------------------------------------------------------------------------

def test_advanced_blur_never_raises_noise_variance_and_keeps_a_flat_image():
    noise = noise_image(48, 48, seed=6).astype(np.uint8)
    flat = np.full((16, 16, 3), 77, np.uint8)
    ratios = []
    for seed in range(60):
        out = augment.advanced_blur(noise, np.random.default_rng(seed))
        ratios.append(out.astype(float).var() / noise.astype(float).var())
        np.testing.assert_array_equal(augment.advanced_blur(flat, np.random.default_rng(seed)), flat)
    assert max(ratios) <= 1.0 + 1e-3 and min(ratios) < 0.5


def test_advanced_blur_kernel_is_a_normalised_oriented_gaussian_at_beta_1():
    k = augment.advanced_blur_kernel(7, 1.0, 0.3, 0.0, 1.0, np.ones((7, 7)))
    assert k.sum() == pytest.approx(1.0, abs=1e-5) and (k >= 0).all()
    # sigma_x 1 along columns, sigma_y 0.3 along rows: wider horizontally.
    x = np.arange(-3, 4)
    ref = np.exp(-0.5 * (x[None, :] ** 2 / 1.0 + x[:, None] ** 2 / 0.09))
    np.testing.assert_allclose(k, ref / ref.sum(), atol=1e-6)
    # Rotated by 90 degrees it is the transpose.
    k90 = augment.advanced_blur_kernel(7, 1.0, 0.3, np.pi / 2, 1.0, np.ones((7, 7)))
    np.testing.assert_allclose(k90, k.T, atol=1e-6)


def test_sharpen_raises_noise_variance_and_matches_its_kernel():
    noise = noise_image(48, 48, seed=7, lo=64, hi=192)
    for seed in range(30):
        out = augment.sharpen(noise, np.random.default_rng(seed))
        assert out.astype(float).var() > noise.astype(float).var()
    kernel = augment.sharpen_kernel(0.5, 1.0)
    np.testing.assert_allclose(kernel, [[-0.5] * 3, [-0.5, 5.0, -0.5], [-0.5] * 3])
    # Kernel sum 1 + a (l - 1): a flat 200 image darkens to 200 (1 - 0.2 * 0.5) at a=0.2, l=0.5.
    flat = np.full((8, 8, 3), 200, np.uint8)
    out = cv2.filter2D(flat, -1, augment.sharpen_kernel(0.2, 0.5))
    assert (out == 180).all()


# --- dropout ---------------------------------------------------------------------------------------

def albumentations_grid_holes(height, width, ratio):
    """GridDropout 1.3 get_params, written out as its loops (the reference)."""
    unit_w = max(2, width // 10)
    unit_h = max(min(unit_w, height), 2)
    hole_w = min(max(int(unit_w * ratio), 1), unit_w - 1)
    hole_h = min(max(int(unit_h * ratio), 1), unit_h - 1)
    holes = []
    for i in range(width // unit_w + 1):
        for j in range(height // unit_h + 1):
            x1, y1 = min(unit_w * i, width), min(unit_h * j, height)
            holes.append((x1, y1, min(x1 + hole_w, width), min(y1 + hole_h, height)))
    return holes


@pytest.mark.parametrize("shape,ratio,area", [((384, 384, 3), 0.4, 0.16), ((140, 768, 3), 0.5, 0.27),
                                              ((100, 37, 3), 0.4, None)])
def test_grid_dropout_matches_albumentations_holes(shape, ratio, area):
    img = noise_image(*shape[:2], seed=8)
    out = augment.grid_dropout(img, ratio)
    ref = img.copy()
    for x1, y1, x2, y2 in albumentations_grid_holes(shape[0], shape[1], ratio):
        ref[y1:y2, x1:x2] = 0
    np.testing.assert_array_equal(out, ref)
    if area is None:  # too small a cell for `ratio` to be exact
        return
    dropped = (out == 0).all(-1)
    # `ratio` is of each cell side: about ratio of the rows and of the columns, ratio^2 of the area.
    assert abs(dropped.any(1).mean() - ratio) < 0.06 and abs(dropped.any(0).mean() - ratio) < 0.06
    assert abs(dropped.mean() - area) < 0.03


def test_coarse_dropout_zeroes_10_to_25_holes_of_a_tenth_to_a_fifth_of_the_height():
    h, w = 140, 768
    lo, hi = int(0.1 * h), int(0.2 * h)
    counts = []
    for seed in range(40):
        img = noise_image(h, w, seed=seed)  # no zero anywhere
        out = augment.coarse_dropout(img, np.random.default_rng(seed))
        holes = augment.coarse_dropout_holes(img.shape, np.random.default_rng(seed))
        counts.append(len(holes))
        assert 10 <= len(holes) <= 25
        mask = np.zeros((h, w), bool)
        for x1, y1, x2, y2 in holes:
            assert lo <= y2 - y1 <= hi and lo <= x2 - x1 <= hi
            assert 0 <= x1 and x2 <= w and 0 <= y1 and y2 <= h
            mask[y1:y2, x1:x2] = True
        zero = (out == 0).all(-1)
        np.testing.assert_array_equal(zero, mask)
        np.testing.assert_array_equal(out[~mask], img[~mask])  # the rest is untouched
        # Independently of the hole list: every zeroed blob is at least lo x lo, at most 25 blobs.
        n, _, stats, _ = cv2.connectedComponentsWithStats(zero.astype(np.uint8), connectivity=4)
        assert 1 <= n - 1 <= 25
        assert (stats[1:, cv2.CC_STAT_WIDTH] >= lo).all() and (stats[1:, cv2.CC_STAT_HEIGHT] >= lo).all()
        assert lo * lo <= zero.sum() <= 25 * hi * hi
    assert min(counts) <= 12 and max(counts) >= 23


# --- the recipe: probabilities, determinism, alignment, flag --------------------------------------

def test_op_probabilities_are_sample4geo_within_four_sigma():
    n = 4000
    counts = dict.fromkeys(augment.PHOTOMETRIC_OPS, 0)
    for seed in range(n):
        for name in augment.draw_photometric_ops(S4G, np.random.default_rng(seed)):
            counts[name] += 1
    expected = {"jpeg": 0.5, "color_jitter": 0.5, "advanced_blur": 0.15, "sharpen": 0.15,
                "grid_dropout": 0.15, "coarse_dropout": 0.15}
    for name, p in expected.items():
        assert abs(counts[name] / n - p) <= four_sigma(p, n), (name, counts[name] / n)
    # OneOf: never both members at once.
    for seed in range(500):
        ops = augment.draw_photometric_ops(S4G, np.random.default_rng(seed))
        assert not {"advanced_blur", "sharpen"} <= set(ops) and not {"grid_dropout", "coarse_dropout"} <= set(ops)


def test_photometric_runs_the_drawn_ops_in_order_from_the_same_rng():
    img = smooth_image(40, 60, seed=9)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        out = augment.photometric(img, S4G, rng, 0.4)
        replay = np.random.default_rng(seed)
        ref = img
        for name in augment.draw_photometric_ops(S4G, replay):
            ref = augment.run_photometric_op(name, ref, replay, 0.4)
        np.testing.assert_array_equal(out, ref)


def _dihedral(aerial):
    return {(k, f): np.rot90(aerial[:, ::-1] if f else aerial, k) for k in range(4) for f in (0, 1)}


def _nearest(candidates, image):
    def corr(a, b):
        a, b = a.astype(float).ravel(), b.astype(float).ravel()
        return np.corrcoef(a, b)[0, 1]
    scores = {key: corr(c, image) for key, c in candidates.items() if c.shape == image.shape}
    return max(scores, key=scores.get), scores


def test_the_recipe_keeps_the_pair_aligned_and_rotates_and_flips_as_sample4geo():
    aerial = smooth_image(64, 64, seed=10)
    ground = smooth_image(16, 128, seed=11)
    dihedral = _dihedral(aerial)
    pano_moves = {}
    for (k, f) in dihedral:
        # The ground move that goes with aerial rot90(k) after an optional flip: flip, then roll.
        p = ground[:, ::-1] if f else ground
        pano_moves[(k, f)] = augment.roll_panorama(p, 90.0 * k)
    n, rot, flips, ground_untouched = 400, {k: 0 for k in range(4)}, 0, 0
    for seed in range(n):
        g0, a0, _ = augment.apply(augment.JOINT, ground, aerial, np.random.default_rng([seed, 1]))
        g1, a1, _ = augment.apply(S4G, ground, aerial, np.random.default_rng([seed, 1]))
        # The geometry alone (JOINT): one dihedral move, the panorama moved the matching way.
        key = next(key for key, c in dihedral.items() if np.array_equal(c, a0))
        np.testing.assert_array_equal(g0, pano_moves[key])
        # The full recipe draws the same geometry first, then perturbs the pixels of both views.
        key_a, scores = _nearest(dihedral, a1)
        key_g, _ = _nearest(pano_moves, g1)
        assert key_a == key_g == key, (seed, key, key_a, key_g)
        # (after "aerial flip then rot k" the same image is "rot -k then flip"; k uniform either way)
        k_turns = key[0] if key[1] == 0 else (-key[0]) % 4
        rot[k_turns] += 1
        flips += key[1]
        ground_untouched += np.array_equal(g1, g0)
    for k in range(4):  # Sample4Geo: rotate with p 0.75, k in {1, 2, 3}: each quarter turn 0.25
        assert abs(rot[k] / n - 0.25) <= four_sigma(0.25, n), rot
    assert abs(flips / n - 0.5) <= four_sigma(0.5, n)
    # No op at all on a view: 0.5 * 0.5 * 0.7 * 0.7 (a jitter too weak to move a level is rare).
    p_none = 0.5 * 0.5 * 0.7 * 0.7
    assert abs(ground_untouched / n - p_none) <= four_sigma(p_none, n) + 0.01, ground_untouched / n


def test_apply_is_deterministic_and_seeds_differ():
    ground, aerial = smooth_image(28, 154, seed=12), smooth_image(48, 48, seed=13)
    outs = [augment.apply(S4G, ground, aerial, np.random.default_rng([7, 0, i])) for i in range(6)]
    again = [augment.apply(S4G, ground, aerial, np.random.default_rng([7, 0, i])) for i in range(6)]
    for (g1, a1, _), (g2, a2, _) in zip(outs, again):
        np.testing.assert_array_equal(g1, g2)
        np.testing.assert_array_equal(a1, a2)
        assert g1.shape == ground.shape and a1.shape == aerial.shape and g1.dtype == a1.dtype == np.uint8
    distinct = {(g.tobytes(), a.tobytes()) for g, a, _ in outs}
    assert len(distinct) == len(outs)


def test_specs_without_photometric_draw_as_before():
    spec = augment.AugmentSpec(rotation="joint", joint_flip=0.5, azimuth_shift=True)
    assert not spec.photometric and S4G.photometric and S4G.active
    ground, aerial = smooth_image(16, 64, seed=14), smooth_image(32, 32, seed=15)
    rng = np.random.default_rng(3)
    augment.apply(spec, ground, aerial, rng)
    # k, the flip and the yaw: three draws and no more.
    ref = np.random.default_rng(3)
    _ = ref.integers(0, 4), ref.random(), ref.uniform(0.0, 360.0)
    assert rng.random() == ref.random()


def test_bad_photometric_values_name_the_field():
    for name in augment.PHOTOMETRIC_FIELDS:
        with pytest.raises(CvmError, match=name):
            augment.AugmentSpec(**{name: 1.5})
        with pytest.raises(CvmError, match=name):
            augment.AugmentSpec(**{name: -0.1})
    with pytest.raises(CvmError, match="grid_ratio"):
        augment.AugmentSpec(grid_ratio=(0.0, 0.4))
    with pytest.raises(CvmError, match="grid_ratio"):
        augment.AugmentSpec(grid_ratio=0.4)


def test_augment_sample4geo_reaches_the_pipeline(tmp_path):
    from cvm.data import images
    from cvm.data.pipeline import PairLoader
    from cvm.flags.train import RUN_FIELDS
    from cvm.training.config import TrainConfig
    from tests.conftest import write_pairs

    assert "sample4geo" in RUN_FIELDS["augment"][0][1]
    config = TrainConfig(model_dir=str(tmp_path / "m"), augment="sample4geo")
    config.validate()
    spec = config.augment_spec()
    assert spec == S4G
    assert (spec.jpeg, spec.color_jitter, spec.blur_sharpen, spec.dropout) == (0.5, 0.5, 0.3, 0.3)
    assert spec.rotation == "joint" and spec.joint_flip == 0.5 and spec.grid_ratio == (0.5, 0.4)
    assert not TrainConfig(model_dir=str(tmp_path / "j"), augment="joint").augment_spec().photometric
    with pytest.raises(CvmError, match="--augment"):
        TrainConfig(model_dir=str(tmp_path / "x"), augment="albumentations").validate()

    split = write_pairs(str(tmp_path / "toy"), 6)
    image_spec = images.ImageSpec(ground_size=(28, 154), aerial_size=(48, 48))
    full = PairLoader(split, image_spec, spec, seed=1)
    joint = PairLoader(split, image_spec, augment.JOINT, seed=1)
    differ = 0
    for i in range(6):
        g1, a1, _, ok1 = full.load(i, 0, True)
        g0, a0, _, ok0 = joint.load(i, 0, True)
        assert ok1 and ok0 and g1.shape == (28, 154, 3) and a1.shape == (48, 48, 3) and g1.dtype == np.uint8
        differ += (not np.array_equal(g1, g0)) + (not np.array_equal(a1, a0))
        g2, a2, _, _ = full.load(i, 0, True)
        np.testing.assert_array_equal(g1, g2)
        np.testing.assert_array_equal(a1, a2)
    assert differ >= 6  # P(a view untouched) = 0.12: nearly all of the 12 views change

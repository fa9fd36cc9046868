"""Orientation metrics (wrap-around and the original's plain difference), DSM's labels and FoV test sets, and
the correlation evaluator's orientation output on maps whose orientation is known."""

import json

import numpy as np
import pytest

from cvm.data import fov_protocol
from cvm.errors import CvmError
from cvm.evaluation.correlation import evaluate_correlation
from cvm.evaluation.orientation import (
    angular_error_deg,
    bin_error,
    expected_bin_from_roll,
    orientation_label,
    orientation_metrics,
)


def test_labels_as_the_original_and_wrapped():
    shifts = np.array([0, 1, 3, 4, 5, 8, 256, 511])
    # (512 - s) / 512 * 64 = 64, 63.875, 63.625, 63.5, 63.375, 63, 32, 0.125 (the original rounds after the mod;
    # np.around rounds half to even: 63.5 -> 64).
    np.testing.assert_array_equal(orientation_label(shifts, original=True), [0, 64, 64, 64, 63, 63, 32, 0])
    np.testing.assert_array_equal(orientation_label(shifts), [0, 0, 0, 0, 63, 63, 32, 0])


def test_bin_error_wraps_or_not():
    pred = np.array([0, 63, 10, 0, 32])
    true = np.array([63, 0, 12, 64, 0])
    np.testing.assert_array_equal(bin_error(pred, true, 64), [1, 1, 2, 0, 32])
    np.testing.assert_array_equal(bin_error(pred, true, 64, wrap=False), [63, 63, 2, 64, 32])
    with pytest.raises(CvmError):
        bin_error(pred, true[:2])


def test_metrics_by_hand():
    pred = np.array([0, 63, 10, 5])
    true = np.array([63, 63, 12, 5])
    m = orientation_metrics(pred, true, bins=64)
    assert m["orientation_acc@0bin"] == 0.5 and m["orientation_acc@1bin"] == 0.75
    assert m["orientation_error_deg_mean"] == pytest.approx((1 + 0 + 2 + 0) * 5.625 / 4)
    assert m["orientation_error_deg_median"] == pytest.approx(0.5 * 5.625)
    orig = orientation_metrics(pred, true, bins=64, wrap=False)
    assert orig["orientation_acc@1bin"] == 0.5 and orig["orientation_error_deg_mean"] == pytest.approx(65 * 5.625 / 4)
    cont = orientation_metrics(pred, true, bins=64, true_deg=[355.0, 354.375, 56.25, 30.0])
    assert cont["orientation_abs_error_deg_mean"] == pytest.approx((5.0 + 0 + 0 + 1.875) / 4)


def test_angular_error_wraps():
    np.testing.assert_allclose(angular_error_deg([350, 10, 180, 0], [10, 350, 0, 720]), [20, 20, 180, 0])


def test_expected_bin_of_the_augment_crop():
    # np.roll(pano, -roll) then columns start..: column c shows pano[c + roll + start]; 8 px per bin at 512.
    np.testing.assert_array_equal(expected_bin_from_roll([0, 8, 500], 192, 512, 64), [24, 25, (500 + 192 - 512) // 8])


def test_original_test_shifts_and_crops():
    np.random.seed(2019)  # the original: seed once, then one rand() per test pair in order
    expected = [int(np.random.rand() * 512 * 360 / 360) for _ in range(50)]
    np.testing.assert_array_equal(fov_protocol.original_test_shifts(50), expected)
    assert [fov_protocol.crop_width(f) for f in fov_protocol.FOVS] == [512, 256, 128, 99]
    pano = np.arange(3 * 512).reshape(3, 512)
    for shift in (0, 1, 300):
        expected = np.roll(pano, shift, axis=1)[:, :99]
        np.testing.assert_array_equal(fov_protocol.shift_and_crop(pano, shift, 70), expected)
    with pytest.raises(CvmError, match="fov_deg"):
        fov_protocol.crop_width(400)


def test_test_set_is_persisted_and_checked(tmp_path):
    path = str(tmp_path / "results" / "cvusa_val_fov90_test_set.json")
    ids = [f"p{i}" for i in range(20)]
    made = fov_protocol.load_or_create_test_set(path, ids, 90, dataset="cvusa", split="val")
    stored = json.load(open(path))
    assert stored["seed"] == 2019 and stored["crop_width"] == 128 and stored["ids"] == ids
    assert stored["shifts"] == fov_protocol.original_test_shifts(20).tolist() == made["shifts"]
    assert stored["labels"] == orientation_label(np.array(made["shifts"])).tolist()
    again = fov_protocol.load_or_create_test_set(path, ids, 90)
    assert again["shifts"] == made["shifts"]
    with pytest.raises(CvmError, match="fov_deg"):
        fov_protocol.load_or_create_test_set(path, ids, 70)
    with pytest.raises(CvmError, match="pair ids"):
        fov_protocol.load_or_create_test_set(path, ids[:-1], 90)
    batch = fov_protocol.crop_batch(np.zeros((2, 4, 512, 3)), [3, 7], made)
    assert batch.shape == (2, 4, 128, 3)


def test_correlation_evaluator_reports_orientation_of_known_crops():
    """Ground maps cut from their aerial maps at the test set's shifts: every orientation recovered."""
    rng = np.random.default_rng(0)
    n, h, wa, c = 12, 2, 64, 4
    aerial = rng.normal(size=(n, h, wa, c)).astype("float32")
    shifts_px = fov_protocol.original_test_shifts(n)
    labels = orientation_label(shifts_px)
    grounds = []
    for i in range(n):
        # Feature-level version of the loader's crop: a shift of s px moves the map by s / 8 columns.
        crop = fov_protocol.shift_and_crop(aerial[i], int(round(shifts_px[i] / 8)) % wa, 90)
        grounds.append(crop / np.linalg.norm(crop))
    ground = np.stack(grounds)
    result = evaluate_correlation(ground.reshape(n, -1), aerial.reshape(n, -1), map_height=h, map_channels=c,
                                  orientation_labels=labels, directions=("ground_to_aerial", "aerial_to_ground"))
    assert result["directions"]["ground_to_aerial"]["metrics"]["r@1"] == 1.0
    assert result["orientation"]["orientation_acc@0bin"] == 1.0
    assert result["orientation"]["orientation_error_deg_mean"] == 0.0
    # Known orientation (shift 0 crop): these shifted grounds are no longer matched reliably.
    known = evaluate_correlation(ground, aerial, search_orientation=False)
    assert known["directions"]["ground_to_aerial"]["metrics"]["r@1"] < 1.0


class _CropEncoder:
    """A test double of a correlation model: the ground 'map' is the normalised crop itself (1 row of
    pixels x 3 channels per column after a row mean), the aerial map the polar image's row mean."""

    correlation = True
    map_height = 1
    map_channels = 3
    orientation_bins = 128

    def encode_ground(self, images, training=False):
        x = np.asarray(images).mean(axis=1, keepdims=True)
        x = x / np.linalg.norm(x.reshape(len(x), -1), axis=1)[:, None, None, None]
        return x.reshape(len(x), -1)

    def encode_aerial(self, images, training=False):
        x = np.asarray(images).mean(axis=1, keepdims=True)
        return x.reshape(len(x), -1)


def test_fov_protocol_run_crops_by_the_persisted_test_set(tmp_path):
    from cvm.data import load_split
    from cvm.data.images import ImageSpec
    from cvm.data.pipeline import Pipeline
    from cvm.evaluation.orientation_run import embed_with_test_set, evaluate_fov_protocol

    spec = ImageSpec(ground_size=(16, 128), aerial_size=(16, 128), aerial_polar=True)
    split = load_split("synthetic", "val", image_spec=spec, synthetic_pairs=20)
    pipeline = Pipeline(split, spec)
    test_set = fov_protocol.make_test_set([p.id for p in split], 90, pano_width=128, bins=128)
    emb = embed_with_test_set(_CropEncoder(), pipeline, 3, test_set)  # batches of 3: positions must follow
    panoramas = next(iter(pipeline.eval(len(split))))[0]["ground"].numpy()  # the whole split in one batch
    assert list(emb["index"]) == list(range(len(split)))
    for i in emb["index"]:
        crop = np.roll(panoramas[i], test_set["shifts"][i], axis=1)[:, :32]  # the original's crop, restated
        np.testing.assert_allclose(emb["ground"][i], _CropEncoder().encode_ground(crop[None])[0], rtol=1e-6)
    out = evaluate_fov_protocol(_CropEncoder(), pipeline, 3, fov_deg=90, method="stub", checkpoint=None,
                                out_dir=str(tmp_path))
    stored = json.load(open(out["fov_protocol"]["test_set"]))
    assert stored["shifts"] == test_set["shifts"] and stored["crop_width"] == 32
    written = json.load(open(out["results_json"]))
    assert written["fov_protocol"]["seed"] == 2019 and "orientation_acc@1bin" in written["orientation"]

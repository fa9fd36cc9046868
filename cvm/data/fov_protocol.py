"""DSM's limited-FoV / unknown-orientation protocol (Shi et al., CVPR 2020; `polar_input_data_orien_FOV_3.py`).

The 128x512 panorama is shifted right by a random number of columns and its first int(512 FoV / 360) columns
are kept: crop[:, c] = pano[:, (c - shift) mod 512], shift = int(u * 512 * noise / 360) with u ~ U[0, 1)
(noise = 360 for an unknown orientation). Training draws a shift per sample; the test set's shifts come from
`np.random.seed(2019)` and one `np.random.rand()` per test pair in split order (test_cvusa_fov.py), which
`original_test_shifts` reproduces exactly (NumPy's legacy MT19937 stream). The label is the bin where the correlation
with the 64-column aerial map should peak (cvm.evaluation.orientation.orientation_label).

A test set is persisted as JSON (`write_test_set`, beside the results) with its seed, FoV, widths and the shift
and label of every pair id, so that every model is compared on the same crops; `load_or_create_test_set`
re-reads it and refuses a file made for another FoV, seed or split.

cvm.data.augment's `--azimuth_shift --fov_deg` (uniform yaw, then a centred crop of round(W FoV / 360)
columns) draws the same distribution of windows for training; only the crop width differs at 70 degrees
(100 vs 99 columns; both give a 13-column ground map).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from cvm.errors import CvmError
from cvm.evaluation.orientation import orientation_label

FOVS = (360, 180, 90, 70)
ORIGINAL_TEST_SEED = 2019
PANORAMA_WIDTH = 512
FORMAT = "cvm-dsm-fov-test-set/1"


def crop_width(fov_deg: float, pano_width: int = PANORAMA_WIDTH) -> int:
    """Columns kept for a FoV: int(FoV / 360 * W) as the original (99 at 70 degrees, 128 at 90)."""
    if not 0.0 < float(fov_deg) <= 360.0:
        raise CvmError(f"fov_deg must be in (0, 360], got {fov_deg}")
    return max(1, int(float(fov_deg) / 360.0 * int(pano_width)))


def draw_shift(uniform: float, pano_width: int = PANORAMA_WIDTH, noise_deg: float = 360.0) -> int:
    """The original's shift from one U[0, 1) draw: int(u * W * noise / 360)."""
    return int(float(uniform) * int(pano_width) * float(noise_deg) / 360.0)


def shift_and_crop(pano: np.ndarray, shift: int, fov_deg: float) -> np.ndarray:
    """crop[:, c] = pano[:, (c - shift) mod W] for c < crop_width(FoV, W) (any [H, W, ...] array)."""
    w = pano.shape[1]
    columns = (np.arange(w) - int(shift)) % w
    return pano[:, columns[: crop_width(fov_deg, w)]]


def original_test_shifts(n: int, seed: int = ORIGINAL_TEST_SEED, pano_width: int = PANORAMA_WIDTH,
                noise_deg: float = 360.0) -> np.ndarray:
    """The original test set's shifts: np.random.seed(seed), then int(np.random.rand() * W * noise / 360) per pair."""
    uniforms = np.random.RandomState(int(seed)).random_sample(int(n))
    return (uniforms * int(pano_width) * float(noise_deg) / 360.0).astype(np.int64)


def make_test_set(ids: Sequence, fov_deg: float, seed: int = ORIGINAL_TEST_SEED, pano_width: int = PANORAMA_WIDTH,
                  noise_deg: float = 360.0, bins: int = 64, dataset: str = "", split: str = "") -> dict:
    """The fixed test set of a split: shifts and labels per pair id (in split order, as the original)."""
    ids = [str(i) for i in ids]
    shifts = original_test_shifts(len(ids), seed, pano_width, noise_deg)
    return {
        "format": FORMAT, "dataset": dataset, "split": split, "seed": int(seed), "fov_deg": float(fov_deg),
        "noise_deg": float(noise_deg), "pano_width": int(pano_width), "crop_width": crop_width(fov_deg, pano_width),
        "bins": int(bins), "ids": ids, "shifts": shifts.tolist(),
        "labels": orientation_label(shifts, pano_width, bins).tolist(),
        "labels_original": orientation_label(shifts, pano_width, bins, original=True).tolist(),
    }


def write_test_set(path: str, test_set: dict) -> str:
    from cvm.atomic import write_json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json(path, test_set)
    return path


def read_test_set(path: str) -> dict:
    import json

    try:
        with open(path) as f:
            test_set = json.load(f)
    except (OSError, ValueError) as error:
        raise CvmError(f"cannot read the FoV test set {path}: {error}; delete it to draw it again") from error
    if test_set.get("format") != FORMAT:
        raise CvmError(f"{path} is not a cvm DSM FoV test set (format {test_set.get('format')!r})")
    return test_set


def load_or_create_test_set(path: str, ids: Sequence, fov_deg: float, seed: int = ORIGINAL_TEST_SEED,
                            **options) -> dict:
    """The persisted test set at `path`, or a new one written there; CvmError if it was made otherwise."""
    wanted = make_test_set(ids, fov_deg, seed, **options)
    if not os.path.exists(path):
        write_test_set(path, wanted)
        return wanted
    stored = read_test_set(path)
    for key in ("seed", "fov_deg", "noise_deg", "pano_width", "bins", "ids"):
        if stored.get(key) != wanted[key]:
            shown = "the pair ids" if key == "ids" else f"{key} {stored.get(key)!r} (wanted {wanted[key]!r})"
            raise CvmError(f"the FoV test set {path} was made with other settings: {shown}; "
                           "use another results folder, or delete the file to draw the test set again")
    return stored


def crop_batch(panoramas: np.ndarray, indices: Sequence[int], test_set: dict) -> np.ndarray:
    """Apply a test set's shifts to a batch [B, H, W, C] of full panoramas of pairs `indices` (split positions)."""
    shifts = np.asarray(test_set["shifts"])
    fov = test_set["fov_deg"]
    return np.stack([shift_and_crop(p, int(shifts[int(i)]), fov) for p, i in zip(panoramas, indices)])


__all__ = ["FOVS", "ORIGINAL_TEST_SEED", "crop_batch", "crop_width", "draw_shift", "load_or_create_test_set",
           "make_test_set", "original_test_shifts", "read_test_set", "shift_and_crop", "write_test_set"]

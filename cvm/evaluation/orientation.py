"""Orientation metrics for methods that estimate the query's heading (DSM, Shi et al., CVPR 2020, Sec. 4).

The estimate is a bin of the correlation over the aerial map's azimuth (64 bins of 5.625 degrees for DSM).
DSM's `cal_FOV_acc.py` reports the fraction of queries whose bin equals the label and whose bin differs from it
by less than 2 (|delta| <= 1), with delta = pred - label *not* wrapped around 0/360: a query whose label is
63 predicted as 0 (one bin apart, across the seam of the map) counts as 63 bins off. Here
the difference wraps (`wrap=True`, the default: min(|delta| mod B, B - |delta| mod B)); `wrap=False` keeps
the original's plain |delta| so that its numbers can be reproduced.

The original's labels, `np.around(((512 - shift) / 512 * 64) % 64)`, round *after* the modulo, so shifts
1..4 px give label 64 (never predicted: the argmax is in 0..63; 63.5 rounds to even 64). `orientation_label(..., original=True)`
reproduces that; the default wraps the rounded value into 0..B-1. Degrees: error_bins * 360 / B.
`heading_deg` turns a shift into the heading of the query's centre, as `cvm locate` reports it.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from cvm.errors import CvmError


def orientation_label(shift_px, pano_width: int = 512, bins: int = 64, original: bool = False) -> np.ndarray:
    """The bin where the correlation of a ground crop shifted right by `shift_px` columns should peak (DSM).

    A crop g[c] = pano[(c - shift) mod W] matches the aerial map at k = (W - shift) / W * bins. `original`:
    round(((W - shift) / W * bins) mod bins), which can give `bins` (input_data `next_batch_scan`); else that
    value mod bins.
    """
    shift = np.asarray(shift_px, dtype=np.float64)
    label = np.around(((pano_width - shift) / pano_width * bins) % bins).astype(np.int64)
    return label if original else label % int(bins)


def bin_error(predicted, label, bins: int = 64, wrap: bool = True) -> np.ndarray:
    """|predicted - label| in bins, wrapped around the circle (`wrap`) or as the original (plain difference)."""
    predicted = np.asarray(predicted, dtype=np.int64)
    label = np.asarray(label, dtype=np.int64)
    if predicted.shape != label.shape:
        raise CvmError(f"predicted and true orientations differ in shape: {predicted.shape} vs {label.shape}")
    diff = np.abs(predicted - label)
    if not wrap:
        return diff
    diff = diff % int(bins)
    return np.minimum(diff, int(bins) - diff)


def angular_error_deg(predicted_deg, true_deg) -> np.ndarray:
    """Smallest absolute angle between two headings in degrees, in [0, 180]."""
    d = np.abs(np.asarray(predicted_deg, np.float64) - np.asarray(true_deg, np.float64)) % 360.0
    return np.minimum(d, 360.0 - d)


def orientation_metrics(predicted, label, bins: int = 64, wrap: bool = True, true_deg=None) -> dict:
    """Accuracy at 0 and +-1 bins, mean / median error in degrees (bin centres), as DSM's `cal_FOV_acc.py`.

    Args:
      predicted: [N] predicted bins (0..bins-1).
      label: [N] true bins (`orientation_label`).
      bins: number of azimuth bins (aerial map width).
      wrap: wrap the difference around 360 degrees (False: the original's plain difference, for parity).
      true_deg: optional [N] true headings in degrees (continuous); adds the error of the predicted bin's angle
        (bin * 360 / bins) against them, always wrapped.
    """
    error = bin_error(predicted, label, bins, wrap)
    if error.size == 0:
        raise CvmError("no orientations to evaluate")
    degrees = error * (360.0 / bins)
    metrics = {
        "orientation_acc@0bin": float(np.mean(error == 0)),
        "orientation_acc@1bin": float(np.mean(error <= 1)),  # the original's `orien_error < 2`
        "orientation_error_deg_mean": float(np.mean(degrees)),
        "orientation_error_deg_median": float(np.median(degrees)),
        "orientation_bins": int(bins),
        "orientation_bin_deg": 360.0 / bins,
        "orientation_wrap": bool(wrap),
        "n_orientations": int(error.size),
    }
    if true_deg is not None:
        cont = angular_error_deg(np.asarray(predicted, np.float64) * (360.0 / bins), true_deg)
        metrics["orientation_abs_error_deg_mean"] = float(np.mean(cont))
        metrics["orientation_abs_error_deg_median"] = float(np.median(cont))
    return metrics


def expected_bin_from_roll(roll_px, start_px: int, pano_width: int, bins: int) -> np.ndarray:
    """Expected bin for a crop pano[(c + roll + start) mod W] (np.roll(pano, -roll), then columns from start).

    cvm.data.augment's azimuth shift + centred FoV crop: roll = round(yaw / 360 W), start = (W - keep) // 2.
    Rounded to the nearest bin, mod bins.
    """
    offset = (np.asarray(roll_px, np.float64) + float(start_px)) % pano_width
    return np.around(offset / pano_width * bins).astype(np.int64) % int(bins)


def heading_deg(shift, bins: int, ground_fov_deg: float = 360.0):
    """Heading of a query's centre column, clockwise from north in [0, 360), from its best correlation shift (DSM).

    cvm.data.augment's panorama convention puts azimuth 180 + 360 x / W at horizontal position x (column j's
    centre x = j + 0.5; north at the centre, x = W / 2). At shift k the query's first column lies at panorama
    position k W / bins (`expected_bin_from_roll`), so its centre, ground_fov_deg / 2 further on, looks at
    180 + 360 k / bins + ground_fov_deg / 2: 360 k / bins for a whole panorama. ground_fov_deg is the crop's
    true width (360 * crop columns / panorama columns). Resolution: one bin (360 / bins degrees).
    """
    k = np.asarray(shift, np.float64)
    heading = np.mod(180.0 + 360.0 * k / int(bins) + 0.5 * float(ground_fov_deg), 360.0)
    heading = np.where(heading >= 360.0, heading - 360.0, heading)  # never 360.0 after rounding
    return float(heading) if heading.ndim == 0 else heading


def summarise(predicted, label, bins: int, wrap: bool = True, original_too: bool = True,
              true_deg: Optional[np.ndarray] = None) -> dict:
    """`orientation_metrics` with the chosen convention, plus the original's (unwrapped) under "original"."""
    out = orientation_metrics(predicted, label, bins, wrap, true_deg)
    if original_too and wrap:
        unwrapped = orientation_metrics(predicted, label, bins, wrap=False)
        out["original_unwrapped"] = {k: unwrapped[k] for k in ("orientation_acc@0bin", "orientation_acc@1bin",
                                                               "orientation_error_deg_mean")}
    return out


__all__ = ["angular_error_deg", "bin_error", "expected_bin_from_roll", "heading_deg", "orientation_label",
           "orientation_metrics", "summarise"]

"""Shared fixtures: small on-disk datasets written with OpenCV."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cvm.data.records import Pair, Split  # noqa: E402


def write_pairs(folder, n, ground_hw=(56, 308), aerial_hw=(96, 96), ext=".png", seed=0):
    """n random ground/aerial image files and the Split listing them (positional ground truth)."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    pairs = []
    for i in range(n):
        g = os.path.join(folder, f"g{i:03d}{ext}")
        a = os.path.join(folder, f"a{i:03d}{ext}")
        cv2.imwrite(g, rng.integers(0, 256, (*ground_hw, 3), dtype=np.uint8))
        cv2.imwrite(a, rng.integers(0, 256, (*aerial_hw, 3), dtype=np.uint8))
        pairs.append(Pair(g, a, f"{i:03d}", (100.0 * i, -50.0 * i)))
    return Split("toy", "train", str(folder), pairs, location_kind="metres")


@pytest.fixture
def toy_split(tmp_path):
    return write_pairs(str(tmp_path / "toy"), 13)

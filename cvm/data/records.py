"""What every dataset adapter returns: aligned (ground, aerial, id, location) records.

A `Split` is a list of `Pair`s in ground-truth order (pair i's ground image matches pair i's aerial
image, the positional convention of CVUSA and CVACT) plus what the pipeline needs to read and
preprocess them. File-backed splits read images with OpenCV; in-memory splits (the synthetic world)
override `read_ground` / `read_aerial`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import cv2
import numpy as np

# Location conventions a split can carry (Pair.location is (a, b) in that convention).
LOCATION_KINDS = ("utm", "latlon", "metres")


@dataclasses.dataclass(frozen=True)
class Pair:
    """One ground/aerial pair.

    Attributes:
      ground_path: absolute path of the ground image (panorama or photo); for in-memory datasets a
        descriptive pseudo-path (`synthetic://...`) that is never opened.
      aerial_path: absolute path of the aerial image (or pseudo-path).
      id: the dataset's identifier of the pair (CVUSA: aerial file stem; CVACT: panoId).
      location: (easting, northing) in metres for "utm"/"metres", (lat, lon) for "latlon", or None.
    """

    ground_path: str
    aerial_path: str
    id: str
    location: Optional[tuple] = None


class Split:
    """An ordered list of pairs of one dataset split.

    Args:
      dataset: dataset name ("cvusa", "cvact", "ucfop", "synthetic", ...).
      name: split name ("train", "val", "test").
      root: dataset root folder (None for in-memory datasets).
      pairs: the records, in ground-truth order.
      location_kind: one of LOCATION_KINDS or None when the dataset has no coordinates.
      ground_rows: optional (top, bottom) fractions of the ground image height to keep before
        resizing (CVACT as distributed keeps the central half, rows 208..623 of 832).
      source: where the official files come from (used in error messages).
    """

    def __init__(
        self,
        dataset: str,
        name: str,
        root: Optional[str],
        pairs: Sequence[Pair],
        location_kind: Optional[str] = None,
        ground_rows: Optional[tuple] = None,
        source: str = "",
    ):
        if location_kind is not None and location_kind not in LOCATION_KINDS:
            raise ValueError(f"location_kind must be one of {LOCATION_KINDS}, got {location_kind!r}")
        self.dataset = dataset
        self.name = name
        self.root = root
        self.pairs = list(pairs)
        self.location_kind = location_kind
        self.ground_rows = ground_rows
        self.source = source

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> Pair:
        return self.pairs[i]

    def __iter__(self):
        return iter(self.pairs)

    def __repr__(self) -> str:
        return f"Split(dataset={self.dataset!r}, name={self.name!r}, pairs={len(self)}, root={self.root!r})"

    @property
    def ids(self) -> list:
        return [p.id for p in self.pairs]

    def locations(self) -> Optional[np.ndarray]:
        """[N, 2] float64 array of locations, or None if the split has none."""
        if self.location_kind is None:
            return None
        return np.asarray([p.location for p in self.pairs], dtype=np.float64).reshape(len(self), 2)

    def subset(self, indices: Sequence[int], name: Optional[str] = None) -> "Split":
        """A split holding pairs[indices] in that order (same reader)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.pairs = [self.pairs[i] for i in indices]
        if name is not None:
            clone.name = name
        return clone

    # Readers. They return a BGR uint8 image or None when the file is missing/unreadable; the
    # pipeline turns None into a skipped, reported sample instead of a crash.
    def read_ground(self, i: int) -> Optional[np.ndarray]:
        return read_bgr(self.pairs[i].ground_path)

    def read_aerial(self, i: int) -> Optional[np.ndarray]:
        return read_bgr(self.pairs[i].aerial_path)


def read_bgr(path: str) -> Optional[np.ndarray]:
    """OpenCV BGR uint8 decode as the originals (cv2.imread); None if missing, empty, truncated or corrupt."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return None
        # libjpeg only warns on a premature end and fills the rest with grey: check the end marker
        # (reading the head and tail only) before cv2.imread decodes the file outside the GIL.
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(max(0, size - 64))
            tail = f.read()
    except OSError:
        return None
    if truncated(head, tail):
        return None
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None or img.ndim != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        return None
    return img


def unreadable_reason(path: str) -> str:
    """Why `read_bgr(path)` gives None: "missing", "empty", "truncated", "corrupt" or the OS error."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty"
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(max(0, size - 64))
            tail = f.read()
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    return "truncated" if truncated(head, tail) else "corrupt"


def is_truncated(data: bytes) -> bool:
    """True for a JPEG without its end-of-image marker or a PNG without its IEND chunk.

    libjpeg only warns on a premature end of data and fills the rest with grey; a model would then
    train on a half-grey image, so such files are treated as unreadable.
    """
    return truncated(data[:8], data[-64:])


def truncated(head: bytes, tail: bytes) -> bool:
    """`is_truncated` from a file's first 8 and last 64 bytes."""
    if head[:2] == b"\xff\xd8":
        return b"\xff\xd9" not in tail
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in tail[-32:]
    return False

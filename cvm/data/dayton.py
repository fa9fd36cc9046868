"""Dayton (GT-CrossView) adapter for cross-view synthesis, in Regmi & Borji's 4-panel layout.

Root layout (as the synthesis repository's loader reads it, DATA_ROOT/<phase>/*.jpg):
    train/<name>          256x1024 training files
    test/<name>           256x1024 test files (`val/` is accepted too: the README tests with phase=val)
    train_split.txt       55,000 names, one per line ("<panoid>.x<..>.y<..>.a<angle>.jpg")
    test_split.txt        21,048 names
The split files are `datasets/dayton_split/` of github.com/kregmi/cross-view-image-synthesis; they are
also looked for under ROOT/dayton_split/ and ROOT/splits/.

Each file holds four 256x256 panels side by side, A | B | As | Bs = street view, aerial, street-view
segmentation map, aerial segmentation map (the loader `data/donkey_folder.lua` cuts the image into
quarters of its width). Ground truth is positional like every other adapter: pair i's street view and
aerial image are the first two panels of file i.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from cvm.data import sources
from cvm.data.records import Pair, Split, read_bgr
from cvm.errors import CvmError

SPLIT_FILES = {"train": "train_split.txt", "test": "test_split.txt", "val": "test_split.txt"}
SPLITS = ("train", "test")
# Folders searched for a split's images, in order ("val" is an alias of the test split).
IMAGE_DIRS = {"train": ("train",), "test": ("test", "val"), "val": ("val", "test")}
# Where a split file may live under the root, in order.
SPLIT_DIRS = ("", "dayton_split", "splits")
PANELS = ("ground", "aerial", "ground_seg", "aerial_seg")  # A | B | As | Bs, left to right
PANEL_SIZE = (256, 256)
FILE_SIZE = (256, 1024)  # (height, width) of one training file
OFFICIAL_PAIRS = {"train": 55000, "test": 21048}

_SPLITS_ORIGIN = ("is in the datasets/dayton_split folder of github.com/kregmi/cross-view-image-synthesis "
                  "(copy it into the dataset root, or into ROOT/dayton_split/)")


def split_panels(image: np.ndarray) -> tuple:
    """The four panels (A, B, As, Bs) of a concatenated file: columns [floor(k W / 4), floor((k + 1) W / 4)).

    As the Torch loader's `image.crop(input, k*w/4, 0, (k+1)*w/4, h)`, whose fractional bounds are
    truncated to integers.
    """
    width = image.shape[1]
    if width < 4:
        raise ValueError(f"a 4-panel Dayton file must be at least 4 pixels wide, got width {width}")
    bounds = [k * width // 4 for k in range(5)]
    return tuple(image[:, bounds[k]:bounds[k + 1]] for k in range(4))


class DaytonSplit(Split):
    """A Dayton split: one 4-panel file per pair (ground_path == aerial_path == the file).

    `read_ground` / `read_aerial` return the street-view / aerial panel, so the retrieval pipeline can
    read Dayton pairs too; `read_panels` returns all four.
    """

    def read_panels(self, i: int) -> Optional[tuple]:
        image = read_bgr(self.pairs[i].ground_path)
        return None if image is None else split_panels(image)

    def read_ground(self, i: int) -> Optional[np.ndarray]:
        panels = self.read_panels(i)
        return None if panels is None else np.ascontiguousarray(panels[0])

    def read_aerial(self, i: int) -> Optional[np.ndarray]:
        panels = self.read_panels(i)
        return None if panels is None else np.ascontiguousarray(panels[1])


def find_split_file(root: str, split: str) -> str:
    """The path of a split's name list: ROOT/<file>, ROOT/dayton_split/<file> or ROOT/splits/<file>."""
    name = SPLIT_FILES[split]
    for folder in SPLIT_DIRS:
        path = os.path.join(root, folder, name)
        if os.path.isfile(path):
            return path
    raise sources.missing_file_error("dayton", os.path.join(root, name), "split file", _SPLITS_ORIGIN + (
        f"; also looked for {os.path.join(root, 'dayton_split', name)} and {os.path.join(root, 'splits', name)}"))


def image_dir(root: str, split: str) -> str:
    """The folder of a split's 4-panel files (test: test/ or else val/)."""
    for folder in IMAGE_DIRS[split]:
        path = os.path.join(root, folder)
        if os.path.isdir(path):
            return path
    wanted = " or ".join(os.path.join(root, f) for f in IMAGE_DIRS[split])
    raise CvmError(f"Dayton {split} image folder not found: {wanted}. It holds the 256x1024 4-panel files "
                   f"(street view | aerial | street segmap | aerial segmap) listed by {SPLIT_FILES[split]}; "
                   f"{sources.README_HINT}.")


def read_names(path: str) -> list:
    """The file names of a split file: one per line, surrounding blanks and trailing empty lines ignored."""
    try:
        with open(path, "r", encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise CvmError(f"Dayton split file {path} is not a UTF-8 text file ({e}); restore it from "
                       "datasets/dayton_split of the synthesis repository.") from None
    except OSError as e:
        raise CvmError(f"Cannot read Dayton split file {path}: {e.strerror or e}.") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = []
    for lineno, line in enumerate(lines, start=1):
        name = line.strip()
        if not name or "," in name or os.path.basename(name) != name:
            raise CvmError(f"Malformed Dayton split file {path}, line {lineno}: expected one file name per line, "
                           f"got {line!r}; restore it from datasets/dayton_split of the synthesis repository.")
        names.append(name)
    return names


def load_dayton(root: str, split: str) -> DaytonSplit:
    """The pairs of a Dayton split, in split-file order.

    Args:
      root: the folder holding train/, test/ (or val/) and the split files.
      split: "train" or "test" ("val" is an alias of "test" whose images may sit in val/).

    Returns:
      DaytonSplit(dataset="dayton") whose pairs point both paths at the 4-panel file; id = the file
      name without its extension. Listed even if files are missing (`cvm data check` reports them).

    Raises:
      CvmError: unknown split, missing root, split file or image folder, malformed split file.
    """
    if split not in SPLIT_FILES:
        raise CvmError(f"Unknown Dayton split {split!r}; valid splits: 'train', 'test' ('val' is an alias of 'test').")
    root = sources.require_root("dayton", root)
    names = read_names(find_split_file(root, split))
    folder = image_dir(root, split)
    pairs = []
    for name in names:
        path = os.path.join(folder, name)
        pairs.append(Pair(ground_path=path, aerial_path=path, id=os.path.splitext(name)[0]))
    return DaytonSplit("dayton", split, root, pairs, location_kind=None, source=sources.source("dayton").origin)

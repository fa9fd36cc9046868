"""UCF-OP (Orlando-Pittsburgh) adapter: split text files -> `Split` of (ground, aerial) pairs with lat/lon.

splits/train_split.txt lines are `aerial,ground,synthesized_aerial,ground` (the GAN-synthesized
aerial images are not part of the release, so only the first two fields are used);
splits/test_split.txt lines are `aerial,ground`. Images are named by their coordinates: aerial
`<lat>_<lon>_nadir.png`, ground `<lat>_<lon>.png` (with more decimals).
"""

from __future__ import annotations

import os

from cvm.data import sources
from cvm.data.records import Pair, Split
from cvm.errors import CvmError

# Split name -> file under splits/. The release has no validation split: "val" is the test split.
SPLIT_FILES = {"train": "train_split.txt", "test": "test_split.txt", "val": "test_split.txt"}
SPLITS = ("train", "test")

_SPLITS_ORIGIN = (
    "comes with the UCF-OP release downloaded from the Google Drive link in the README of "
    "github.com/kregmi/cross-view-image-matching"
)


def load_ucfop(root: str, split: str) -> Split:
    """The pairs of a UCF-OP split, in file order.

    Args:
      root: the UCF-OP folder holding splits/; relative image paths in the split files are
        resolved against it, absolute ones are kept.
      split: "train" or "test"; "val" is accepted as an alias of "test" (the release has no
        separate validation split). The returned split keeps the requested name.

    Returns:
      Split(dataset="ucfop", location_kind="latlon", ground_rows=None) whose pairs carry absolute
      paths, id = aerial file stem and location = (lat, lon) parsed from the aerial file name.
      Pairs are listed even if their files are missing.

    Raises:
      CvmError: unknown split name, missing root or split file, malformed line, or an aerial file
        name that does not start with <lat>_<lon>.
    """
    if split not in SPLIT_FILES:
        raise CvmError(f"Unknown UCF-OP split {split!r}; valid splits: 'train', 'test', 'val' (alias of 'test').")
    root = sources.require_root("ucfop", root)
    list_path = os.path.join(root, "splits", SPLIT_FILES[split])
    if not os.path.isfile(list_path):
        raise sources.missing_file_error("ucfop", list_path, "split file", _SPLITS_ORIGIN)

    restore = "restore the original file from the UCF-OP release"
    rows = sources.read_split_rows("ucfop", list_path, ("aerial", "ground"), restore)
    pairs = []
    for lineno, fields in rows:
        aerial_file, ground_file = fields[0], fields[1]
        stem = os.path.splitext(os.path.basename(aerial_file))[0]
        location = _latlon(stem)
        if location is None:
            raise CvmError(
                f"Malformed UCF-OP split file {list_path}, line {lineno}: expected an aerial file named "
                f"<lat>_<lon>_nadir.png, got {aerial_file!r}; {restore}."
            )
        pairs.append(
            Pair(
                ground_path=os.path.join(root, ground_file),  # join keeps absolute paths as they are
                aerial_path=os.path.join(root, aerial_file),
                id=stem,
                location=location,
            )
        )
    return Split(
        dataset="ucfop",
        name=split,
        root=root,
        pairs=pairs,
        location_kind="latlon",
        ground_rows=None,
        source=sources.source("ucfop").origin,
    )


def _latlon(stem: str):
    """(lat, lon) from "<lat>_<lon>[_nadir]", or None if the name does not carry valid coordinates."""
    parts = stem.split("_")
    if len(parts) < 2:
        return None
    try:
        lat, lon = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return None
    return (lat, lon)

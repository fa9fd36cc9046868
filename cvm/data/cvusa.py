"""CVUSA ("CVPR subset") adapter: split CSVs -> `Split` of (panorama, aerial) pairs.

Root layout: bingmap/19/NNNNNNN.jpg (aerial, 750x750), streetview/panos/NNNNNNN.jpg (panorama,
224 high x 1232 wide), splits/train-19zl.csv and splits/val-19zl.csv. Each CSV row is
`aerial,panorama,annotation` with paths relative to the root; the annotation png is not used and
may be missing. Ground truth is positional (row i's panorama matches row i's aerial image); CVUSA
has no coordinates.
"""

from __future__ import annotations

import os

from cvm.data import sources
from cvm.data.records import Pair, Split
from cvm.errors import CvmError

# Split name -> CSV under splits/. The published "test" results are on val-19zl.csv.
SPLIT_FILES = {"train": "train-19zl.csv", "val": "val-19zl.csv", "test": "val-19zl.csv"}
SPLITS = ("train", "val")
# Aerial images the pairs point at: the Bing tiles, or SAFA's polar maps (`cvm data polar`).
AERIAL_KINDS = ("bingmap", "polar")

_SPLITS_ORIGIN = "comes with the CVPR_subset archive (splits.tar.gz) that the CVUSA authors send on request"


def load_cvusa(root: str, split: str, aerial: str = "bingmap") -> Split:
    """The pairs of a CVUSA split, in CSV row order.

    Args:
      root: the CVPR_subset folder (holds bingmap/, streetview/, splits/).
      split: "train" (train-19zl.csv) or "val" (val-19zl.csv); "test" is an alias of "val", the set
        every paper reports as the CVUSA test set. The returned split keeps the requested name.
      aerial: "bingmap" (the CSV's aerial path) or "polar": SAFA's precomputed polar map of it,
        polarmap/19/NNNNNNN.png (SAFA's loader: "bing" -> "polar", "jpg" -> "png"; written by
        `cvm data polar`, 112 x 616), for `--aerial_size=112,616` without `--aerial_polar`.

    Returns:
      Split(dataset="cvusa", location_kind=None, ground_rows=None) whose pairs carry absolute paths
      and id = file stem of the aerial image. Pairs are listed even if their files are missing
      (`cvm data check` reports those).

    Raises:
      CvmError: unknown split name, missing root or split file, malformed CSV row, or aerial="polar"
        without a polarmap/ folder.
    """
    if split not in SPLIT_FILES:
        raise CvmError(f"Unknown CVUSA split {split!r}; valid splits: 'train', 'val', 'test' (alias of 'val').")
    if aerial not in AERIAL_KINDS:
        raise CvmError(f"Unknown CVUSA aerial kind {aerial!r}; valid kinds: {', '.join(map(repr, AERIAL_KINDS))}.")
    root = sources.require_root("cvusa", root)
    csv_path = os.path.join(root, "splits", SPLIT_FILES[split])
    if not os.path.isfile(csv_path):
        raise sources.missing_file_error("cvusa", csv_path, "split file", _SPLITS_ORIGIN)

    rows = sources.read_split_rows(
        "cvusa", csv_path, ("aerial", "ground"), "restore the original file from the CVPR_subset splits.tar.gz"
    )
    pairs = []
    for _, fields in rows:
        aerial_rel, ground_rel = fields[0], fields[1]
        if aerial == "polar":
            aerial_rel = polar_path(aerial_rel)
        pairs.append(
            Pair(
                ground_path=os.path.join(root, ground_rel),
                aerial_path=os.path.join(root, aerial_rel),
                id=os.path.splitext(os.path.basename(fields[0]))[0],
            )
        )
    if aerial == "polar" and pairs and not os.path.isdir(os.path.join(root, "polarmap")):
        # Individual missing maps are faults like any missing image; no polarmap/ at all is a forgotten step.
        raise CvmError(f"{os.path.join(root, 'polarmap')} not found: the precomputed polar maps are written by "
                       f"`cvm data polar --dataset cvusa --root {root}` (or drop --precomputed_polar to transform "
                       "on the fly)")
    return Split(
        dataset="cvusa",
        name=split,
        root=root,
        pairs=pairs,
        location_kind=None,
        ground_rows=None,
        source=sources.source("cvusa").origin,
    )


def polar_path(aerial_rel: str) -> str:
    """bingmap/19/NNNNNNN.jpg -> polarmap/19/NNNNNNN.png, where `cvm data polar` writes SAFA's polar map."""
    parts = aerial_rel.replace("\\", "/").split("/")
    if parts[0] == "bingmap":
        parts[0] = "polarmap"
    else:  # an aerial outside bingmap/: its polar map sits under polarmap/ with the same relative path
        parts.insert(0, "polarmap")
    parts[-1] = os.path.splitext(parts[-1])[0] + ".png"
    return os.path.join(*parts)

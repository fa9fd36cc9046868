"""CVUSA ("CVPR subset") adapter: split CSVs -> `Split` of (panorama, aerial) pairs.

Root layout: bingmap/19/NNNNNNN.jpg (aerial, 750x750), streetview/panos/NNNNNNN.jpg (panorama,
224 high x 1232 wide), splits/train-19zl.csv and splits/val-19zl.csv. Each CSV row is
`aerial,panorama,annotation` with paths relative to the root; the annotation png is not used by
retrieval and may be missing. Ground truth is positional (row i's panorama matches row i's aerial
image). Coordinates (lat, lon) come from split_locations/all.csv when it is there (`attach_locations`).

`read_split_list` is the one reader of CVUSA lists: the official CSVs, Regmi & Shah's X-Fork lists
(XFORK_SPLIT_FILES) and any list a user names; retrieval (`load_cvusa`) and synthesis
(`cvm.data.synthesis.adapters.load_cvusa_synthesis`) both read through it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from cvm.data import sources
from cvm.data.records import Pair, Split
from cvm.errors import CvmError

# Split name -> CSV under splits/. The published "test" results are on val-19zl.csv.
SPLIT_FILES = {"train": "train-19zl.csv", "val": "val-19zl.csv", "test": "val-19zl.csv"}
SPLITS = ("train", "val")
# Aerial images the pairs point at: the Bing tiles, or SAFA's polar maps (`cvm data polar`).
AERIAL_KINDS = ("bingmap", "polar")
# Coordinates of every CVUSA image (the release's split_locations/, in the CVPR_subset archive too); optional.
LOCATIONS_FILE = os.path.join("split_locations", "all.csv")

_SPLITS_ORIGIN = "comes with the CVPR_subset archive (splits.tar.gz) that the CVUSA authors send on request"

# Regmi & Shah's lists for the panorama -> aerial X-Fork (ICCV 2019): CVUSA has no aerial segmentation
# maps, so train_xfork_pano2aerial.lua (and its _with_edgemap twin) read rows "aerial, panorama, aerial
# segmentation map" (paths relative to the CVPR_subset root; csvigo, comma-separated) from
# splits/train_xfork_cvusa.txt and take the target map from column 3. The file is not in either of Regmi's
# repositories. The original validates nothing and its test script reads val-19zl.csv without maps, so
# the validation list has no original: val_xfork_cvusa.txt is cvm's name for it, in the same format.
XFORK_SPLIT_FILES = {"train": "train_xfork_cvusa.txt", "val": "val_xfork_cvusa.txt"}
# In a --split_file name, "{split}" stands for the split read ("train" or "val"; "test" reads "val").
SPLIT_PLACEHOLDER = "{split}"


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
      Split(dataset="cvusa", location_kind="latlon" with split_locations/all.csv else None) whose pairs carry absolute paths
      and id = file stem of the aerial image. Pairs are listed even if their files are missing
      (`cvm data check` reports those).

    Raises:
      CvmError: unknown split name, missing root or split file, malformed CSV row, or aerial="polar"
        without a polarmap/ folder.
    """
    canonical_split(split)
    if aerial not in AERIAL_KINDS:
        raise CvmError(f"Unknown CVUSA aerial kind {aerial!r}; valid kinds: {', '.join(map(repr, AERIAL_KINDS))}.")
    root, rows = read_split_list(root, split)
    pairs = []
    for fields in rows:
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
    located = attach_locations(root, pairs)
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
        location_kind="latlon" if located else None,
        ground_rows=None,
        source=sources.source("cvusa").origin,
    )


def attach_locations(root: str, pairs: list) -> bool:
    """Give each pair its (lat, lon) from ROOT/split_locations/all.csv when that file is there; True if it was.

    The CVUSA release's all.csv has one row per image id (row id - 1), its first two columns the aerial
    tile's latitude and longitude (modern.md §2: Sample4Geo's GPS batches come from it). Without the file the
    split has no coordinates (location_kind None); a file that lacks a pair's row, or a row that is not
    numbers, is an error naming the file and the row.
    """
    path = os.path.join(root, LOCATIONS_FILE)
    if not pairs or not os.path.isfile(path):
        return False
    with open(path, newline="") as f:
        rows = [line.strip() for line in f]
    for k, pair in enumerate(pairs):
        if not pair.id.isdigit() or not 1 <= int(pair.id) <= len(rows):
            raise CvmError(f"{path} has no row for CVUSA image {pair.id!r} (row = id - 1, {len(rows)} rows): use the "
                           "release's complete all.csv, or remove it to train without coordinates")
        row = int(pair.id) - 1
        fields = rows[row].split(",")
        try:
            lat, lon = float(fields[0]), float(fields[1])
        except (ValueError, IndexError):
            raise CvmError(f"{path}, row {row + 1}: expected 'lat,lon,...' numbers, got {rows[row][:80]!r}") from None
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            raise CvmError(f"{path}, row {row + 1}: ({lat}, {lon}) is not a latitude / longitude in degrees")
        pairs[k] = dataclasses.replace(pair, location=(lat, lon))
    return True


def polar_path(aerial_rel: str) -> str:
    """bingmap/19/NNNNNNN.jpg -> polarmap/19/NNNNNNN.png, where `cvm data polar` writes SAFA's polar map."""
    parts = aerial_rel.replace("\\", "/").split("/")
    if parts[0] == "bingmap":
        parts[0] = "polarmap"
    else:  # an aerial outside bingmap/: its polar map sits under polarmap/ with the same relative path
        parts.insert(0, "polarmap")
    parts[-1] = os.path.splitext(parts[-1])[0] + ".png"
    return os.path.join(*parts)


def canonical_split(split: str) -> str:
    """The list a split name reads, "train" or "val" ("test" reads "val"); a CvmError for another name."""
    if split not in SPLIT_FILES:
        raise CvmError(f"Unknown CVUSA split {split!r}; valid splits: 'train', 'val', 'test' (alias of 'val').")
    return "train" if split == "train" else "val"


def split_list_path(split: str, split_file: Optional[str] = None, xfork: bool = False) -> str:
    """The list a split reads, relative to the root (or absolute, as a user's split_file may be).

    split_file given: that file, "{split}" (SPLIT_PLACEHOLDER) replaced by "train" or "val". Otherwise
    xfork: Regmi's splits/train_xfork_cvusa.txt / val_xfork_cvusa.txt (XFORK_SPLIT_FILES); else the
    official splits/train-19zl.csv / val-19zl.csv.
    """
    canonical = canonical_split(split)
    if split_file is not None:
        return str(split_file).replace(SPLIT_PLACEHOLDER, canonical)
    if xfork:
        return os.path.join("splits", XFORK_SPLIT_FILES[canonical])
    return os.path.join("splits", SPLIT_FILES[split])


def read_split_list(root: str, split: str, fields: tuple = ("aerial", "ground"), split_file: Optional[str] = None,
                    xfork: bool = False) -> tuple:
    """(root, rows) of the list `split_list_path(split, split_file, xfork)` names under the CVUSA root.

    Each row is the tuple of its comma-separated fields (paths relative to the root); `fields` names the
    leading ones every row must have (e.g. ("aerial", "ground", "segmentation map") for a list whose
    third column is read). A missing root or list, or a malformed row, is a CvmError saying where the
    file comes from and what to do.
    """
    rel = split_list_path(split, split_file, xfork)
    root = sources.require_root("cvusa", root)
    path = os.path.join(root, rel)
    if not os.path.isfile(path):
        if split_file is not None:
            raise sources.missing_file_error("cvusa", path, "split file", f"is the list --split_file names ({split_file})")
        if xfork:
            raise _missing_xfork_list(path, split)
        raise sources.missing_file_error("cvusa", path, "split file", _SPLITS_ORIGIN)
    official = split_file is None and not xfork
    restore = "restore the original file from the CVPR_subset splits.tar.gz" if official else \
        "restore the file or fix the row"
    return root, [tuple(row) for _, row in sources.read_split_rows("cvusa", path, fields, restore)]


def _missing_xfork_list(path: str, split: str) -> CvmError:
    if canonical_split(split) == "train":
        origin = ("is Regmi & Shah's list for the panorama -> aerial X-Fork: train_xfork_pano2aerial.lua in "
                  "github.com/kregmi/cross-view-image-matching (xview-synthesis/) reads each aerial's segmentation "
                  "target from its column 3 (rows: aerial, panorama, aerial segmentation map, relative to the CVUSA "
                  "root); CVUSA has no aerial maps and the list is not published in that repository (ask its "
                  "author, or write one in that format)")
    else:
        origin = ("is the validation twin of Regmi & Shah's train_xfork_cvusa.txt (rows: aerial, panorama, aerial "
                  "segmentation map): the original validates nothing and its test script reads val-19zl.csv "
                  "without maps, so this is cvm's name for it; write one in that format, or leave --val_split empty")
    return CvmError(f"CVUSA split file not found: {os.path.abspath(path)}. It {origin}. Point --split_file at the "
                    f"list (relative to --root or absolute; '{SPLIT_PLACEHOLDER}' in the name stands for train / val), "
                    "or pass --aerial_seg_dir=DIR to read DIR/<aerial stem>.png beside the official CSVs; "
                    "see README 'Cross-view synthesis'.")

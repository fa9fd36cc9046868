"""VIGOR adapter (Zhu et al., CVPR 2021, github.com/Jeff-Zilence/VIGOR): label lists -> `VigorSplit`.

Released layout (data/DATASET.md of the VIGOR repository):

    <City>/panorama/<prefix>,<lat>,<lon>,.jpg      2048 x 1024 panoramas, north-aligned
    <City>/satellite/satellite_<lat>_<lon>.png     640 x 640 aerial tiles (Google zoom 20), tile centre in the name
    splits/<City>/satellite_list.txt               every tile of the city: the reference set
    splits/<City>/same_area_balanced_train.txt     same-area training queries
    splits/<City>/same_area_balanced_test.txt      same-area test queries
    splits/<City>/pano_label_balanced.txt          every query of the city (the cross-area lists)

for City in Chicago, NewYork, SanFrancisco, Seattle. The splits/ folder is a separate archive
(splits.zip) that users often lack (VIGOR issue #15). Each label line is

    <panorama> <tile_1> <dy_1> <dx_1> <tile_2> <dy_2> <dx_2> <tile_3> <dy_3> <dx_3> <tile_4> <dy_4> <dx_4>

tile_1 the positive, tiles 2-4 the semi-positives (the tiles overlap by half, so every query lies in
four of them), each with the pixel offset of the query in that 640-px tile: the query sits at row
320 + dy and column 320 - dx (dy > 0: south of the centre; dx > 0: west of it), as VIGOR's
dataloader.py / evaluate_from_npy.py and SliceMatch's loader read it.

Protocols (VIGOR dataloader.py, Sample4Geo sample4geo/dataset/vigor.py): same-area trains and tests
on all four cities (same_area_balanced_{train,test}.txt); cross-area trains on NewYork + Seattle and
tests on SanFrancisco + Chicago (pano_label_balanced.txt of those cities). The references of a split
are every tile of satellite_list.txt of its cities (in city order, then file order), a larger set than
the queries (~90k tiles against ~50k test queries same-area).

Label versions (`labels=`), recorded in every results JSON:
  * "original": splits/<City>/<list>.txt as released; offsets computed with VIGOR's 0.114 m/px, which
    SliceMatch and users (VIGOR issues #2, #14) found wrong;
  * "corrected": SliceMatch's corrected lists (github.com/tudelft-iv/SliceMatch, VIGOR_corrected_labels):
    splits__corrected/<City>/<list>__corrected.txt, same line format, satellite_list.txt unchanged;
    the FG2 / CCVPE / HC-Net loaders read these;
  * "mercator": the tiles of the original lists, offsets recomputed from the GPS in the file names
    with the Web-Mercator projection at zoom 20 (what HC-Net's Mercator.py does; nothing to download).
`splits_dir=` points at another folder holding <City>/<list> files in the chosen version's names (a
user-made label set in the same format).

`Pair.aerial_path` is the positive tile, so the training pipelines read (panorama, positive) pairs as
TransGeo and Sample4Geo train (semi-positives only enter the hit rate); the evaluation reads the
reference set and the semi-positives from the split (`cvm.evaluation.vigor`).
"""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import numpy as np

from cvm.data import sources
from cvm.data.records import Pair, Split, read_bgr
from cvm.errors import CvmError

CITIES = ("Chicago", "NewYork", "SanFrancisco", "Seattle")
AREAS = ("same", "cross")
# Cross-area: train on New York + Seattle, test on San Francisco + Chicago (VIGOR dataloader.py).
CROSS_AREA_CITIES = {"train": ("NewYork", "Seattle"), "test": ("SanFrancisco", "Chicago")}
# VIGOR has no validation split: the originals validate on the test lists; "val" is that alias.
SPLIT_NAMES = ("train", "val", "test")
LABELS = ("original", "corrected", "mercator")
PANORAMA_SIZE = (1024, 2048)  # (h, w)
TILE_SIZE = (640, 640)
TILE_HALF = 320.0  # offsets are measured from the tile centre in pixels of the 640-px tile
ZOOM = 20  # the tiles are Google Static Maps zoom 20 (Web Mercator, 256-px tiles at scale 1)
VIGOR_METRES_PER_PIXEL = 0.114  # VIGOR's figure (evaluate_from_npy.py), disputed in its issue #14
VIGOR_EARTH_RADIUS_M = 6371004.0  # VIGOR's gps2distance / Lat_Lng radius
MERCATOR_EARTH_RADIUS_M = 6378137.0  # WGS84 semi-major axis: the Web-Mercator sphere
SATELLITE_LIST = "satellite_list.txt"
LIST_NAMES = {"train": "same_area_balanced_train", "test": "same_area_balanced_test", "all": "pano_label_balanced"}
SPLITS_FOLDERS = {"original": "splits", "corrected": "splits__corrected", "mercator": "splits"}
LIST_SUFFIX = {"original": "", "corrected": "__corrected", "mercator": ""}

_SPLITS_ORIGIN = ("is part of VIGOR's split archive (splits.zip), a separate download from the images that the "
                  "VIGOR authors send with the dataset (github.com/Jeff-Zilence/VIGOR data/DATASET.md; issue #15)")
_CORRECTED_ORIGIN = ("is SliceMatch's corrected VIGOR labels (github.com/tudelft-iv/SliceMatch, folder "
                     "VIGOR_corrected_labels/splits__corrected): copy that folder into the VIGOR root, pass "
                     "--vigor_splits_dir, or use labels 'original' / 'mercator'")

SOURCE = sources.DatasetSource(
    title="VIGOR",
    origin=("The VIGOR dataset (Zhu, Yang & Chen, 'VIGOR: Cross-View Image Geo-localization beyond One-to-one "
            "Retrieval', CVPR 2021) is obtained through the questionnaire linked from "
            "github.com/Jeff-Zilence/VIGOR data/DATASET.md; the label lists are its separate splits archive, and "
            "SliceMatch's corrected labels are in github.com/tudelft-iv/SliceMatch VIGOR_corrected_labels."),
    expected_files=(
        ("<City>/panorama/<prefix>,<lat>,<lon>,.jpg", "panoramas, 2048 wide x 1024 high"),
        ("<City>/satellite/satellite_<lat>_<lon>.png", "aerial tiles, 640x640"),
        ("splits/<City>/satellite_list.txt", "the tiles of the city (the reference set)"),
        ("splits/<City>/same_area_balanced_{train,test}.txt", "same-area queries with 1 positive + 3 semi-positives"),
        ("splits/<City>/pano_label_balanced.txt", "every query of the city (cross-area)"),
        ("splits__corrected/<City>/*__corrected.txt", "SliceMatch's corrected labels (optional)"),
    ),
    root_hint="the VIGOR folder holding Chicago/, NewYork/, SanFrancisco/, Seattle/ and splits/",
)


class VigorSplit(Split):
    """A VIGOR split: pairs (panorama, positive tile) plus the reference set and the semi-positives.

    Attributes beyond `Split`'s:
      area: "same" or "cross"; labels: the label version (LABELS); label_files: the lists read.
      cities: the cities of the split, in order; pair_cities: [N] city name of each pair.
      reference_paths / reference_ids ("<City>/<tile file>"): the R tiles of satellite_list.txt.
      positives: int64 [N] index of each pair's positive in the references.
      semi_positives: int64 [N, 3] indices of its semi-positives.
      offsets: float64 [N, 4, 2] (dy, dx) pixel offsets of the query in the positive then the semi-positives.
    Locations are (lat, lon) of the panoramas (location_kind "latlon"); `reference_locations()` the tile centres.
    """

    def reference_locations(self) -> np.ndarray:
        """[R, 2] float64 (lat, lon) of the tile centres, from the tile file names."""
        return np.asarray([tile_latlon(os.path.basename(p)) for p in self.reference_paths], np.float64).reshape(-1, 2)

    def read_reference(self, j: int) -> Optional[np.ndarray]:
        return read_bgr(self.reference_paths[j])

    @property
    def offset_convention(self) -> str:
        """How pixel offsets map to GPS for these labels: "vigor" (0.114 m/px) or "mercator" (zoom 20)."""
        return "vigor" if self.labels == "original" else "mercator"

    def subset(self, indices: Sequence[int], name: Optional[str] = None) -> "VigorSplit":
        clone = super().subset(indices, name)
        index = np.asarray(list(indices), np.int64)
        clone.positives = self.positives[index]
        clone.semi_positives = self.semi_positives[index]
        clone.offsets = self.offsets[index]
        clone.pair_cities = [self.pair_cities[i] for i in index]
        return clone


def list_path(root: str, city: str, which: str, labels: str, splits_dir: Optional[str] = None) -> str:
    """The label list `which` ("train", "test", "all" or "satellite") of a city in a label version."""
    folder = splits_dir or os.path.join(root, SPLITS_FOLDERS[labels])
    if which == "satellite":
        return os.path.join(folder, city, SATELLITE_LIST)
    return os.path.join(folder, city, LIST_NAMES[which] + LIST_SUFFIX[labels] + ".txt")


def split_cities(split: str, area: str) -> tuple:
    """The cities whose queries and tiles form a split (same-area: all four; cross-area: two)."""
    if area == "same":
        return CITIES
    return CROSS_AREA_CITIES["train" if split == "train" else "test"]


def required_lists(root: str, split: str, area: str, labels: str, splits_dir: Optional[str] = None) -> list:
    """[(path, what)] of every label list a split reads."""
    which = ("train" if split == "train" else "test") if area == "same" else "all"
    out = []
    for city in split_cities(split, area):
        out.append((list_path(root, city, "satellite", labels, splits_dir), f"{city} tile list"))
        out.append((list_path(root, city, which, labels, splits_dir), f"{city} {area}-area label list"))
    return out


def load_vigor(root: str, split: str, area: str = "same", labels: str = "original",
               splits_dir: Optional[str] = None) -> VigorSplit:
    """The queries of a VIGOR split with their positives, semi-positives, offsets and the reference set.

    Args:
      root: the VIGOR folder (holds <City>/panorama, <City>/satellite and splits/).
      split: "train" or "test" ("val" is an alias of "test": VIGOR has no validation lists).
      area: "same" (all four cities, same_area_balanced_{train,test}.txt) or "cross" (train NewYork +
        Seattle, test SanFrancisco + Chicago, pano_label_balanced.txt).
      labels: "original", "corrected" (SliceMatch) or "mercator" (offsets recomputed): see the module doc.
      splits_dir: a folder holding <City>/<list> files in the chosen version's names, instead of the
        version's folder under the root.

    Returns:
      VigorSplit(dataset="vigor", location_kind="latlon"): pairs in list order (cities in CITIES
      order for same-area, the protocol's order for cross-area), id "<City>/<panorama file>".
      Pairs are listed even if their images are missing (`cvm data check` reports those).

    Raises:
      CvmError: unknown split / area / labels, missing root or list, malformed line, or a label
        naming a tile that is not in the city's satellite_list.txt.
    """
    if split not in SPLIT_NAMES:
        raise CvmError(f"Unknown VIGOR split {split!r}; valid splits: 'train', 'test', 'val' (alias of 'test').")
    if area not in AREAS:
        raise CvmError(f"Unknown VIGOR area {area!r}; valid: 'same' (same-area) or 'cross' (cross-area).")
    if labels not in LABELS:
        raise CvmError(f"Unknown VIGOR label version {labels!r}; valid: {', '.join(map(repr, LABELS))}.")
    root = sources.require_root("vigor", root)
    if splits_dir is not None:
        splits_dir = os.path.abspath(os.path.expanduser(splits_dir))
        if not os.path.isdir(splits_dir):
            raise CvmError(f"VIGOR splits folder {splits_dir} (splits_dir / --vigor_splits_dir) not found: pass the "
                           f"folder that holds <City>/{SATELLITE_LIST} and the label lists")
    lists = required_lists(root, split, area, labels, splits_dir)
    for path, what in lists:
        if not os.path.isfile(path):
            origin = _CORRECTED_ORIGIN if labels == "corrected" and splits_dir is None else _SPLITS_ORIGIN
            raise sources.missing_file_error("vigor", path, what, origin)

    which = ("train" if split == "train" else "test") if area == "same" else "all"
    reference_paths, reference_ids, pairs, positives, semis, offsets, pair_cities = [], [], [], [], [], [], []
    for city in split_cities(split, area):
        tiles = _read_tile_list(list_path(root, city, "satellite", labels, splits_dir))
        base = len(reference_paths)
        index = {name: base + i for i, name in enumerate(tiles)}
        reference_paths += [os.path.join(root, city, "satellite", name) for name in tiles]
        reference_ids += [f"{city}/{name}" for name in tiles]
        label_file = list_path(root, city, which, labels, splits_dir)
        for lineno, pano, names, deltas in _read_labels(label_file):
            missing = [n for n in names if n not in index]
            if missing:
                raise CvmError(f"VIGOR label list {label_file}, line {lineno}: tile {missing[0]} is not in "
                               f"{list_path(root, city, 'satellite', labels, splits_dir)}; the two files come from "
                               "different label sets: restore both from the same splits archive")
            try:
                lat, lon = pano_latlon(pano)
            except CvmError as e:
                raise CvmError(f"VIGOR label list {label_file}, line {lineno}: {e}") from None
            ids = [index[n] for n in names]
            if labels == "mercator":
                centres = np.asarray([tile_latlon(n) for n in names], np.float64)
                deltas = mercator_offsets(np.array([[lat, lon]]), centres)
            pairs.append(Pair(ground_path=os.path.join(root, city, "panorama", pano),
                              aerial_path=reference_paths[ids[0]], id=f"{city}/{pano}", location=(lat, lon)))
            positives.append(ids[0])
            semis.append(ids[1:])
            offsets.append(deltas)
            pair_cities.append(city)
    result = VigorSplit(dataset="vigor", name=split, root=root, pairs=pairs, location_kind="latlon",
                        source=SOURCE.origin)
    result.area = area
    result.labels = labels
    result.label_files = [path for path, _ in lists]
    result.cities = split_cities(split, area)
    result.pair_cities = pair_cities
    result.reference_paths = reference_paths
    result.reference_ids = reference_ids
    result.positives = np.asarray(positives, np.int64).reshape(-1)
    result.semi_positives = np.asarray(semis, np.int64).reshape(-1, 3)
    result.offsets = np.asarray(offsets, np.float64).reshape(-1, 4, 2)
    return result


def _read_lines(path: str) -> list:
    try:
        with open(path, "r", encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise CvmError(f"VIGOR list {path} is not a UTF-8 text file ({e}); restore it from the splits archive.") \
            from None
    except OSError as e:
        raise CvmError(f"Cannot read VIGOR list {path}: {e.strerror or e}.") from None
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _read_tile_list(path: str) -> list:
    names = []
    for lineno, line in enumerate(_read_lines(path), start=1):
        name = line.strip()
        if not name or " " in name:
            raise CvmError(f"Malformed VIGOR tile list {path}, line {lineno}: expected one tile file name "
                           f"(satellite_<lat>_<lon>.png), got {line!r}; restore it from the splits archive.")
        names.append(name)
    return names


def _read_labels(path: str):
    """(line number, panorama, [4 tile names], [4, 2] offsets) per line of a label list."""
    for lineno, line in enumerate(_read_lines(path), start=1):
        fields = line.split()
        try:
            if len(fields) != 13:
                raise ValueError(f"{len(fields)} fields")
            names = [fields[1 + 3 * k] for k in range(4)]
            deltas = [[float(fields[2 + 3 * k]), float(fields[3 + 3 * k])] for k in range(4)]
        except ValueError as e:
            raise CvmError(f"Malformed VIGOR label list {path}, line {lineno}: expected 13 space-separated fields "
                           "(panorama, then 4 x (tile, dy, dx)), got " f"{e}: {line.strip()[:120]!r}; restore it "
                           "from the splits archive (or SliceMatch's corrected lists).") from None
        yield lineno, fields[0], names, np.asarray(deltas, np.float64)


# --- geometry --------------------------------------------------------------------------------------------

def pano_latlon(name: str) -> tuple:
    """(lat, lon) from a panorama file name `<prefix>,<lat>,<lon>,.jpg`."""
    parts = os.path.basename(name).split(",")
    try:
        return float(parts[1]), float(parts[2])
    except (IndexError, ValueError):
        raise CvmError(f"panorama name {name!r} is not <prefix>,<lat>,<lon>,.jpg") from None


def tile_latlon(name: str) -> tuple:
    """(lat, lon) of a tile centre from its file name `satellite_<lat>_<lon>.png`."""
    parts = os.path.splitext(os.path.basename(name))[0].split("_")
    try:
        return float(parts[1]), float(parts[2])
    except (IndexError, ValueError):
        raise CvmError(f"tile name {name!r} is not satellite_<lat>_<lon>.png") from None


def mercator_pixels(latlon, zoom: int = ZOOM) -> np.ndarray:
    """[..., 2] global Web-Mercator pixel (x east, y south) of (lat, lon), 256-px tiles (Google's projection)."""
    latlon = np.asarray(latlon, np.float64)
    world = 256.0 * (1 << int(zoom))
    x = (0.5 + latlon[..., 1] / 360.0) * world
    s = np.sin(np.deg2rad(latlon[..., 0]))
    y = (0.5 - np.log((1.0 + s) / (1.0 - s)) / (4.0 * np.pi)) * world
    return np.stack([x, y], axis=-1)


def mercator_latlon(pixels, zoom: int = ZOOM) -> np.ndarray:
    """Inverse of `mercator_pixels`: [..., 2] (lat, lon)."""
    pixels = np.asarray(pixels, np.float64)
    world = 256.0 * (1 << int(zoom))
    lon = (pixels[..., 0] / world - 0.5) * 360.0
    lat = np.rad2deg(2.0 * np.arctan(np.exp((0.5 - pixels[..., 1] / world) * 2.0 * np.pi)) - np.pi / 2.0)
    return np.stack([lat, lon], axis=-1)


def mercator_offsets(query_latlon, tile_latlon_) -> np.ndarray:
    """[..., 2] (dy, dx) offsets in VIGOR's convention of the queries in the tiles (Web Mercator, zoom 20).

    The query sits at row 320 + dy and column 320 - dx of the tile: dy = y_query - y_centre,
    dx = x_centre - x_query in zoom-20 pixels (HC-Net's Mercator.get_pixel, re-signed to VIGOR's labels).
    """
    q = mercator_pixels(query_latlon)
    c = mercator_pixels(tile_latlon_)
    return np.stack([q[..., 1] - c[..., 1], c[..., 0] - q[..., 0]], axis=-1)


def offset_latlon(centre_latlon, offsets, convention: str = "mercator",
                  metres_per_pixel: float = VIGOR_METRES_PER_PIXEL) -> np.ndarray:
    """[..., 2] (lat, lon) of the point at (dy, dx) offsets from tile centres (the inverse of the labels).

    convention "vigor": VIGOR's evaluate_from_npy.py (`Lat_Lng`): the tile's half width 320 px is
      320 * 0.114 m on a sphere of radius 6,371,004 m, and lat = lat_c - span_lat dy / 320,
      lon = lon_c - span_lon dx / 320; "mercator": the zoom-20 Web-Mercator pixel grid.
    """
    centre = np.asarray(centre_latlon, np.float64)
    offsets = np.asarray(offsets, np.float64)
    if convention == "mercator":
        c = mercator_pixels(centre)
        return mercator_latlon(np.stack([c[..., 0] - offsets[..., 1], c[..., 1] + offsets[..., 0]], axis=-1))
    if convention != "vigor":
        raise CvmError(f"offset convention must be 'vigor' or 'mercator', got {convention!r}")
    half = TILE_HALF * float(metres_per_pixel)
    lat_c = np.deg2rad(centre[..., 0])
    d_lat = np.arccos(np.cos(half / VIGOR_EARTH_RADIUS_M))
    # VIGOR's longitude span: arccos((cos(d/R) - sin^2 lat) / cos^2 lat), the same great-circle identity.
    d_lon = np.arccos((np.cos(half / VIGOR_EARTH_RADIUS_M) - np.sin(lat_c) ** 2) / np.cos(lat_c) ** 2)
    lat = centre[..., 0] - np.rad2deg(d_lat) * offsets[..., 0] / TILE_HALF
    lon = centre[..., 1] - np.rad2deg(d_lon) * offsets[..., 1] / TILE_HALF
    return np.stack([lat, lon], axis=-1)


def great_circle_m(a, b, radius_m: float = VIGOR_EARTH_RADIUS_M) -> np.ndarray:
    """Great-circle distance in metres between [..., 2] (lat, lon) arrays (haversine, VIGOR's radius).

    VIGOR's gps2distance takes arccos of the cosine rule, which in float64 loses ~0.1 m near zero
    distance (arccos(1 - e) ~ sqrt(2 e)); the haversine form gives the same distance, well conditioned.
    """
    a = np.deg2rad(np.asarray(a, np.float64))
    b = np.deg2rad(np.asarray(b, np.float64))
    h = (np.sin((b[..., 0] - a[..., 0]) / 2.0) ** 2
         + np.cos(a[..., 0]) * np.cos(b[..., 0]) * np.sin((b[..., 1] - a[..., 1]) / 2.0) ** 2)
    return 2.0 * radius_m * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def mercator_metres_per_pixel(lat: float, zoom: int = ZOOM) -> float:
    """Ground size of a zoom-`zoom` Web-Mercator pixel at latitude `lat` (0.111 m at Chicago for zoom 20)."""
    return 2.0 * math.pi * MERCATOR_EARTH_RADIUS_M * math.cos(math.radians(lat)) / (256.0 * (1 << int(zoom)))


# --- `cvm data check --dataset vigor` ---------------------------------------------------------------------

def check_vigor(root: str, *, splits: Optional[Sequence[str]] = None, limit: Optional[int] = None,
                workers: Optional[int] = None, progress: bool = False, area: Optional[str] = None,
                labels: str = "original", splits_dir: Optional[str] = None):
    """Check a VIGOR folder: which cities / image folders / label lists are missing, then every file.

    Without `area` both protocols are checked (same-area train/test, cross-area train/test). Missing
    label lists (the splits archive, VIGOR #15; SliceMatch's folder for labels="corrected") are named
    file by file before any image is looked at; each split then checks its panoramas, its reference
    tiles and their sizes (2048 x 1024, 640 x 640). Returns a `cvm.data.check.DatasetReport`.
    """
    from cvm.data import check as check_lib

    names = tuple(splits) if splits else ("train", "test")
    for name in names:
        if name not in SPLIT_NAMES:
            raise CvmError(f"Unknown vigor split {name!r}; valid splits: {', '.join(SPLIT_NAMES)}.")
    if area is not None and area not in AREAS:
        raise CvmError(f"Unknown VIGOR area {area!r}; valid: 'same' or 'cross'.")
    if labels not in LABELS:
        raise CvmError(f"Unknown VIGOR label version {labels!r}; valid: {', '.join(map(repr, LABELS))}.")
    if limit is not None and int(limit) < 1:
        raise CvmError(f"The check limit must be a positive number of pairs, got {limit}.")
    root = sources.require_root("vigor", root)
    notes = []
    absent_cities = [c for c in CITIES if not os.path.isdir(os.path.join(root, c))]
    for city in CITIES:
        for folder in ("panorama", "satellite"):
            path = os.path.join(root, city, folder)
            if city not in absent_cities and not os.path.isdir(path):
                notes.append(f"{path} not found: the {city} {folder} images are missing")
    if absent_cities:
        notes.append(f"city folder(s) missing under {root}: {', '.join(absent_cities)} (each holds panorama/ and "
                     "satellite/ from the VIGOR image archives)")
    areas = (area,) if area else AREAS
    lists = []
    for a in areas:
        for name in names:
            for path, what in required_lists(root, name, a, labels, splits_dir):
                if (path, what) not in lists:
                    lists.append((path, what))
    absent_lists = [path for path, _ in lists if not os.path.isfile(path)]
    if absent_lists:
        folder = splits_dir or os.path.join(root, SPLITS_FOLDERS[labels])
        origin = _CORRECTED_ORIGIN if labels == "corrected" and splits_dir is None else _SPLITS_ORIGIN
        shown = "; ".join(absent_lists[:8]) + (f"; ... and {len(absent_lists) - 8} more" if len(absent_lists) > 8
                                               else "")
        what = (f"the folder {folder} does not exist" if not os.path.isdir(folder)
                else f"{len(absent_lists)} of the {len(lists)} lists under {folder}")
        notes.insert(0, f"VIGOR label lists missing ({what}): {shown}. Each {origin}.")

    reports = []
    for a in areas:
        for name in names:
            label = f"{a}-area {name}"
            try:
                split = load_vigor(root, name, area=a, labels=labels, splits_dir=splits_dir)
            except CvmError as e:
                reports.append(check_lib.SplitReport(dataset="vigor", name=label, error=str(e)))
                continue
            count = len(split) if limit is None else min(len(split), int(limit))
            report = check_lib.SplitReport(dataset="vigor", name=label, pairs=len(split), checked_pairs=count,
                                           sizes_checked=True)
            files = {}
            for i in range(count):
                files.setdefault(split[i].ground_path, "ground")
            # Every reference tile (the gallery), or with a limit the four tiles of each checked query.
            tiles = (range(len(split.reference_paths)) if limit is None else
                     sorted({int(j) for i in range(count) for j in (split.positives[i], *split.semi_positives[i])}))
            for j in tiles:
                files.setdefault(split.reference_paths[j], "aerial")
            check_lib._check_files(report, files, {"ground": PANORAMA_SIZE, "aerial": TILE_SIZE}, workers, progress,
                                   f"vigor/{label}")
            reports.append(report)
    errors = {r.error for r in reports}
    shared = errors.pop() if len(errors) == 1 and len(reports) > 1 and None not in errors else None
    return check_lib.DatasetReport(dataset="vigor", root=root, splits=reports, limit=limit, error=shared, notes=notes)

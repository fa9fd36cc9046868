"""Write the synthetic world as a CVUSA- or CVACT-shaped dataset folder (official names and sizes).

CVUSA:
    bingmap/19/{id}.jpg              750x750 north-up aerial, ~0.23 m/px (172.5 m across)
    streetview/panos/{id}.jpg        1232x224 panorama (vertical fov 224/1232*360 deg around the horizon)
    streetview/annotations/{id}.png  1232x224 colour segmentation map of the panorama (CVUSA's own
                                     street-view annotation folder, the third CSV column)
    bingmap/annotations/{id}.png     750x750 colour segmentation map of the aerial (CVUSA has none)
    split_locations/all.csv          "lat,lon,lat,lon" of aerial and panorama, row = id - 1 (the world's
                                     metres on a tangent plane in Kansas: `world_to_latlon`)
    splits/train-19zl.csv, splits/val-19zl.csv
        rows "bingmap/19/{id}.jpg,streetview/panos/{id}.jpg,streetview/annotations/{id}.png" (no header)
    splits/train_xfork_cvusa.txt, splits/val_xfork_cvusa.txt (with the maps)
        rows "bingmap/19/{id}.jpg,streetview/panos/{id}.jpg,bingmap/annotations/{id}.png": the format
        of Regmi's list for the panorama -> aerial X-Fork (column 3: the aerial map), which
        cvm.data.synthesis reads for ground -> aerial as it reads the real one
    Segmentation maps colour each pixel by its class with dataset.SEG_COLOURS_RGB (ground, road,
    building, tree, sky = Cityscapes terrain, road, building, vegetation, sky colours); PNG, so the
    colours stay exact. segmaps=False leaves them out (the retrieval loaders never read them).
CVACT (as distributed, ANU_data_small):
    streetview/{panoId}_grdView.jpg               1664x832 full equirectangular panorama
    satview_polish/{panoId}_satView_polish.jpg    1200x1200 aerial, same 172.5 m coverage
    ACT_data.mat                                  see `write_act_data`
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import time
from typing import Optional

import cv2
import numpy as np
import scipy.io

from cvm.data.parallel import progress_bar
from cvm.data.synthetic.dataset import AERIAL_EXTENT_M, colour_segmap, shared_world, split_counts
from cvm.data.synthetic.render import render_aerial, render_panorama
from cvm.data.synthetic.world import World, world_size_for
from cvm.errors import CvmError

LAYOUTS = ("cvusa", "cvact", "vigor")  # vigor: cvm.data.synthetic.vigor_layout
JPEG_QUALITY = 95
# Fixed offset that makes world metres look like UTM zone 55 coordinates around Canberra.
UTM_OFFSET = (690000.0, 6090000.0)
# Folders of the CVUSA-layout segmentation maps (see the module docstring).
GROUND_SEG_DIR = os.path.join("streetview", "annotations")
AERIAL_SEG_DIR = os.path.join("bingmap", "annotations")
_PANO_ID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))

# Per layout: final (width, height) of panorama and aerial, the render size (rendered smaller and
# upsampled with cv2.resize, ~4x cheaper), and the panorama's vertical fov.
_SPECS = {
    "cvusa": dict(pano=(1232, 224), pano_render=(616, 112), vfov=224 / 1232 * 360.0, aerial=750, aerial_render=375),
    "cvact": dict(pano=(1664, 832), pano_render=(832, 416), vfov=180.0, aerial=1200, aerial_render=400),
}


def render_pair(world: World, xy, layout: str, segmaps: bool = False):
    """(panorama, aerial) BGR uint8 at the layout's official sizes for one location.

    segmaps=True: (panorama, aerial, panorama segmap, aerial segmap); the class maps are rendered with
    the images and enlarged with nearest neighbour, so every map pixel is one class colour.
    """
    spec = _SPECS[layout]
    (pw, ph), (rw, rh) = spec["pano"], spec["pano_render"]
    pano = render_panorama(world, xy, height_px=rh, width_px=rw, vfov_deg=spec["vfov"], with_classes=segmaps)
    size = spec["aerial_render"]
    aerial = render_aerial(world, xy, size_px=size, metres_per_pixel=AERIAL_EXTENT_M / size, with_classes=segmaps)
    if segmaps:
        (pano, pano_classes), (aerial, aerial_classes) = pano, aerial
    pano = cv2.resize(pano, (pw, ph), interpolation=cv2.INTER_LINEAR)
    aerial = cv2.resize(aerial, (spec["aerial"], spec["aerial"]), interpolation=cv2.INTER_LINEAR)
    if not segmaps:
        return pano, aerial
    pano_seg = cv2.resize(colour_segmap(pano_classes), (pw, ph), interpolation=cv2.INTER_NEAREST)
    aerial_seg = cv2.resize(colour_segmap(aerial_classes), (spec["aerial"], spec["aerial"]),
                            interpolation=cv2.INTER_NEAREST)
    return pano, aerial, pano_seg, aerial_seg


def pano_ids(n: int, seed: int) -> list:
    """n distinct 22-character Google-style pano ids ([A-Za-z0-9-_]), deterministic from the seed."""
    rng = np.random.default_rng([int(seed), 0xAC7])
    ids, seen = [], set()
    while len(ids) < n:
        for row in _PANO_ID_ALPHABET[rng.integers(0, len(_PANO_ID_ALPHABET), (n - len(ids), 22))]:
            text = "".join(row)
            if text not in seen:
                seen.add(text)
                ids.append(text)
    return ids


def write_act_data(path: str, ids: list, locations: np.ndarray, n_train: int) -> None:
    """Write ACT_data.mat like the official one.

    Read back with m = scipy.io.loadmat(path):
      m['panoIds']                      [N] str array (a char matrix: every id has 22 characters)
      m['utm']                          [N, 2] float64 easting, northing in metres
      m['trainSet']['trainInd'][0][0]   [N_train, 1] 1-based indices into panoIds
      m['valSet']['valInd'][0][0]       [N_val, 1] 1-based validation indices
      m['valSetAll']['valInd'][0][0]    [N_val, 1] 1-based indices of all non-train pairs (CVACT_test)
    """
    n = len(ids)
    indices = np.arange(1, n + 1, dtype=np.int64)[:, None]
    utm = np.asarray(locations, np.float64) + np.asarray(UTM_OFFSET)
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {
        "panoIds": np.asarray(ids, dtype="<U22"),
        "utm": utm,
        "trainSet": {"trainInd": indices[:n_train]},
        "valSet": {"valInd": indices[n_train:]},
        "valSetAll": {"valInd": indices[n_train:]},
    }, do_compression=True)
    data = bytearray(buffer.getvalue())
    # The 116-byte descriptive header carries a creation time; fix it so the file is reproducible.
    data[:116] = b"MATLAB 5.0 MAT-file, written by cvm.data.synthetic".ljust(116, b" ")
    with open(path, "wb") as f:
        f.write(data)


# Where the synthetic world lies when written with degrees (CVUSA's all.csv): a point in Kansas, as CVUSA's USA.
CVUSA_ORIGIN_LATLON = (38.5, -98.0)
EARTH_RADIUS_M = 6371008.8


def world_to_latlon(xy: np.ndarray, origin=CVUSA_ORIGIN_LATLON) -> np.ndarray:
    """[N, 2] world metres (east, north) -> (lat, lon) degrees on a sphere, a local tangent plane at `origin`."""
    xy = np.asarray(xy, np.float64)
    lat = origin[0] + np.degrees(xy[:, 1] / EARTH_RADIUS_M)
    lon = origin[1] + np.degrees(xy[:, 0] / (EARTH_RADIUS_M * np.cos(np.radians(origin[0]))))
    return np.stack([lat, lon], axis=1)


def write_cvusa_locations(path: str, locations: np.ndarray) -> None:
    """split_locations/all.csv as the CVUSA release: row id - 1 = 'aerial lat,lon,ground lat,lon' (the same
    point here: the panorama is taken at the tile centre)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        for lat, lon in world_to_latlon(locations):
            f.write(f"{lat:.8f},{lon:.8f},{lat:.8f},{lon:.8f}\n")


def write_dataset(out_dir: str, layout: str, pairs: int, seed: int, val_fraction: float = 0.2, progress: bool = True,
                  workers: Optional[int] = None, segmaps: Optional[bool] = None) -> dict:
    """Render `pairs` locations of the world of `seed` into out_dir in the given layout; returns a summary.

    The first round(pairs (1 - val_fraction)) pairs are train, the rest val. Output bytes do not
    depend on `workers` (each pair is rendered independently from its location). segmaps (default:
    True for cvusa; CVACT has no maps) also writes the colour segmentation maps of both views.
    """
    layout = str(layout).lower()
    if layout not in LAYOUTS:
        raise CvmError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "vigor":  # four cities of half-overlapping tiles (pairs / 4 panoramas each; val = the test lists)
        from cvm.data.synthetic.vigor_layout import write_vigor_dataset

        if segmaps:
            raise CvmError("segmentation maps are written in the cvusa layout only (got layout 'vigor')")
        summary = write_vigor_dataset(out_dir, panoramas_per_city=max(2, int(pairs) // 4), seed=seed,
                                      progress=progress, workers=workers)
        n = sum(c["panoramas"] for c in summary["cities"].values())
        return {**summary, "layout": "vigor", "pairs": n, "train": n - n // 2, "val": n // 2, "segmaps": False}
    segmaps = (layout == "cvusa") if segmaps is None else bool(segmaps)
    if segmaps and layout != "cvusa":
        raise CvmError(f"segmentation maps are written in the cvusa layout only (got layout {layout!r})")
    n_train, n_val = split_counts(pairs, val_fraction)
    pairs = int(pairs)
    start = time.perf_counter()
    world = shared_world(seed, world_size_for(pairs))
    locations = world.sample_locations(pairs, seed=seed)

    if layout == "cvusa":
        names = [f"{i + 1:07d}" for i in range(pairs)]
        ground_files = [os.path.join("streetview", "panos", f"{x}.jpg") for x in names]
        aerial_files = [os.path.join("bingmap", "19", f"{x}.jpg") for x in names]
    else:
        names = pano_ids(pairs, seed)
        ground_files = [os.path.join("streetview", f"{x}_grdView.jpg") for x in names]
        aerial_files = [os.path.join("satview_polish", f"{x}_satView_polish.jpg") for x in names]
    folders = {os.path.dirname(f) for f in ground_files[:1] + aerial_files[:1]}
    if segmaps:
        folders |= {GROUND_SEG_DIR, AERIAL_SEG_DIR}
    for folder in folders:
        os.makedirs(os.path.join(out_dir, folder), exist_ok=True)

    def write_one(i: int) -> None:
        rendered = render_pair(world, locations[i], layout, segmaps=segmaps)
        outputs = [(ground_files[i], rendered[0]), (aerial_files[i], rendered[1])]
        if segmaps:
            outputs += [(os.path.join(GROUND_SEG_DIR, f"{names[i]}.png"), rendered[2]),
                        (os.path.join(AERIAL_SEG_DIR, f"{names[i]}.png"), rendered[3])]
        for rel, image in outputs:
            target = os.path.join(out_dir, rel)
            params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if rel.endswith(".jpg") else []
            if not cv2.imwrite(target, image, params):
                raise CvmError(f"could not write {target}: check that the folder is writable and has space")

    # Threads: cv2 (remap, resize, JPEG encoding) and numpy's large-array kernels release the GIL,
    # and threads share the one world instead of generating it per process.
    workers = max(1, int(workers if workers is not None else min(os.cpu_count() or 1, 8)))
    bar = progress_bar(pairs, f"synthetic {layout}", "pair", progress)
    try:
        if workers == 1:
            for i in range(pairs):
                write_one(i)
                bar.update(1)
        else:
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                for _ in pool.map(write_one, range(pairs)):
                    bar.update(1)
    finally:
        bar.close()

    if layout == "cvusa":
        os.makedirs(os.path.join(out_dir, "splits"), exist_ok=True)
        for split_name, rows in (("train-19zl.csv", range(n_train)), ("val-19zl.csv", range(n_train, pairs))):
            with open(os.path.join(out_dir, "splits", split_name), "w", newline="") as f:
                for i in rows:
                    f.write(f"bingmap/19/{names[i]}.jpg,streetview/panos/{names[i]}.jpg,"
                            f"streetview/annotations/{names[i]}.png\n")
        write_cvusa_locations(os.path.join(out_dir, "split_locations", "all.csv"), locations)
        if segmaps:  # Regmi's pano -> aerial lists (cvm.data.synthesis.XFORK_SPLIT_FILES)
            from cvm.data.synthesis import XFORK_SPLIT_FILES

            for split_name, rows in (("train", range(n_train)), ("val", range(n_train, pairs))):
                with open(os.path.join(out_dir, "splits", XFORK_SPLIT_FILES[split_name]), "w", newline="") as f:
                    for i in rows:
                        f.write(f"bingmap/19/{names[i]}.jpg,streetview/panos/{names[i]}.jpg,"
                                f"bingmap/annotations/{names[i]}.png\n")
    else:
        write_act_data(os.path.join(out_dir, "ACT_data.mat"), names, locations, n_train)
    return {"layout": layout, "pairs": pairs, "train": n_train, "val": n_val, "out_dir": os.path.abspath(out_dir),
            "segmaps": segmaps, "seconds": round(time.perf_counter() - start, 3)}

"""Write the synthetic world as a VIGOR-layout folder: off-centre queries in half-overlapping tiles.

One synthetic world per city (Chicago, NewYork, SanFrancisco, Seattle; world seed = seed * 16 + city
index), geo-referenced by a Web-Mercator zoom-20 pixel grid anchored at the real city's centre: world
metres map linearly to zoom-20 pixels (x east = +col, y north = -row, one pixel = the zoom-20 ground size
at that latitude), so a file's GPS and a tile's pixels agree as Google's tiles do. Per city:

    <City>/satellite/satellite_<lat>_<lon>.png   a grid x grid lattice of 640 x 640 tiles spaced 320 px (half a
                                                 tile, as VIGOR's), centre GPS in the name (repr, exact)
    <City>/panorama/<id>,<lat>,<lon>,.jpg        2048 x 1024 panoramas (GPS with 6 decimals, as VIGOR's),
                                                 at road locations inside the lattice's inner square, so each
                                                 lies in exactly four tiles; at most 2 per positive ("balanced")
    splits/<City>/satellite_list.txt, same_area_balanced_{train,test}.txt (alternate queries),
    pano_label_balanced.txt (all): the positive (nearest centre) then the three other tiles of the 2 x 2
        block, with (dy, dx) computed as VIGOR did (0.114 m/px, cvm.data.vigor.offset_latlon "vigor"),
        rounded to whole pixels as in the release;
    splits__corrected/<City>/*__corrected.txt and satellite_list.txt: the same tiles with the exact
        zoom-20 offsets (the role of SliceMatch's corrected labels: the original ones are off by the
        factor true m/px / 0.114, as the real ones are).
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import time
from typing import Optional

import cv2
import numpy as np

from cvm.data import vigor as vigor_data
from cvm.data.parallel import progress_bar
from cvm.data.synthetic.dataset import shared_world
from cvm.data.synthetic.render import render_aerial, render_panorama
from cvm.data.synthetic.write import JPEG_QUALITY, pano_ids
from cvm.errors import CvmError

# Anchor (lat, lon) of each city's world centre: the real cities, so the zoom-20 pixel size is theirs.
CITY_ANCHORS = {"Chicago": (41.8781, -87.6298), "NewYork": (40.7580, -73.9855),
                "SanFrancisco": (37.7749, -122.4194), "Seattle": (47.6062, -122.3321)}
WORLD_SIZE_M = 400.0
PANO_RENDER = (256, 512)  # (h, w) rendered, then enlarged to 1024 x 2048 (4x cheaper than full size)
TILE_RENDER = 320


class CityGrid:
    """World metres <-> zoom-20 Web-Mercator pixels of one synthetic city, and its tile lattice."""

    def __init__(self, city: str, grid: int, world_size_m: float = WORLD_SIZE_M):
        self.city = city
        self.anchor = vigor_data.mercator_pixels(np.asarray(CITY_ANCHORS[city], np.float64))
        self.mpp = vigor_data.mercator_metres_per_pixel(CITY_ANCHORS[city][0])
        self.centre_m = np.array([world_size_m / 2.0, world_size_m / 2.0])
        steps = (np.arange(grid) - (grid - 1) / 2.0) * vigor_data.TILE_HALF
        cols, rows = np.meshgrid(steps, steps)  # row-major lattice: north row first
        self.tile_pixels = self.anchor + np.stack([cols.ravel(), rows.ravel()], axis=1)

    def pixels(self, xy) -> np.ndarray:
        xy = np.asarray(xy, np.float64)
        return self.anchor + np.stack([(xy[..., 0] - self.centre_m[0]), -(xy[..., 1] - self.centre_m[1])],
                                      axis=-1) / self.mpp

    def metres(self, pixels) -> np.ndarray:
        d = (np.asarray(pixels, np.float64) - self.anchor) * self.mpp
        return self.centre_m + np.stack([d[..., 0], -d[..., 1]], axis=-1)


def vigor_offsets(query_latlon, tile_latlon) -> np.ndarray:
    """(dy, dx) as VIGOR computed them: GPS differences over the span of 320 * 0.114 m (inverse of offset_latlon)."""
    q, c = np.asarray(query_latlon, np.float64), np.asarray(tile_latlon, np.float64)
    unit = c - vigor_data.offset_latlon(c, np.ones(c.shape), "vigor")  # degrees per pixel at each centre
    return (c - q) / unit


def write_vigor_dataset(out_dir: str, *, panoramas_per_city: int = 8, grid: Optional[int] = None, seed: int = 0,
                        cities=vigor_data.CITIES, progress: bool = True, workers: Optional[int] = None) -> dict:
    """Render a VIGOR-layout folder (module docstring); returns a summary with per-city counts.

    grid: tiles per side of each city's lattice; default about sqrt(panoramas / 1.5) + 1 (at most 2
    panoramas per positive tile), with the world enlarged beyond 400 m when the lattice needs it.
    """
    if grid is None:
        grid = max(3, int(math.ceil(math.sqrt(panoramas_per_city / 1.5))) + 1)
    # The lattice plus the half tiles around it and the streets' 100 m margin; 0.12 m/px bounds every city.
    world_size = max(WORLD_SIZE_M, 10.0 * math.ceil(((grid + 1) * vigor_data.TILE_HALF * 0.12 + 200.0) / 10.0))
    if grid < 2:
        raise CvmError(f"the tile grid must be at least 2 x 2 (each query lies in four tiles), got {grid}")
    if panoramas_per_city < 2:
        raise CvmError(f"a city needs at least 2 panoramas (1 train, 1 test), got {panoramas_per_city}")
    start = time.perf_counter()
    jobs, summary = [], {"cities": {}, "out_dir": os.path.abspath(out_dir)}
    for k, city in enumerate(cities):
        if city not in vigor_data.CITIES:
            raise CvmError(f"unknown VIGOR city {city!r}; valid: {', '.join(vigor_data.CITIES)}")
        world_seed = int(seed) * 16 + k
        world = shared_world(world_seed, world_size)
        lattice = CityGrid(city, grid, world_size)
        tile_latlon = vigor_data.mercator_latlon(lattice.tile_pixels)
        tile_names = [f"satellite_{float(lat)!r}_{float(lon)!r}.png" for lat, lon in tile_latlon]
        queries = _place_queries(world, lattice, panoramas_per_city, world_seed)
        q_pixels = lattice.pixels(queries)
        q_latlon = vigor_data.mercator_latlon(q_pixels)
        names = [f"{pid},{lat:.6f},{lon:.6f},.jpg" for pid, (lat, lon) in zip(pano_ids(len(queries), world_seed),
                                                                               q_latlon)]
        original, corrected = [], []
        for i in range(len(queries)):
            four = _four_tiles(lattice, q_pixels[i], grid)
            exact = vigor_data.mercator_offsets(q_latlon[i][None], tile_latlon[four])
            vigor = vigor_offsets(q_latlon[i][None], tile_latlon[four])
            original.append(_label_line(names[i], [tile_names[j] for j in four], vigor))
            corrected.append(_label_line(names[i], [tile_names[j] for j in four], exact))
        for folder in ("panorama", "satellite"):
            os.makedirs(os.path.join(out_dir, city, folder), exist_ok=True)
        for version, lines in (("original", original), ("corrected", corrected)):
            split_dir = os.path.join(out_dir, vigor_data.SPLITS_FOLDERS[version], city)
            os.makedirs(split_dir, exist_ok=True)
            _write_text(os.path.join(split_dir, vigor_data.SATELLITE_LIST), tile_names)
            suffix = vigor_data.LIST_SUFFIX[version]
            _write_text(os.path.join(split_dir, f"{vigor_data.LIST_NAMES['all']}{suffix}.txt"), lines)
            _write_text(os.path.join(split_dir, f"{vigor_data.LIST_NAMES['train']}{suffix}.txt"), lines[0::2])
            _write_text(os.path.join(split_dir, f"{vigor_data.LIST_NAMES['test']}{suffix}.txt"), lines[1::2])
        jobs += [(world, "tile", lattice.metres(p), os.path.join(out_dir, city, "satellite", n), lattice.mpp)
                 for p, n in zip(lattice.tile_pixels, tile_names)]
        jobs += [(world, "pano", xy, os.path.join(out_dir, city, "panorama", n), None)
                 for xy, n in zip(queries, names)]
        summary["cities"][city] = {"panoramas": len(queries), "tiles": len(tile_names), "world_seed": world_seed,
                                   "world_size_m": world_size, "metres_per_pixel": lattice.mpp}

    workers = max(1, int(workers if workers is not None else min(os.cpu_count() or 1, 8)))
    bar = progress_bar(len(jobs), "synthetic vigor", "image", progress)
    try:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(_render_one, jobs):
                bar.update(1)
    finally:
        bar.close()
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary


def _place_queries(world, lattice: CityGrid, n: int, seed: int) -> np.ndarray:
    """n road locations strictly inside the lattice's inner square, at most 2 per nearest tile."""
    lo, hi = lattice.tile_pixels.min(axis=0), lattice.tile_pixels.max(axis=0)
    chosen, per_tile = [], {}
    for attempt in range(20):
        candidates = world.sample_locations(64 * n, seed=seed * 1000 + attempt, margin_m=20.0)
        pixels = lattice.pixels(candidates)
        inside = np.all((pixels > lo + 8.0) & (pixels < hi - 8.0), axis=1)
        for xy, p in zip(candidates[inside], pixels[inside]):
            nearest = int(np.argmin(np.sum((lattice.tile_pixels - p) ** 2, axis=1)))
            if per_tile.get(nearest, 0) >= 2:
                continue
            per_tile[nearest] = per_tile.get(nearest, 0) + 1
            chosen.append(xy)
            if len(chosen) == n:
                return np.asarray(chosen)
    raise CvmError(f"could not place {n} panoramas on the roads inside a {lattice.tile_pixels.shape[0]}-tile lattice "
                   "(at most 2 per tile); use fewer panoramas per city or a larger grid")


def _four_tiles(lattice: CityGrid, pixel, grid: int) -> list:
    """Indices of the 2 x 2 tiles containing a pixel: the nearest centre first (the positive), then the rest."""
    rel = (pixel - lattice.tile_pixels[0]) / vigor_data.TILE_HALF  # lattice units from the NW tile
    c0, r0 = int(np.clip(np.floor(rel[0]), 0, grid - 2)), int(np.clip(np.floor(rel[1]), 0, grid - 2))
    block = [r * grid + c for r in (r0, r0 + 1) for c in (c0, c0 + 1)]
    distance = [float(np.sum((lattice.tile_pixels[j] - pixel) ** 2)) for j in block]
    return [block[j] for j in np.argsort(distance, kind="stable")]


def _label_line(pano: str, tiles: list, offsets: np.ndarray) -> str:
    fields = [pano]
    for name, (dy, dx) in zip(tiles, offsets):
        fields += [name, f"{float(np.round(dy)):.1f}", f"{float(np.round(dx)):.1f}"]
    return " ".join(fields)


def _write_text(path: str, lines) -> None:
    with open(path, "w", newline="") as f:
        f.write("".join(f"{line}\n" for line in lines))


def _render_one(job) -> None:
    world, kind, xy, path, mpp = job
    if kind == "tile":
        image = render_aerial(world, xy, size_px=TILE_RENDER,
                              metres_per_pixel=vigor_data.TILE_SIZE[0] * mpp / TILE_RENDER)
        image = cv2.resize(image, vigor_data.TILE_SIZE[::-1], interpolation=cv2.INTER_LINEAR)
        params = []
    else:
        image = render_panorama(world, xy, height_px=PANO_RENDER[0], width_px=PANO_RENDER[1], vfov_deg=180.0)
        image = cv2.resize(image, vigor_data.PANORAMA_SIZE[::-1], interpolation=cv2.INTER_LINEAR)
        params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    if not cv2.imwrite(path, image, params):
        raise CvmError(f"could not write {path}: check that the folder is writable and has space")

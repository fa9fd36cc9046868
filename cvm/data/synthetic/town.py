"""Write the synthetic world as a geo-referenced town: one orthophoto GeoTIFF plus street-level photos.

    orthophoto.tif          the world's top view (RGB, deflate, tiled) in WGS84 / UTM zone 55S (EPSG:32755):
                            world metres + write.UTM_OFFSET, the same placement as the CVACT-layout writer
    panos/{id}.jpg          360-degree panoramas (north at the centre column, as the training pairs)
    photos/{id}.jpg         limited field-of-view photos (heading and FoV in the CSV)
    locations.csv           id,kind,file,easting,northing,lat,lon,heading_deg,fov_deg,world_x,world_y
    town.json               CRS, origin, pixel size, world seed and size, the files and counts

The world is cvm.data.synthetic's world of `seed` at `size_m` (default: the size the synthetic dataset of
`pairs` pairs renders, world_size_for(pairs)), so a model trained with `--dataset synthetic
--synthetic_seed SEED --synthetic_pairs PAIRS` has seen this town; the photo locations come from a
separate sampling stream (salted seed), so they are held out from that training set's locations.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Optional

import cv2
import numpy as np

from cvm.data.parallel import progress_bar
from cvm.data.synthetic.dataset import shared_world
from cvm.data.synthetic.render import render_panorama
from cvm.data.synthetic.world import DEFAULT_MARGIN_M, world_size_for
from cvm.data.synthetic.write import JPEG_QUALITY, UTM_OFFSET
from cvm.errors import CvmError

TOWN_CRS = "EPSG:32755"
# Salt of the photo-location stream: different from the dataset's (sample_locations salts the seed itself).
_PHOTO_SALT = 0x70A7


def write_town(out_dir: str, seed: int = 0, pairs: int = 1000, size_m: Optional[float] = None, panos: int = 50,
               photos: int = 50, pano_size=(128, 512), photo_fov_deg: float = 90.0, ortho_mpp: Optional[float] = None,
               margin_m: float = DEFAULT_MARGIN_M, progress: bool = True) -> dict:
    """Render the town of `seed` into out_dir; returns town.json's content.

    ortho_mpp: orthophoto pixel size in metres (default the world raster's 0.4 m, written as is;
    larger values are INTER_AREA-downsampled). Panoramas are pano_size (height, width); photos keep
    the panorama's angular resolution, round(width * fov / 360) columns.
    """
    import rasterio
    from pyproj import Transformer
    from rasterio.transform import from_origin

    size = float(size_m) if size_m else world_size_for(pairs)
    world = shared_world(int(seed), size)
    os.makedirs(out_dir, exist_ok=True)
    top = np.ascontiguousarray(world.top[..., ::-1])  # BGR -> RGB bands
    mpp = float(ortho_mpp or world.resolution_m)
    if mpp < world.resolution_m - 1e-9:
        raise CvmError(f"--ortho_mpp {mpp} is finer than the world raster ({world.resolution_m} m/px)")
    if abs(mpp - world.resolution_m) > 1e-9:
        n = int(round(size / mpp))
        top = cv2.resize(top, (n, n), interpolation=cv2.INTER_AREA)
        mpp = size / n
    ortho = os.path.join(out_dir, "orthophoto.tif")
    transform = from_origin(UTM_OFFSET[0], UTM_OFFSET[1] + size, mpp, mpp)
    with rasterio.open(ortho, "w", driver="GTiff", width=top.shape[1], height=top.shape[0], count=3, dtype="uint8",
                       crs=TOWN_CRS, transform=transform, compress="deflate", tiled=True, blockxsize=256,
                       blockysize=256, photometric="RGB") as dst:
        dst.write(np.moveaxis(top, -1, 0))

    to_wgs84 = Transformer.from_crs(TOWN_CRS, "EPSG:4326", always_xy=True)
    rng = np.random.default_rng([int(seed), _PHOTO_SALT])
    locations = world.sample_locations(int(panos) + int(photos), seed=int(rng.integers(1 << 31)), margin_m=margin_m)
    h, w = int(pano_size[0]), int(pano_size[1])
    photo_w = max(1, int(round(w * photo_fov_deg / 360.0)))
    headings = rng.uniform(0.0, 360.0, int(photos))
    os.makedirs(os.path.join(out_dir, "panos"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "photos"), exist_ok=True)
    rows = []
    bar = progress_bar(len(locations), "geotown", "photo", progress)
    try:
        for i, xy in enumerate(locations):
            is_pano = i < panos
            if is_pano:
                name, heading, fov = f"pano{i + 1:05d}", 0.0, 360.0
                image = render_panorama(world, xy, height_px=h, width_px=w)
            else:
                name, heading, fov = f"photo{i - panos + 1:05d}", float(headings[i - panos]), float(photo_fov_deg)
                # Same vertical field of view as the panoramas (square pixels at the same angular step).
                image = render_panorama(world, xy, height_px=h, width_px=photo_w, heading_deg=heading, fov_deg=fov,
                                        vfov_deg=h / w * 360.0)
            rel = os.path.join("panos" if is_pano else "photos", f"{name}.jpg")
            if not cv2.imwrite(os.path.join(out_dir, rel), image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                raise CvmError(f"could not write {os.path.join(out_dir, rel)}: check the folder is writable")
            e, n = float(xy[0]) + UTM_OFFSET[0], float(xy[1]) + UTM_OFFSET[1]
            lon, lat = to_wgs84.transform(e, n)
            rows.append({"id": name, "kind": "pano" if is_pano else "photo", "file": rel, "easting": round(e, 3),
                         "northing": round(n, 3), "lat": round(lat, 8), "lon": round(lon, 8),
                         "heading_deg": round(heading, 3), "fov_deg": fov, "world_x": round(float(xy[0]), 3),
                         "world_y": round(float(xy[1]), 3)})
            bar.update(1)
    finally:
        bar.close()
    with open(os.path.join(out_dir, "locations.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    info = {"crs": TOWN_CRS, "origin_utm": list(UTM_OFFSET), "ortho_mpp": mpp, "orthophoto": "orthophoto.tif",
            "ortho_size_px": [int(top.shape[0]), int(top.shape[1])], "world_seed": int(seed),
            "world_size_m": size, "panos": int(panos), "photos": int(photos), "pano_size": [h, w],
            "photo_size": [h, photo_w], "photo_fov_deg": float(photo_fov_deg), "locations": "locations.csv",
            "margin_m": float(margin_m)}
    with open(os.path.join(out_dir, "town.json"), "w") as f:
        json.dump(info, f, indent=1)
    return info


def read_locations(town_dir: str) -> list:
    """The rows of a town's locations.csv (numbers as floats)."""
    path = os.path.join(town_dir, "locations.csv")
    if not os.path.isfile(path):
        raise CvmError(f"{path} not found: write the town with `cvm data synth --layout geotown --out {town_dir}`")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("easting", "northing", "lat", "lon", "heading_deg", "fov_deg", "world_x", "world_y"):
            r[k] = float(r[k])
    return rows

"""The geo-referenced synthetic town: a real GeoTIFF in UTM 55S and photos with their true coordinates."""

import json
import os

import cv2
import numpy as np
import rasterio
from pyproj import Transformer

from cvm.data.synthetic.dataset import shared_world
from cvm.data.synthetic.render import render_panorama
from cvm.data.synthetic.town import read_locations


def test_town_files_are_geo_referenced(town):
    info = json.load(open(os.path.join(town, "town.json")))
    world = shared_world(3, 400.0)
    with rasterio.open(os.path.join(town, info["orthophoto"])) as src:
        assert src.crs.to_epsg() == 32755 and src.count == 3
        assert tuple(src.bounds) == (690000.0, 6090000.0, 690400.0, 6090400.0) and src.res == (0.8, 0.8)
        ortho = np.moveaxis(src.read(), 0, -1)
    # 0.8 m/px = the 0.4 m world raster averaged 2x2 (INTER_AREA); rounding to uint8: within 1.
    expected = world.top[..., ::-1].astype(np.float64).reshape(500, 2, 500, 2, 3).mean(axis=(1, 3))
    assert np.abs(ortho - expected).max() <= 1.0
    rows = read_locations(town)
    assert [r["kind"] for r in rows] == ["pano"] * 3 + ["photo"] * 2
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32755", always_xy=True)
    for r in rows:
        assert 100.0 <= r["world_x"] <= 300.0 and 100.0 <= r["world_y"] <= 300.0  # the 100 m margin
        e, n = to_utm.transform(r["lon"], r["lat"])
        assert abs(e - r["easting"]) < 0.01 and abs(n - r["northing"]) < 0.01  # lat/lon rounded to 1e-8 deg
        assert r["easting"] == round(r["world_x"] + 690000.0, 3)
    pano = cv2.imread(os.path.join(town, rows[0]["file"]))
    assert pano.shape == (64, 256, 3)
    ref = render_panorama(world, (rows[0]["world_x"], rows[0]["world_y"]), height_px=64, width_px=256)
    assert np.abs(pano.astype(float) - ref).mean() < 4.0  # JPEG q95 of the same render
    photo = cv2.imread(os.path.join(town, rows[3]["file"]))
    assert photo.shape == (64, 64, 3) and rows[3]["fov_deg"] == 90.0


def test_data_synth_geotown_cli(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "cvm.cli.main", "data", "synth", "--layout=geotown", "--pairs=20",
                          "--val_fraction=0.1", f"--out={tmp_path / 't'}"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "2 panoramas, 2 90-degree photos" in out.stdout
    info = json.load(open(tmp_path / "t" / "town.json"))
    assert info["world_size_m"] == 400.0 and info["panos"] == info["photos"] == 2
    refused = subprocess.run([sys.executable, "-m", "cvm.cli.main", "data", "synth", "--layout=geotown", "--workers=2",
                              f"--out={tmp_path / 'u'}"], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--workers has no effect" in refused.stderr

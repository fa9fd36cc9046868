"""Gallery sources: GeoTIFF cells (coordinates, resampling, nodata / outside, seams), XYZ tiles, splits."""

import os

import cv2
import mercantile
import numpy as np
import pytest
from pyproj import Transformer

from cvm.errors import CvmError
from cvm.geo.sources import GeoTiffSource, SplitSource, TileSource
from tests.geo.geolib import CRS, ORIGIN, rng_image, write_tif


def _cells(source, cell_px):
    return list(source.cells(0, len(source), cell_px))


def test_geotiff_cells_have_their_centres_and_block_means(tmp_path):
    img = rng_image(40, 60, seed=1)
    path = write_tif(tmp_path / "a.tif", img, res=1.0)
    src = GeoTiffSource([path], cell_m=20, stride_m=10)  # 20 m = 20 px cells every 10 px
    assert (src.grid.rows, src.grid.cols) == (3, 5)
    cells = _cells(src, (10, 10))  # 2x2 pixel blocks averaged
    assert len(cells) == 15 and all(c[1] is not None for c in cells)
    back = Transformer.from_crs("EPSG:4326", CRS, always_xy=True)
    for index, image, meta in cells:
        r, c = divmod(index, 5)
        x, y = ORIGIN[0] + 10 * c + 10, ORIGIN[1] - 10 * r - 10  # centre: 10 m in from the cell's corner
        assert (meta["x"], meta["y"]) == (x, y)
        ex, ny = back.transform(meta["lon"], meta["lat"])  # WGS84 round trip: projection error << 1 mm
        assert abs(ex - x) < 1e-3 and abs(ny - y) < 1e-3
        assert meta["window"] == (10 * c, 10 * r, 20, 20)
        block = img[10 * r:10 * r + 20, 10 * c:10 * c + 20].astype(np.float64)
        expected = block.reshape(10, 2, 10, 2, 3).mean(axis=(1, 3))
        # GDAL's average of 4 uint8 values is rounded or truncated to uint8: within 1 of the float mean.
        assert np.abs(image.astype(np.float64) - expected).max() <= 1.0
    # Canberra (UTM zone 55S, easting 690 km): latitude about -35.3, longitude about 149.1.
    assert -35.4 < cells[0][2]["lat"] < -35.2 and 149.0 < cells[0][2]["lon"] < 149.2


def test_geotiff_counts_nodata_and_outside_cells(tmp_path):
    img = rng_image(40, 50, seed=2)
    img[img == 0] = 1
    img[:20, :20] = 0  # nodata corner
    path = write_tif(tmp_path / "n.tif", img, nodata=0)
    src = GeoTiffSource([path], cell_m=20, stride_m=20)  # columns at 0, 20, 40 (the last reaches 10 m outside)
    cells = _cells(src, (20, 20))
    reasons = [c[2] if c[1] is None else "ok" for c in cells]
    assert reasons == ["nodata", "ok", "outside", "ok", "ok", "outside"]


def test_tiles_of_one_orthophoto_form_one_mosaic(tmp_path):
    img = rng_image(40, 40, seed=3)
    whole = GeoTiffSource([write_tif(tmp_path / "w.tif", img)], cell_m=20, stride_m=10)
    os.makedirs(tmp_path / "parts")
    write_tif(tmp_path / "parts" / "west.tif", img[:, :20], origin=ORIGIN)
    write_tif(tmp_path / "parts" / "east.tif", img[:, 20:], origin=(ORIGIN[0] + 20, ORIGIN[1]))
    parts = GeoTiffSource([str(tmp_path / "parts")], cell_m=20, stride_m=10)
    a, b = _cells(whole, (20, 20)), _cells(parts, (20, 20))
    assert len(a) == len(b) == 9
    for (i, ia, ma), (j, ib, mb) in zip(a, b):  # the middle column crosses the seam at 20 m
        assert i == j and ib is not None
        np.testing.assert_array_equal(ia, ib)
        assert (ma["x"], ma["y"]) == (mb["x"], mb["y"])


def test_raster_without_crs_is_an_error_naming_it(tmp_path):
    path = write_tif(tmp_path / "nocrs.tif", rng_image(8, 8), crs=None)
    with pytest.raises(CvmError, match="nocrs.tif has no CRS"):
        GeoTiffSource([path], cell_m=4)
    with pytest.raises(CvmError, match="GeoTIFF not found"):
        GeoTiffSource([str(tmp_path / "missing.tif")], cell_m=4)


def test_xyz_tiles_are_stitched_at_their_zoom(tmp_path):
    z, x0, y0 = 17, 118000, 80000
    colours = {(0, 0): (255, 0, 0), (1, 0): (0, 255, 0), (0, 1): (0, 0, 255), (1, 1): (255, 255, 0)}
    for (dx, dy), rgb in colours.items():
        folder = tmp_path / str(z) / str(x0 + dx)
        os.makedirs(folder, exist_ok=True)
        tile = np.zeros((256, 256, 3), np.uint8)
        tile[:] = rgb
        cv2.imwrite(str(folder / f"{y0 + dy}.png"), tile[..., ::-1])
    tile_m = mercantile.xy_bounds(mercantile.Tile(x0, y0, z))
    side = tile_m.right - tile_m.left
    src = TileSource(str(tmp_path), z, cell_m=1.0, stride_m=1.0)
    lat = mercantile.ul(x0, y0 + 1, z).lat
    # A cell of exactly one tile's ground size (mercator side x cos(latitude of the set's centre)).
    scale = src.scale
    src = TileSource(str(tmp_path), z, cell_m=side / scale, stride_m=side / scale)
    assert (src.grid.rows, src.grid.cols) == (2, 2)
    cells = _cells(src, (32, 32))
    for index, image, meta in cells:
        r, c = divmod(index, 2)
        assert np.all(image == colours[(c, r)])
        centre = mercantile.ul(x0 + c, y0 + r, z), mercantile.ul(x0 + c + 1, y0 + r + 1, z)
        assert min(centre[0].lat, centre[1].lat) < meta["lat"] < max(centre[0].lat, centre[1].lat)
        assert centre[0].lng < meta["lon"] < centre[1].lng
    assert abs(lat) < 90
    # Half-tile stride: the middle cell is stitched from all four tiles, a quarter of each.
    half = TileSource(str(tmp_path), z, cell_m=side / scale, stride_m=side / scale / 2)
    mid = [c for c in _cells(half, (32, 32)) if c[0] == 4][0][1]
    assert np.all(mid[:16, :16] == colours[(0, 0)]) and np.all(mid[16:, 16:] == colours[(1, 1)])
    os.remove(tmp_path / str(z) / str(x0 + 1) / f"{y0 + 1}.png")
    gap = TileSource(str(tmp_path), z, cell_m=side / scale, stride_m=side / scale)
    assert [c[2] for c in _cells(gap, (8, 8)) if c[1] is None] == ["outside"]
    with pytest.raises(CvmError, match="no zoom level 16"):
        TileSource(str(tmp_path), 16, cell_m=10)


def test_split_source_places_synthetic_metres_in_utm(toy_split):
    from cvm.data.synthetic.write import UTM_OFFSET

    src = SplitSource(toy_split)
    cells = _cells(src, (24, 24))
    assert len(cells) == len(toy_split)
    for (i, image, meta), pair in zip(cells, toy_split):
        assert image.shape == (24, 24, 3)
        assert meta["x"] == pair.location[0] + UTM_OFFSET[0] and meta["y"] == pair.location[1] + UTM_OFFSET[1]
        assert meta["name"] == pair.id and meta["crs"] == "EPSG:32755"
    bgr = cv2.imread(toy_split[0].aerial_path)
    np.testing.assert_array_equal(cells[0][1], cv2.resize(bgr, (24, 24), interpolation=cv2.INTER_AREA)[..., ::-1])

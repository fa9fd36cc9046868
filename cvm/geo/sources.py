"""Gallery sources: where the geo-referenced aerial cells of a gallery come from.

Each source is a deterministic list of candidate cells (so a build can resume by shard): `len(source)`
candidates, `cells(start, stop, cell_px)` yields (index, RGB uint8 [h, w, 3] image or None, metadata or the
reason it was skipped). Metadata per cell: name, lat / lon (WGS84), x / y (the source CRS, `crs`), the
source file and its pixel window (col_off, row_off, width, height).

  SplitSource      a dataset split's aerial images with their coordinates (cvm.data.load_split)
  GeoTiffSource    GeoTIFF orthophotos (rasterio): cells of a ground size and stride in metres; several
                   rasters (tiles of one orthophoto) form one virtual mosaic, so cells across seams survive
  TileSource       an XYZ / slippy-map folder {z}/{x}/{y}.png|jpg (mercantile): cells stitched from tiles
"""

from __future__ import annotations

import abc
import glob
import math
import os
from typing import Iterator, Optional

import cv2
import numpy as np

from cvm.errors import CvmError

# CVACT's UTM coordinates (Canberra) and the synthetic world's metres (shifted by the same offset the
# CVACT-layout writer uses, cvm.data.synthetic.write.UTM_OFFSET) are WGS84 / UTM zone 55S.
CVACT_CRS = "EPSG:32755"
SKIP_REASONS = ("outside", "nodata", "unreadable")


def to_wgs84(crs, x, y):
    """(lon, lat) arrays of CRS coordinates (pyproj, always x = easting / longitude first)."""
    from pyproj import Transformer

    t = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = t.transform(np.asarray(x, np.float64), np.asarray(y, np.float64))
    return np.asarray(lon, np.float64), np.asarray(lat, np.float64)


def _resize(img: np.ndarray, cell_px) -> np.ndarray:
    h, w = int(cell_px[0]), int(cell_px[1])
    if img.shape[:2] == (h, w):
        return img
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)


class Source(abc.ABC):
    kind = ""
    crs: Optional[str] = None

    @abc.abstractmethod
    def describe(self) -> dict:
        """What the gallery's manifest records of the source (kind, files, CRS, grid)."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """The number of candidate cells."""

    @abc.abstractmethod
    def cells(self, start: int, stop: int, cell_px) -> Iterator[tuple]:
        """Candidate cells start..stop-1 as (index, RGB uint8 image at cell_px, metadata dict), or (index, None,
        the reason it is skipped)."""

    @abc.abstractmethod
    def mosaic(self, bounds, shape, cells: Optional[dict] = None) -> Optional[np.ndarray]:
        """RGB uint8 `shape` (h, w) image of the gallery over bounds (x0, y0, x1, y1) in self.crs.

        cells: the gallery's metadata (x, y, name arrays) for sources without continuous imagery."""


class SplitSource(Source):
    """The aerial images of a split (one cell per pair) at the pairs' coordinates.

    CVACT's UTM easting / northing are in CVACT_CRS; the synthetic world's metres are placed in the same
    zone at cvm.data.synthetic.write.UTM_OFFSET (so a synthetic split and the geo-town writer agree);
    latlon splits are WGS84. A split without coordinates (CVUSA) is refused.
    """

    kind = "split"

    def __init__(self, split, cell_extent_m: Optional[float] = None, crs: Optional[str] = None,
                 load_options: Optional[dict] = None):
        self.split = split
        self.load_options = dict(load_options or {})  # JSON kwargs of load_split, to rebuild the split
        kind = split.location_kind
        locations = split.locations()
        if kind is None or locations is None:
            raise CvmError(f"split {split.dataset}/{split.name} has no coordinates: a gallery needs geo-referenced "
                           "aerials (CVACT, the synthetic world, or --geotiff / --tiles)")
        loc = np.asarray(locations, np.float64)
        if kind == "metres":
            from cvm.data.synthetic.write import UTM_OFFSET

            self.crs = crs or CVACT_CRS
            self.x, self.y = loc[:, 0] + UTM_OFFSET[0], loc[:, 1] + UTM_OFFSET[1]
        elif kind == "utm":
            self.crs = crs or CVACT_CRS
            self.x, self.y = loc[:, 0], loc[:, 1]
        else:  # latlon rows are (lat, lon)
            self.crs = "EPSG:4326"
            self.x, self.y = loc[:, 1], loc[:, 0]
        self.lon, self.lat = to_wgs84(self.crs, self.x, self.y)
        if cell_extent_m is None and split.dataset == "synthetic":
            from cvm.data.synthetic.dataset import AERIAL_EXTENT_M

            cell_extent_m = AERIAL_EXTENT_M
        self.cell_extent_m = cell_extent_m

    def describe(self):
        return {"kind": self.kind, "dataset": self.split.dataset, "split": self.split.name, "root": self.split.root,
                "pairs": len(self.split), "first": self.split.ids[:1], "last": self.split.ids[-1:],
                "crs": self.crs, "cell_extent_m": self.cell_extent_m, "load_options": self.load_options}

    def __len__(self):
        return len(self.split)

    def cells(self, start, stop, cell_px):
        for i in range(start, min(stop, len(self))):
            img = self.split.read_aerial(i)
            if img is None:
                yield i, None, "unreadable"
                continue
            h, w = img.shape[:2]
            rgb = _resize(np.ascontiguousarray(img[..., ::-1]), cell_px)
            yield i, rgb, {"name": str(self.split.pairs[i].id), "lat": self.lat[i], "lon": self.lon[i],
                           "x": self.x[i], "y": self.y[i], "crs": self.crs,
                           "source": str(self.split.pairs[i].aerial_path), "window": (0, 0, w, h)}

    def mosaic(self, bounds, shape, cells=None):
        """The hits' neighbourhood painted from the split's own aerials at their coordinates (nearest first)."""
        if not self.cell_extent_m:
            return None
        x0, y0, x1, y1 = bounds
        h, w = shape
        canvas = np.full((h, w, 3), 40, np.uint8)
        sx, sy = w / (x1 - x0), h / (y1 - y0)
        half = self.cell_extent_m / 2
        near = np.nonzero((self.x + half > x0) & (self.x - half < x1) & (self.y + half > y0) & (self.y - half < y1))[0]
        for i in near[:400]:  # enough to fill a view around the hits
            img = self.split.read_aerial(int(i))
            if img is None:
                continue
            c0, c1 = int(round((self.x[i] - half - x0) * sx)), int(round((self.x[i] + half - x0) * sx))
            r0, r1 = int(round((y1 - self.y[i] - half) * sy)), int(round((y1 - self.y[i] + half) * sy))
            if c1 - c0 < 1 or r1 - r0 < 1:
                continue
            tile = cv2.resize(np.ascontiguousarray(img[..., ::-1]), (c1 - c0, r1 - r0), interpolation=cv2.INTER_AREA)
            cr0, cc0 = max(r0, 0), max(c0, 0)
            cr1, cc1 = min(r1, h), min(c1, w)
            if cr1 > cr0 and cc1 > cc0:
                canvas[cr0:cr1, cc0:cc1] = tile[cr0 - r0:cr1 - r0, cc0 - c0:cc1 - c0]
        return canvas


class _Grid:
    """Cells of `size` metres every `stride` metres over bounds (x0, y0, x1, y1), row-major from the north-west."""

    def __init__(self, bounds, size: float, stride: float):
        if size <= 0 or stride <= 0:
            raise CvmError(f"--cell_m and --stride_m must be positive, got {size} and {stride}")
        self.x0, self.y0, self.x1, self.y1 = (float(b) for b in bounds)
        self.size, self.stride = float(size), float(stride)
        # Enough cells to cover the extent; the last row / column may reach outside (skipped, counted).
        self.cols = max(1, int(math.ceil(max(self.x1 - self.x0 - size, 0) / stride - 1e-9)) + 1)
        self.rows = max(1, int(math.ceil(max(self.y1 - self.y0 - size, 0) / stride - 1e-9)) + 1)

    def __len__(self):
        return self.rows * self.cols

    def cell(self, index: int):
        """(row, col, (left, bottom, right, top)) of a cell."""
        r, c = divmod(int(index), self.cols)
        left = self.x0 + c * self.stride
        top = self.y1 - r * self.stride
        return r, c, (left, top - self.size, left + self.size, top)


class GeoTiffSource(Source):
    """Cells cut from GeoTIFF orthophotos in one projected CRS.

    Each cell of cell_m x cell_m metres (every stride_m) is read at the rasters' resolution from every
    raster it overlaps (so tiles of one orthophoto form one mosaic) and INTER_AREA-resampled to the model's
    cell size (blockwise, see _block: windows rounded to the cell pixel grid). A cell with any pixel outside
    all rasters is skipped as "outside", one with a nodata / masked pixel as "nodata"; both are counted.
    """

    kind = "geotiff"

    def __init__(self, paths, cell_m: float, stride_m: Optional[float] = None):
        import rasterio

        files = []
        for p in paths:
            if os.path.isdir(p):
                found = sorted(glob.glob(os.path.join(p, "*.tif")) + glob.glob(os.path.join(p, "*.tiff")))
                if not found:
                    raise CvmError(f"no .tif / .tiff files in {p}")
                files += found
            elif os.path.isfile(p):
                files.append(p)
            else:
                raise CvmError(f"GeoTIFF not found: {p}")
        self.paths = [os.path.abspath(f) for f in files]
        self.meta = []
        crs = None
        for path in self.paths:
            try:
                with rasterio.open(path) as src:
                    if src.crs is None:
                        raise CvmError(f"{path} has no CRS: a gallery needs geo-referenced rasters "
                                       "(set one, e.g. `gdal_edit.py -a_srs EPSG:32755 FILE`)")
                    t = src.transform
                    if t.b != 0 or t.d != 0:
                        raise CvmError(f"{path} is rotated (affine {tuple(t)[:6]}): warp it north-up first "
                                       "(gdalwarp)")
                    if crs is None:
                        crs = src.crs
                    elif src.crs != crs:
                        raise CvmError(f"{path} is in {src.crs.to_string()} but {self.paths[0]} in "
                                       f"{crs.to_string()}: reproject the rasters to one CRS")
                    if not src.crs.is_projected:
                        raise CvmError(f"{path} is in the geographic CRS {src.crs.to_string()}: cells are cut in "
                                       "metres, reproject it to a projected CRS (e.g. its UTM zone) first")
                    from rasterio.enums import MaskFlags

                    all_valid = all(flags == [MaskFlags.all_valid] for flags in src.mask_flag_enums)
                    self.meta.append({"path": path, "bounds": tuple(src.bounds), "res": src.res,
                                      "size": (src.width, src.height), "count": src.count, "all_valid": all_valid})
            except rasterio.errors.RasterioIOError as exc:
                raise CvmError(f"cannot read {path} as a raster: {exc}") from None
        self.crs = crs.to_string()
        b = np.array([m["bounds"] for m in self.meta])
        self.bounds = tuple(float(v) for v in (b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()))
        self.cell_m = float(cell_m)
        self.stride_m = float(stride_m or cell_m)
        self.grid = _Grid(self.bounds, self.cell_m, self.stride_m)
        self._open = {}
        self._blocks = {}

    def describe(self):
        return {"kind": self.kind, "paths": self.paths, "crs": self.crs, "cell_m": self.cell_m,
                "stride_m": self.stride_m, "bounds": list(self.bounds), "rows": self.grid.rows,
                "cols": self.grid.cols, "cell_extent_m": self.cell_m}

    def __len__(self):
        return len(self.grid)

    def _src(self, path):
        import rasterio

        if path not in self._open:
            self._open[path] = rasterio.open(path)
        return self._open[path]

    def close(self):
        for src in self._open.values():
            src.close()
        self._open = {}

    def __getstate__(self):  # picklable for Beam workers: open handles are reopened there
        state = dict(self.__dict__)
        state["_open"], state["_blocks"] = {}, {}
        return state

    def read_bounds(self, bounds, shape):
        """(RGB uint8 [h, w, 3], valid [h, w] bool) of the mosaic over bounds at `shape` pixels.

        Each overlapping raster is read over its intersection only (no boundless VRT), averaged by GDAL
        when the output is coarser than the raster; pixels no raster covers, and nodata, are invalid."""
        from rasterio.enums import Resampling
        from rasterio.windows import from_bounds

        h, w = int(shape[0]), int(shape[1])
        out = np.zeros((h, w, 3), np.uint8)
        valid = np.zeros((h, w), bool)
        left, bottom, right, top = bounds
        sx, sy = (right - left) / w, (top - bottom) / h
        for m in self.meta:
            bl, bb, br, bt = m["bounds"]
            c0, c1 = int(round((max(left, bl) - left) / sx)), int(round((min(right, br) - left) / sx))
            r0, r1 = int(round((top - min(top, bt)) / sy)), int(round((top - max(bottom, bb)) / sy))
            if c1 <= c0 or r1 <= r0:
                continue
            src = self._src(m["path"])
            window = from_bounds(left + c0 * sx, top - r1 * sy, left + c1 * sx, top - r0 * sy, src.transform)
            bands = [1, 2, 3] if src.count >= 3 else [1, 1, 1]
            shape_out = (3, r1 - r0, c1 - c0)
            if m["all_valid"]:  # no nodata, mask or alpha: skip GDAL's mask computation (most of a read's cost)
                data = src.read(bands, window=window, out_shape=shape_out, resampling=Resampling.average)
                ok = np.ones(shape_out[1:], bool)
            else:
                data = src.read(bands, window=window, out_shape=shape_out, masked=True, resampling=Resampling.average)
                ok = ~np.ma.getmaskarray(data).any(axis=0)
                data = np.asarray(data.data)
            already = valid[r0:r1, c0:c1]
            if ok.all() and not already.any():  # the common case, without boolean indexing
                out[r0:r1, c0:c1] = np.moveaxis(data, 0, -1)
            else:
                take = ok & ~already
                out[r0:r1, c0:c1][take] = np.moveaxis(data, 0, -1)[take].astype(np.uint8)
            valid[r0:r1, c0:c1] |= ok
        return out, valid

    # Cells are cut from blocks of ROW_GROUP grid rows x BAND_CELLS grid columns, each read once at the
    # raster's resolution and INTER_AREA-resampled once to the cells' pixel size (cell_m / cell_px metres):
    # overlapping cells share pixels, so at stride << cell size per-cell reads and resizes would cost
    # (cell / stride)^2 times more. A cell's window is then rounded to that coarse grid (its centre moves
    # by < half a cell pixel, and the recorded x / y are those of the window actually cut). The blocks of
    # one row group stay cached while the build sweeps it: memory ~ raster width x block height.
    BAND_CELLS = 64
    ROW_GROUP = 8

    def _block(self, group: int, chunk: int, cell_px):
        key = (group, chunk, tuple(cell_px))
        if self._blocks.get("group") != (group, tuple(cell_px)):
            self._blocks = {"group": (group, tuple(cell_px))}
        if key not in self._blocks:
            g = self.grid
            rx, ry = self.meta[0]["res"]
            c0, c1 = chunk * self.BAND_CELLS, min(g.cols, (chunk + 1) * self.BAND_CELLS) - 1
            r0, r1 = group * self.ROW_GROUP, min(g.rows, (group + 1) * self.ROW_GROUP) - 1
            left, right = g.x0 + c0 * g.stride, g.x0 + c1 * g.stride + g.size
            top, bottom = g.y1 - r0 * g.stride, g.y1 - r1 * g.stride - g.size
            native = (int(round((top - bottom) / ry)), int(round((right - left) / rx)))
            image, valid = self.read_bounds((left, bottom, right, top), native)
            mx, my = g.size / cell_px[1], g.size / cell_px[0]  # metres per cell pixel
            coarse = (max(1, int(round((top - bottom) / my))), max(1, int(round((right - left) / mx))))
            if coarse != native:
                image = cv2.resize(image, coarse[::-1], interpolation=cv2.INTER_AREA)
                # A coarse pixel is valid only if every source pixel under it is.
                valid = cv2.resize(valid.astype(np.float32), coarse[::-1], interpolation=cv2.INTER_AREA) > 1 - 1e-4
            self._blocks[key] = (left, top, mx, my, image, valid)
        return self._blocks[key]

    def cells(self, start, stop, cell_px):
        """Cells cut from cached blocks already at the cells' pixel size (see _block)."""
        from rasterio.windows import from_bounds

        stop = min(stop, len(self))
        g = self.grid
        h, w = int(cell_px[0]), int(cell_px[1])
        i = start
        while i < stop:
            r, c_first, _ = g.cell(i)
            count = min(stop - i, g.cols - c_first, self.BAND_CELLS - c_first % self.BAND_CELLS)
            b_left, b_top, mx, my, block, valid = self._block(r // self.ROW_GROUP, c_first // self.BAND_CELLS,
                                                              cell_px)
            items, cx, cy = [], [], []
            for k in range(count):
                index, c = i + k, c_first + k
                _, _, bounds = g.cell(index)
                col, row = int(round((bounds[0] - b_left) / mx)), int(round((b_top - bounds[3]) / my))
                cell_ok = valid[row:row + h, col:col + w]
                if cell_ok.shape != (h, w) or not cell_ok.all():
                    items.append((index, None, "nodata" if self._covered(bounds) else "outside"))
                    continue
                img = np.ascontiguousarray(block[row:row + h, col:col + w])
                left, top = b_left + col * mx, b_top - row * my  # the window actually cut
                x, y = left + w * mx / 2, top - h * my / 2
                home = self._home(x, y)
                win = from_bounds(left, top - h * my, left + w * mx, top, self._src(home["path"]).transform)
                meta = {"name": f"r{r}c{c}", "x": x, "y": y, "crs": self.crs, "source": home["path"],
                        "window": (int(round(win.col_off)), int(round(win.row_off)), int(round(win.width)),
                                   int(round(win.height)))}
                cx.append(x)
                cy.append(y)
                items.append((index, img, meta))
            if cx:
                lon, lat = to_wgs84(self.crs, cx, cy)
                j = 0
                for _, img, meta in items:
                    if img is not None:
                        meta["lon"], meta["lat"] = float(lon[j]), float(lat[j])
                        j += 1
            yield from items
            i += count

    def _covered(self, bounds) -> bool:
        """Whether the union of raster footprints covers bounds (sampled on a 9x9 grid of points)."""
        xs = np.linspace(bounds[0] + 1e-3, bounds[2] - 1e-3, 9)
        ys = np.linspace(bounds[1] + 1e-3, bounds[3] - 1e-3, 9)
        for x in xs:
            for y in ys:
                if not any(m["bounds"][0] <= x <= m["bounds"][2] and m["bounds"][1] <= y <= m["bounds"][3]
                           for m in self.meta):
                    return False
        return True

    def _home(self, x, y):
        for m in self.meta:
            if m["bounds"][0] <= x <= m["bounds"][2] and m["bounds"][1] <= y <= m["bounds"][3]:
                return m
        return self.meta[0]

    def mosaic(self, bounds, shape, cells=None):
        img, valid = self.read_bounds(bounds, shape)
        img[~valid] = 40
        return img


class TileSource(Source):
    """An XYZ tile folder ({z}/{x}/{y}.png|jpg, web-mercator, y from the north) at one zoom.

    Cells of cell_m ground metres every stride_m, laid out in EPSG:3857; a ground metre is
    1 / cos(latitude) mercator metres, taken at the tile set's centre latitude (the scale varies by
    ~0.03 % per km north-south at mid-latitudes). A cell needing a missing tile is skipped as "outside".
    """

    kind = "tiles"
    crs = "EPSG:3857"

    def __init__(self, folder: str, zoom: int, cell_m: float, stride_m: Optional[float] = None):
        import mercantile

        self.folder, self.zoom = os.path.abspath(folder), int(zoom)
        zdir = os.path.join(self.folder, str(self.zoom))
        if not os.path.isdir(zdir):
            levels = sorted(d for d in os.listdir(self.folder) if d.isdigit()) if os.path.isdir(folder) else []
            raise CvmError(f"no zoom level {zoom} in the tile folder {folder} (expected {zdir}/X/Y.png|jpg; "
                           f"levels there: {', '.join(levels) or 'none'})")
        self.tiles = {}
        for path in glob.glob(os.path.join(zdir, "*", "*")):
            stem, ext = os.path.splitext(os.path.basename(path))
            xdir = os.path.basename(os.path.dirname(path))
            if ext.lower() in (".png", ".jpg", ".jpeg") and stem.isdigit() and xdir.isdigit():
                self.tiles[(int(xdir), int(stem))] = path
        if not self.tiles:
            raise CvmError(f"no tiles in {zdir} (expected {zdir}/X/Y.png or .jpg)")
        first = cv2.imread(next(iter(self.tiles.values())), cv2.IMREAD_COLOR)
        if first is None:
            raise CvmError(f"cannot decode the tile {next(iter(self.tiles.values()))}")
        self.tile_px = first.shape[0]
        xs = [k[0] for k in self.tiles]
        ys = [k[1] for k in self.tiles]
        nw = mercantile.xy_bounds(mercantile.Tile(min(xs), min(ys), self.zoom))
        se = mercantile.xy_bounds(mercantile.Tile(max(xs), max(ys), self.zoom))
        self.bounds = (float(nw.left), float(se.bottom), float(se.right), float(nw.top))
        _, lat = to_wgs84(self.crs, [(self.bounds[0] + self.bounds[2]) / 2], [(self.bounds[1] + self.bounds[3]) / 2])
        self.scale = 1.0 / math.cos(math.radians(float(lat[0])))  # mercator metres per ground metre
        self.cell_m = float(cell_m)
        self.stride_m = float(stride_m or cell_m)
        self.grid = _Grid(self.bounds, self.cell_m * self.scale, self.stride_m * self.scale)
        self.tile_m = nw.right - nw.left
        self._cache = {}

    def describe(self):
        return {"kind": self.kind, "folder": self.folder, "zoom": self.zoom, "tiles": len(self.tiles),
                "cell_m": self.cell_m, "stride_m": self.stride_m, "crs": self.crs, "bounds": list(self.bounds),
                "rows": self.grid.rows, "cols": self.grid.cols, "cell_extent_m": self.cell_m * self.scale}

    def __len__(self):
        return len(self.grid)

    def _tile(self, tx, ty):
        key = (tx, ty)
        if key not in self._cache:
            if len(self._cache) > 256:
                self._cache.clear()
            path = self.tiles.get(key)
            img = cv2.imread(path, cv2.IMREAD_COLOR) if path else None
            self._cache[key] = None if img is None else np.ascontiguousarray(img[..., ::-1])
        return self._cache[key]

    def read_bounds(self, bounds, shape):
        """(RGB image, all tiles present) over mercator bounds, stitched then INTER_AREA-resized to shape."""
        left, bottom, right, top = bounds
        ox, oy = -20037508.342789244, 20037508.342789244  # web-mercator origin of tile (0, 0)
        px = self.tile_m / self.tile_px  # metres per pixel at this zoom
        c0, c1 = (left - ox) / px, (right - ox) / px
        r0, r1 = (oy - top) / px, (oy - bottom) / px
        eps = 1e-3  # pixels: float slop of cell edges that fall on tile edges
        tx0, tx1 = int((c0 + eps) // self.tile_px), int((c1 - eps) // self.tile_px)
        ty0, ty1 = int((r0 + eps) // self.tile_px), int((r1 - eps) // self.tile_px)
        n = self.tile_px
        canvas = np.full(((ty1 - ty0 + 1) * n, (tx1 - tx0 + 1) * n, 3), 40, np.uint8)
        complete = True
        for ty in range(ty0, ty1 + 1):
            for tx in range(tx0, tx1 + 1):
                tile = self._tile(tx, ty)
                if tile is None or tile.shape[:2] != (n, n):
                    complete = False
                    continue
                canvas[(ty - ty0) * n:(ty - ty0 + 1) * n, (tx - tx0) * n:(tx - tx0 + 1) * n] = tile
        a0, a1 = int(round(r0 - ty0 * n)), int(round(r1 - ty0 * n))
        b0, b1 = int(round(c0 - tx0 * n)), int(round(c1 - tx0 * n))
        crop = canvas[max(a0, 0):max(a1, a0 + 1), max(b0, 0):max(b1, b0 + 1)]
        return _resize(crop, shape), complete, (b0 + tx0 * n, a0 + ty0 * n, b1 - b0, a1 - a0)

    def cells(self, start, stop, cell_px):
        stop = min(stop, len(self))
        items, cx, cy = [], [], []
        for i in range(start, stop):
            r, c, bounds = self.grid.cell(i)
            img, complete, window = self.read_bounds(bounds, cell_px)
            if not complete:
                items.append((i, None, "outside"))
                continue
            x, y = (bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2
            items.append((i, img, {"name": f"z{self.zoom}r{r}c{c}", "x": x, "y": y, "crs": self.crs,
                                   "source": os.path.join(self.folder, str(self.zoom)), "window": window}))
            cx.append(x)
            cy.append(y)
        if cx:
            lon, lat = to_wgs84(self.crs, cx, cy)
            k = 0
            for _, img, meta in items:
                if img is not None:
                    meta["lon"], meta["lat"] = float(lon[k]), float(lat[k])
                    k += 1
        yield from items

    def mosaic(self, bounds, shape, cells=None):
        return self.read_bounds(bounds, shape)[0]


def source_from_description(d: dict) -> Source:
    """Rebuild a gallery's source from its gallery.json description (for mosaics and Beam workers)."""
    kind = d.get("kind")
    if kind == "geotiff":
        return GeoTiffSource(d["paths"], d["cell_m"], d["stride_m"])
    if kind == "tiles":
        return TileSource(d["folder"], d["zoom"], d["cell_m"], d["stride_m"])
    if kind == "split":
        from cvm.data import load_split

        split = load_split(d["dataset"], d["split"], d.get("root"), **d.get("load_options", {}))
        return SplitSource(split, d.get("cell_extent_m"), d.get("crs"), d.get("load_options"))
    raise CvmError(f"unknown gallery source kind {kind!r}")

"""A procedural 2.5-D city on a ground plane, stored as rasters, deterministic from a seed.

Coordinates are metres: x = easting (to the right in the aerial), y = northing (up in the aerial);
the world covers [0, size_m]^2. Rasters are row-major images at `resolution_m` metres per pixel
with row 0 at the north edge, so a north-up aerial tile is a plain crop: pixel (row r, col c) has
its centre at x = (c + 0.5) * res, y = size_m - (r + 0.5) * res.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import cv2
import numpy as np

from cvm.errors import CvmError

CLASSES = ("ground", "road", "building", "tree", "sky")
GROUND, ROAD, BUILDING, TREE, SKY = range(len(CLASSES))

# Sun: azimuth clockwise from north and elevation. Shared by the baked aerial shadows and the
# panorama's wall shading so that both views are lit alike; south-east so that the shadow march
# steps exactly one raster diagonal per step.
SUN_AZIMUTH_DEG = 135.0
SUN_ELEVATION_DEG = 50.0

# Streets cameras stand this far from the world edge by default: half the CVUSA aerial extent
# (~172 m across) plus slack, so aerial tiles stay inside the world.
DEFAULT_MARGIN_M = 100.0

# World size grows with the pair count (about one location per 10 m of road) up to this cap; a
# world of CAP m at 0.4 m/px holds 11 bytes/px of rasters (~170 MB at 1600 m) and peaks well under
# 1 GB while generating. Beyond the cap locations just get denser.
MIN_WORLD_SIZE_M = 400.0
MAX_WORLD_SIZE_M = 1600.0

# Surface codes used while drawing roads (before they become classes and colours).
_SURF_GROUND, _SURF_ASPHALT, _SURF_SIDEWALK, _SURF_WHITE, _SURF_YELLOW = range(5)

# Palettes in RGB (converted to BGR when the rasters are assembled).
_GRASS = (92, 128, 58)
_DRY = (150, 136, 96)
_DIRT = (128, 104, 78)
_FIELD_COLOURS = ((176, 162, 92), (112, 142, 60), (150, 118, 84), (196, 186, 120))
_ASPHALT = (84, 84, 90)
_SIDEWALK = (168, 165, 158)
_WHITE_PAINT = (228, 228, 222)
_YELLOW_PAINT = (222, 188, 62)
_ROOFS = ((162, 84, 62), (122, 122, 128), (74, 74, 80), (202, 200, 194), (132, 102, 82), (92, 122, 112),
          (180, 150, 120))
_WALLS = ((212, 196, 170), (226, 224, 218), (154, 84, 62), (162, 162, 160), (112, 142, 172), (196, 170, 130),
          (140, 120, 100))
_FOLIAGE_TOP = (62, 104, 44)
_FOLIAGE_SIDE = (46, 82, 36)


def world_size_for(n_pairs: int) -> float:
    """World side in metres for n pairs: clip(20 sqrt(n) + 2 margin, 400, 1600) (see MAX_WORLD_SIZE_M)."""
    size = 20.0 * math.sqrt(max(int(n_pairs), 1)) + 2.0 * DEFAULT_MARGIN_M
    return float(np.clip(round(size / 10.0) * 10.0, MIN_WORLD_SIZE_M, MAX_WORLD_SIZE_M))


@dataclasses.dataclass(eq=False)  # identity equality: comparing rasters elementwise is never meant
class World:
    """2.5-D rasters of the scene.

    Attributes:
      seed, size_m, resolution_m: generation parameters.
      top: [N, N, 3] BGR uint8 colour seen from above (roofs, crowns, ground) with baked shadows.
      height: [N, N] float32 height in metres of the surface (0 for ground and roads).
      side: [N, N, 3] BGR uint8 colour of an object's walls / sides as seen from the street.
      classes: [N, N] uint8 index into CLASSES.
      roads: [M, 5] float64 road segments (x0, y0, x1, y1, asphalt width) in metres.
    """

    seed: int
    size_m: float
    resolution_m: float
    top: np.ndarray
    height: np.ndarray
    side: np.ndarray
    classes: np.ndarray
    roads: np.ndarray

    @property
    def shape(self) -> tuple:
        return self.height.shape

    def to_pixel(self, xy) -> np.ndarray:
        """World metres -> raster (col, row) in pixel-centre coordinates: c = x/res - 0.5, r = (S - y)/res - 0.5."""
        xy = np.asarray(xy, dtype=np.float64)
        col = xy[..., 0] / self.resolution_m - 0.5
        row = (self.size_m - xy[..., 1]) / self.resolution_m - 0.5
        return np.stack([col, row], axis=-1)

    def class_at(self, xy) -> np.ndarray:
        """Class id of the raster cell containing each (x, y) (clipped to the world)."""
        flat = self.flat_index(np.asarray(xy, np.float64)[..., 0], np.asarray(xy, np.float64)[..., 1])
        return self.classes.ravel()[flat]

    def flat_index(self, x, y) -> np.ndarray:
        """Index into the raveled rasters of the cell containing (x, y), clipped to the world."""
        n_rows, n_cols = self.height.shape
        inv = 1.0 / self.resolution_m
        col = np.clip(np.floor(np.asarray(x) * inv), 0, n_cols - 1).astype(np.int64)
        row = np.clip(np.floor((self.size_m - np.asarray(y)) * inv), 0, n_rows - 1).astype(np.int64)
        return row * n_cols + col

    @classmethod
    def generate(cls, seed: int, size_m: float = 1000.0, resolution_m: float = 0.4) -> "World":
        """World from default_rng(seed) alone: noise ground, street grid + arterials, buildings, trees, shadows."""
        if size_m <= 0 or resolution_m <= 0:
            raise CvmError(f"world size and resolution must be positive, got {size_m} m and {resolution_m} m/px")
        return _generate(int(seed), float(size_m), float(resolution_m))

    def sample_locations(self, n: int, seed: int, margin_m: Optional[float] = None) -> np.ndarray:
        """[n, 2] float64 camera locations on asphalt, >= margin_m (default DEFAULT_MARGIN_M) from the edge.

        Uniform per metre of road, so a dense sampling puts neighbours a few metres apart (overlapping
        views). The seed is salted, so seed == the world's seed does not replay its random stream.
        """
        margin = DEFAULT_MARGIN_M if margin_m is None else float(margin_m)
        lo, hi = margin, self.size_m - margin
        if hi - lo < 10.0:
            raise CvmError(
                f"a {self.size_m:g} m world leaves no room for locations {margin:g} m from its edge; "
                "use a larger world or a smaller margin")
        rng = np.random.default_rng([int(seed), 0x10CA7])
        seg = self.roads
        p0, p1, width = seg[:, 0:2], seg[:, 2:4], seg[:, 4]
        # Keep segments that reach the sampling box; weight by length so density is even per metre.
        seg_lo, seg_hi = np.minimum(p0, p1) - width[:, None], np.maximum(p0, p1) + width[:, None]
        near = np.all((seg_hi > lo) & (seg_lo < hi), axis=1)
        if not np.any(near):
            raise CvmError("the world has no roads inside the sampling area")
        p0, p1, width = p0[near], p1[near], width[near]
        length = np.linalg.norm(p1 - p0, axis=1)
        prob = length / length.sum()
        direction = (p1 - p0) / np.maximum(length, 1e-9)[:, None]
        normal = np.stack([-direction[:, 1], direction[:, 0]], axis=1)
        out = np.empty((0, 2), np.float64)
        for _ in range(200):
            m = 2 * (n - len(out)) + 64
            idx = rng.choice(len(prob), size=m, p=prob)
            t = rng.random(m) * length[idx]
            lateral = rng.uniform(-1.0, 1.0, m) * np.maximum(width[idx] / 2.0 - 1.2, 0.3)
            xy = p0[idx] + direction[idx] * t[:, None] + normal[idx] * lateral[:, None]
            inside = np.all((xy >= lo) & (xy <= hi), axis=1)
            xy = xy[inside]
            flat = self.flat_index(xy[:, 0], xy[:, 1])
            # On asphalt with nothing overhead (trees are kept off asphalt, but be safe).
            ok = (self.classes.ravel()[flat] == ROAD) & (self.height.ravel()[flat] == 0)
            out = np.concatenate([out, xy[ok]])
            if len(out) >= n:
                return out[:n].copy()
        raise CvmError(f"could not place {n} locations on roads of this world")


def _generate(seed: int, size_m: float, res: float) -> World:
    rng = np.random.default_rng(seed)
    n = int(round(size_m / res))
    shape = (n, n)

    roads, arterials = _road_network(rng, size_m)
    surface = _draw_roads(roads, arterials, n, res, size_m)
    paved = surface != _SURF_GROUND
    asphalt_like = (surface == _SURF_ASPHALT) | (surface == _SURF_WHITE) | (surface == _SURF_YELLOW)

    building_id, gable, b_height, b_roof, b_wall = _draw_buildings(rng, roads, n, res, size_m)
    # Clip buildings off roads and sidewalks; drop those mostly cut away (thin slivers look like poles).
    area_before = np.bincount(building_id.ravel(), minlength=len(b_height))
    building_id[paved] = 0
    area_after = np.bincount(building_id.ravel(), minlength=len(b_height))
    sliver = (area_after < 0.6 * area_before) | (area_after * res * res < 30.0)
    sliver[0] = False
    if np.any(sliver):
        building_id[sliver[building_id]] = 0
    gable = (gable == building_id) & (building_id > 0)  # a half only shades its own building
    is_building = building_id > 0

    tree_height, tree_shade = _draw_trees(rng, roads, surface, is_building, n, res, size_m)
    tree_height[asphalt_like | is_building] = 0.0
    is_tree = tree_height > 0

    classes = np.zeros(shape, np.uint8)
    classes[paved] = ROAD
    classes[is_building] = BUILDING
    classes[is_tree] = TREE

    height = tree_height  # reuse the buffer: trees then buildings
    height[is_building] = b_height[building_id[is_building]]

    # Noise fields (float32 in ~[0, 1]): low-frequency land use, mid-frequency patches, pixel grain.
    land_use = _value_noise(rng, shape, cells=max(2, int(size_m / 180.0)), octaves=3)
    patches = _value_noise(rng, shape, cells=max(4, int(size_m / 25.0)), octaves=3)
    grain = rng.random(shape, dtype=np.float32)
    cv2.GaussianBlur(grain, (3, 3), 0.6, dst=grain)

    # Colour buffers are BGR uint8 from the start and written through masks or row bands, because
    # full-size float32 colour temporaries would dominate the peak memory of large worlds.
    top = _ground_colours(rng, land_use, patches, grain, size_m, res)
    del land_use
    _paint_roads(top, surface, patches, grain)
    del surface, paved, asphalt_like
    side = top.copy()

    # Roofs: per-building colour, gable halves darker, a darker rim so footprints read clearly.
    ids = building_id[is_building]
    roof_shade = 1.0 - 0.22 * gable[is_building].astype(np.float32)
    roof_shade[_footprint_rim(building_id)[is_building]] *= 0.8
    b_grain = grain[is_building]
    roof_shade *= 0.94 + 0.12 * b_grain
    top[is_building] = _bgr(b_roof[ids] * roof_shade[:, None])
    side[is_building] = _bgr(b_wall[ids] * (0.95 + 0.1 * b_grain)[:, None])
    del ids, roof_shade, b_grain, gable, building_id

    t_grain, t_patch = grain[is_tree], patches[is_tree]
    top[is_tree] = _bgr(np.asarray(_FOLIAGE_TOP, np.float32) * (
        tree_shade[is_tree] * (0.8 + 0.4 * t_patch) * (0.85 + 0.3 * t_grain))[:, None])
    side[is_tree] = _bgr(np.asarray(_FOLIAGE_SIDE, np.float32) * (
        (0.8 + 0.4 * t_grain) * (0.85 + 0.3 * t_patch))[:, None])
    del t_grain, t_patch, patches, grain, tree_shade

    shadow = _sun_shadow(height, res)
    top[shadow] = _bgr(top[shadow][:, ::-1] * np.asarray([0.52, 0.55, 0.66], np.float32))  # bluish shade
    del shadow
    return World(seed=seed, size_m=size_m, resolution_m=res, top=top, height=height, side=side,
                 classes=classes, roads=np.concatenate([roads, arterials]))


def _bgr(rgb: np.ndarray) -> np.ndarray:
    """RGB float [..., 3] -> BGR uint8 (rounded, clipped)."""
    return np.clip(rgb[..., ::-1] + 0.5, 0, 255).astype(np.uint8)


def _road_network(rng: np.random.Generator, size_m: float):
    """Jittered, rotated grid of streets plus one or two curving arterials; [M, 5] segment arrays."""
    centre = np.array([size_m / 2.0, size_m / 2.0])
    half = size_m * 0.75  # grid covers the world's circumscribed circle (half-diagonal 0.707)
    angle = rng.uniform(0.0, np.pi / 2.0)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])

    def axis_positions():
        pos = [-half - rng.uniform(0, 40)]
        while pos[-1] < half:
            pos.append(pos[-1] + rng.uniform(70.0, 130.0))
        return np.asarray(pos)

    u, v = axis_positions(), axis_positions()
    uu, vv = np.meshgrid(u, v, indexing="ij")
    nodes = np.stack([uu, vv], axis=-1) + rng.normal(0.0, 7.0, uu.shape + (2,))
    nodes = nodes @ rot.T + centre
    widths_u = rng.uniform(6.0, 10.0, len(u))  # one width per street (constant along it)
    widths_v = rng.uniform(6.0, 10.0, len(v))
    segments = []
    for i in range(len(u)):
        for j in range(len(v)):
            if i + 1 < len(u):
                segments.append((*nodes[i, j], *nodes[i + 1, j], widths_v[j]))
            if j + 1 < len(v):
                segments.append((*nodes[i, j], *nodes[i, j + 1], widths_u[i]))
    seg = np.asarray(segments, np.float64)
    # Drop some segments (dead ends, T-junctions, big blocks), and those far outside the world.
    seg = seg[rng.random(len(seg)) > 0.12]
    lo, hi = np.minimum(seg[:, 0:2], seg[:, 2:4]), np.maximum(seg[:, 0:2], seg[:, 2:4])
    seg = seg[np.all((hi > -20.0) & (lo < size_m + 20.0), axis=1)]

    arterials = []
    for _ in range(int(rng.integers(1, 3))):
        heading = rng.uniform(0, np.pi)
        d = np.array([np.cos(heading), np.sin(heading)])
        nrm = np.array([-d[1], d[0]])
        offset = rng.uniform(-0.3, 0.3) * size_m
        amp, wavelength, phase = rng.uniform(20, 60), rng.uniform(300, 700), rng.uniform(0, 2 * np.pi)
        width = rng.uniform(10.0, 12.0)
        t = np.arange(-half, half + 20.0, 20.0)
        pts = centre + np.outer(t, d) + np.outer(offset + amp * np.sin(2 * np.pi * t / wavelength + phase), nrm)
        arterials.extend((*pts[k], *pts[k + 1], width) for k in range(len(pts) - 1))
    art = np.asarray(arterials, np.float64)
    lo, hi = np.minimum(art[:, 0:2], art[:, 2:4]), np.maximum(art[:, 0:2], art[:, 2:4])
    art = art[np.all((hi > -20.0) & (lo < size_m + 20.0), axis=1)]
    return seg, art


def _to_fixed(xy: np.ndarray, res: float, size_m: float, shift: int = 2) -> np.ndarray:
    """World metres -> cv2 drawing coordinates (col, row) with `shift` fractional bits."""
    col = xy[..., 0] / res - 0.5
    row = (size_m - xy[..., 1]) / res - 0.5
    return np.round(np.stack([col, row], axis=-1) * (1 << shift)).astype(np.int64)


def _draw_roads(roads: np.ndarray, arterials: np.ndarray, n: int, res: float, size_m: float) -> np.ndarray:
    """Surface-code raster: sidewalks, asphalt, then dashed centre lines and solid edge lines."""
    surface = np.zeros((n, n), np.uint8)
    every = np.concatenate([roads, arterials])
    ends = _to_fixed(every[:, 0:4].reshape(-1, 2, 2), res, size_m)
    for (a, b), w in zip(ends, every[:, 4]):
        cv2.line(surface, tuple(map(int, a)), tuple(map(int, b)), _SURF_SIDEWALK,
                 max(1, int(round((w + 4.0) / res))), cv2.LINE_8, 2)
    for (a, b), w in zip(ends, every[:, 4]):
        cv2.line(surface, tuple(map(int, a)), tuple(map(int, b)), _SURF_ASPHALT,
                 max(1, int(round(w / res))), cv2.LINE_8, 2)
    paint = max(1, int(round(0.2 / res)))
    for k, seg in enumerate(every):
        p0, p1, w = seg[0:2], seg[2:4], seg[4]
        length = float(np.linalg.norm(p1 - p0))
        clear = 8.0 if k < len(roads) else 0.0  # keep street paint out of junctions
        if length <= 2 * clear + 3.0:
            continue
        d = (p1 - p0) / length
        nrm = np.array([-d[1], d[0]])
        lines = []
        for side in (-1.0, 1.0):  # solid edge lines
            off = nrm * side * (w / 2.0 - 0.5)
            lines.append((p0 + d * clear + off, p1 - d * clear + off, _SURF_WHITE))
        if k < len(roads):  # dashed white centre line: 3 m dash, 6 m gap
            starts = np.arange(clear, length - clear - 3.0, 9.0)
            lines.extend((p0 + d * s, p0 + d * (s + 3.0), _SURF_WHITE) for s in starts)
        else:  # arterial: double yellow centre line
            for side in (-1.0, 1.0):
                lines.append((p0 + nrm * side * 0.25, p1 + nrm * side * 0.25, _SURF_YELLOW))
        for a, b, code in lines:
            fa, fb = _to_fixed(np.stack([a, b]), res, size_m)
            cv2.line(surface, tuple(map(int, fa)), tuple(map(int, fb)), code, paint, cv2.LINE_8, 2)
    return surface


def _draw_buildings(rng: np.random.Generator, roads: np.ndarray, n: int, res: float, size_m: float):
    """Rows of box buildings facing each street; returns the id raster, gable-half id raster, per-id tables."""
    downtown = rng.uniform(0.3, 0.7, 2) * size_m
    sigma = 0.3 * size_m
    polys, halves, heights = [], [], []
    for x0, y0, x1, y1, w in roads:
        p0, p1 = np.array([x0, y0]), np.array([x1, y1])
        length = float(np.linalg.norm(p1 - p0))
        d = (p1 - p0) / max(length, 1e-9)
        nrm = np.array([-d[1], d[0]])
        for side in (-1.0, 1.0):
            t = 10.0 + rng.uniform(0, 6)
            while True:
                frontage, depth = rng.uniform(8.0, 24.0), rng.uniform(8.0, 20.0)
                if t + frontage > length - 10.0:
                    break
                setback = rng.uniform(1.0, 6.0)
                if rng.random() > 0.22:  # else an empty lot (grass, trees)
                    centre = p0 + d * (t + frontage / 2) + nrm * side * (w / 2 + 2.0 + setback + depth / 2)
                    fu, fn = d * frontage / 2, nrm * depth / 2
                    polys.append(np.stack([centre - fu - fn, centre + fu - fn, centre + fu + fn, centre - fu + fn]))
                    halves.append(rng.random() < 0.5)
                    dist2 = float(np.sum((centre - downtown) ** 2))
                    local_max = 8.0 + 32.0 * math.exp(-dist2 / (2 * sigma * sigma))
                    heights.append(3.0 + (local_max - 3.0) * rng.beta(1.4, 3.0))
                t += frontage + rng.uniform(1.0, 8.0)
    count = len(polys)
    building_id = np.zeros((n, n), np.int32)
    gable = np.zeros((n, n), np.int32)  # id of the building whose darker roof half covers the pixel
    if count:
        fixed = _to_fixed(np.asarray(polys), res, size_m)  # [B, 4, 2]
        for i in range(count):
            cv2.fillPoly(building_id, [fixed[i].astype(np.int32)], i + 1, cv2.LINE_8, 2)
            if halves[i]:  # one half of a gable roof (split along the ridge, parallel to the street)
                a, b, c, e = fixed[i]
                half = np.stack([a, b, (b + c) // 2, (a + e) // 2]).astype(np.int32)
                cv2.fillPoly(gable, [half], i + 1, cv2.LINE_8, 2)
    roof_idx = rng.integers(0, len(_ROOFS), count + 1)
    # Building styles: most walls go with their roof (as real building styles loosely do), so that
    # appearance as well as layout links the two views; the rest are free combinations.
    styled = rng.random(count + 1) < 0.75
    wall_idx = np.where(styled, roof_idx % len(_WALLS), rng.integers(0, len(_WALLS), count + 1))
    roof = np.asarray(_ROOFS, np.float32)[roof_idx] * rng.uniform(0.85, 1.12, (count + 1, 1)).astype(np.float32)
    wall = np.asarray(_WALLS, np.float32)[wall_idx] * rng.uniform(0.85, 1.1, (count + 1, 1)).astype(np.float32)
    b_height = np.concatenate([[0.0], np.clip(heights, 3.0, 40.0)]).astype(np.float32)
    return building_id, gable, b_height, roof, wall


def _draw_trees(rng, roads, surface, is_building, n, res, size_m):
    """Round crowns (dome-shaped heights) in open land and along streets; returns heights and shading."""
    free = (surface == _SURF_GROUND) & ~is_building
    # Open-land trees: clustered by thinning uniform candidates with a low-frequency noise.
    count = int(size_m * size_m / 250.0)
    cand = rng.uniform(0, size_m, (count, 2))
    density = _value_noise(rng, (64, 64), cells=6, octaves=2)
    cell = np.clip((cand / size_m * 64).astype(int), 0, 63)
    keep = rng.random(count) < density[63 - cell[:, 1], cell[:, 0]] ** 2
    cand = cand[keep]
    # Street trees: along the sidewalks every ~12 m on some streets.
    street = []
    for x0, y0, x1, y1, w in roads:
        if rng.random() < 0.5:
            continue
        p0, p1 = np.array([x0, y0]), np.array([x1, y1])
        length = float(np.linalg.norm(p1 - p0))
        d = (p1 - p0) / max(length, 1e-9)
        nrm = np.array([-d[1], d[0]])
        for s in np.arange(12.0, length - 12.0, rng.uniform(10.0, 16.0)):
            for side in (-1.0, 1.0):
                street.append(p0 + d * s + nrm * side * (w / 2 + 3.5 + rng.uniform(0, 1.5)))
    centres = np.concatenate([cand, np.asarray(street).reshape(-1, 2)])
    flat_ok = free.ravel()[_flat_clip(centres, n, res, size_m)] | _on_sidewalk(surface, centres, n, res, size_m)
    centres = centres[flat_ok]
    radius = rng.uniform(2.0, 5.0, len(centres))
    top = np.clip(2.2 * radius + rng.uniform(-1.0, 4.0, len(centres)), 4.0, 15.0)

    # Rasterise each crown's id, then compute the dome height per crown pixel in one vectorised pass.
    tree_id = np.zeros((n, n), np.int32)
    fixed = _to_fixed(centres, res, size_m, shift=0)
    order = np.argsort(top)  # taller crowns drawn last so they win overlaps
    for i in order:
        cv2.circle(tree_id, (int(fixed[i, 0]), int(fixed[i, 1])), max(1, int(round(radius[i] / res))),
                   int(i + 1), -1, cv2.LINE_8)
    rows, cols = np.nonzero(tree_id)
    ids = tree_id[rows, cols] - 1
    del tree_id
    dx = (cols + 0.5) * res - centres[ids, 0]
    dy = (size_m - (rows + 0.5) * res) - centres[ids, 1]
    rr = np.clip((dx * dx + dy * dy) / radius[ids] ** 2, 0.0, 1.0)
    dome = np.sqrt(1.0 - rr)
    heights = np.zeros((n, n), np.float32)
    heights[rows, cols] = top[ids] * (0.6 + 0.4 * dome)
    # Crown shading: Lambert on the dome normal (dx, dy, dome * r) against the sun direction.
    sun = _sun_vector()
    nz = dome * radius[ids]
    lambert = (dx * sun[0] + dy * sun[1] + nz * sun[2]) / np.sqrt(dx * dx + dy * dy + nz * nz + 1e-9)
    shade = np.ones((n, n), np.float32)
    shade[rows, cols] = 0.6 + 0.5 * np.clip(lambert, 0.0, 1.0)
    return heights, shade


def _flat_clip(xy, n, res, size_m):
    col = np.clip((xy[:, 0] / res).astype(np.int64), 0, n - 1)
    row = np.clip(((size_m - xy[:, 1]) / res).astype(np.int64), 0, n - 1)
    return row * n + col


def _on_sidewalk(surface, xy, n, res, size_m):
    return surface.ravel()[_flat_clip(xy, n, res, size_m)] == _SURF_SIDEWALK


def _sun_vector() -> np.ndarray:
    """Unit vector (east, north, up) towards the sun."""
    az, el = np.deg2rad(SUN_AZIMUTH_DEG), np.deg2rad(SUN_ELEVATION_DEG)
    return np.array([np.sin(az) * np.cos(el), np.cos(az) * np.cos(el), np.sin(el)])


def _value_noise(rng: np.random.Generator, shape: tuple, cells: int, octaves: int, persistence: float = 0.5):
    """Multi-octave value noise in ~[0, 1]: sum_o p^o * cubic_upsample(uniform grid of cells * 2^o)."""
    out = np.zeros(shape, np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        k = cells * (2 ** o)
        grid = rng.random((k + 1, k + 1), dtype=np.float32)
        layer = cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
        cv2.scaleAdd(layer, amp, out, dst=out)
        total += amp
        amp *= persistence
    out *= 1.0 / total
    return out


def _ground_colours(rng, land_use, patches, grain, size_m, res, band_rows=256):
    """BGR uint8 ground: grass/dry grass/dirt blended by land use, plus striped crop fields."""
    n = land_use.shape[0]
    cells = max(2, int(size_m / 90.0))
    field_code = rng.integers(0, 1 << 16, (cells, cells))
    is_field = rng.random((cells, cells)) < 0.3
    palette = np.asarray(_FIELD_COLOURS, np.float32)
    cols = np.arange(n)
    cell_col = cols * cells // n
    top = np.empty((n, n, 3), np.uint8)
    for r0 in range(0, n, band_rows):
        r1 = min(n, r0 + band_rows)
        lu = land_use[r0:r1]
        t_dry = np.clip((lu - 0.52) * 6.0, 0.0, 1.0)
        t_dirt = np.clip((0.42 - lu) * 6.0, 0.0, 1.0)
        t_grass = 1.0 - np.maximum(t_dry, t_dirt)
        rgb = (t_grass[..., None] * np.asarray(_GRASS, np.float32) + t_dry[..., None] * np.asarray(_DRY, np.float32)
               + t_dirt[..., None] * np.asarray(_DIRT, np.float32))
        # Crop fields: square cells of a coarse grid, striped at a per-field angle and period.
        rows = np.arange(r0, r1)
        cell_row = rows * cells // n
        field = is_field[cell_row[:, None], cell_col[None, :]] & (lu > 0.45)
        if np.any(field):
            fr, fc = np.nonzero(field)
            code = field_code[cell_row[fr], cell_col[fc]]
            angle = (code % 180) * (np.pi / 180.0)
            period = 2.0 + (code // 180 % 5)
            coord = (fc * np.cos(angle) + (fr + r0) * np.sin(angle)) * res
            stripe = (0.85 + 0.15 * np.sin(2 * np.pi * coord / period)).astype(np.float32)
            rgb[fr, fc] = palette[code // 7 % len(palette)] * stripe[:, None]
        rgb *= ((0.78 + 0.44 * patches[r0:r1]) * (0.9 + 0.2 * grain[r0:r1]))[..., None]
        top[r0:r1] = _bgr(rgb)
    return top


def _paint_roads(top, surface, patches, grain):
    """Asphalt (patchy), sidewalks and paint over the ground colours, in place."""
    for code, rgb, texture in ((_SURF_ASPHALT, _ASPHALT, 0.25), (_SURF_SIDEWALK, _SIDEWALK, 0.12),
                               (_SURF_WHITE, _WHITE_PAINT, 0.05), (_SURF_YELLOW, _YELLOW_PAINT, 0.05)):
        mask = surface == code
        if not np.any(mask):
            continue
        tone = (1.0 - texture / 2) + texture * (0.5 * patches[mask] + 0.5 * grain[mask])
        top[mask] = _bgr(np.asarray(rgb, np.float32) * tone[:, None])


def _footprint_rim(building_id: np.ndarray) -> np.ndarray:
    """Building pixels whose 4-neighbourhood touches another id (the roof's outline)."""
    rim = np.zeros(building_id.shape, bool)
    rim[1:, :] |= building_id[1:, :] != building_id[:-1, :]
    rim[:-1, :] |= building_id[:-1, :] != building_id[1:, :]
    rim[:, 1:] |= building_id[:, 1:] != building_id[:, :-1]
    rim[:, :-1] |= building_id[:, :-1] != building_id[:, 1:]
    return rim & (building_id > 0)


def _sun_shadow(height: np.ndarray, res: float) -> np.ndarray:
    """Boolean shadow mask: max_t h(p + t v) - t drop > h(p) + eps, by max-plus doubling over t.

    v is the integer pixel step towards the sun (closest of the 8 directions) and drop the rise of
    the sun ray per step (|v| res tan(elevation)). Doubling M_2m(p) = max(M_m(p), M_m(p + m v) - m drop)
    covers shifts 1..2m, so log2(max_height / drop) full-raster maxima replace a per-step march.
    """
    az = np.deg2rad(SUN_AZIMUTH_DEG)
    dcol, drow = int(np.round(np.sin(az))), int(np.round(-np.cos(az)))  # rows grow southwards
    drop = float(np.hypot(dcol, drow) * res * np.tan(np.deg2rad(SUN_ELEVATION_DEG)))
    max_h = float(height.max())
    if max_h <= 0:
        return np.zeros(height.shape, bool)
    reach = np.full(height.shape, -np.inf, np.float32)
    _shifted_max(reach, height, dcol, drow, 0.0)
    reach -= drop
    span, steps = 1, int(np.ceil(max_h / drop))
    while span < steps:
        _shifted_max(reach, reach.copy(), dcol * span, drow * span, span * drop)
        span *= 2
    return reach > height + 0.3


def _shifted_max(dst: np.ndarray, src: np.ndarray, dcol: int, drow: int, minus: float) -> None:
    """dst(p) = max(dst(p), src(p + (drow, dcol)) - minus) where p + shift is inside the raster."""
    n_rows, n_cols = src.shape
    r0, r1 = max(0, -drow), min(n_rows, n_rows - drow)
    c0, c1 = max(0, -dcol), min(n_cols, n_cols - dcol)
    if r0 >= r1 or c0 >= c1:
        return
    shifted = src[r0 + drow:r1 + drow, c0 + dcol:c1 + dcol]
    if minus:
        shifted = shifted - minus
    np.maximum(dst[r0:r1, c0:c1], shifted, out=dst[r0:r1, c0:c1])

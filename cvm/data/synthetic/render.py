"""Aerial tiles and street-level panoramas rendered from a `World`.

Panorama convention (CVUSA): equirectangular, horizon between the two middle rows, azimuth
(clockwise from north) of column j's centre = heading + fov * ((j + 0.5) / width - 0.5), so with
heading 0 and a 360-degree fov column 0 looks south and the columns sweep S -> W -> N -> E with
north at the centre column. Row i's centre has elevation vfov * (0.5 - (i + 0.5) / height).
"""

from __future__ import annotations

import functools
from typing import Optional

import cv2
import numpy as np

from cvm.data.synthetic.world import BUILDING, GROUND, SKY, SUN_AZIMUTH_DEG, TREE, World

# Sky gradient (BGR) from the horizon to the zenith; distant surfaces fade towards it.
_SKY_HORIZON = np.array([232, 216, 200], np.float32)
_SKY_ZENITH = np.array([212, 146, 86], np.float32)
_FOG_DISTANCE_M = 700.0  # mild: 1 - exp(-150/700) ~ 19% fog at the default max range
_FLOOR_M, _BAY_M = 3.2, 3.5  # window grid on building walls


def render_aerial(world: World, xy, size_px: int = 256, metres_per_pixel: float = 0.5, heading_deg: float = 0.0,
                  with_classes: bool = False):
    """Orthographic tile centred on xy: BGR uint8 [size, size, 3] (+ class map [size, size] uint8).

    North-up by default; heading_deg rotates the tile so that its up direction is that azimuth.
    Output pixel (u, v) shows the point xy + a * right + b * up, a = (u + 0.5 - size/2) mpp,
    b = (size/2 - v - 0.5) mpp; colours are bilinear (area-averaged when mpp > 1.25 x the raster's),
    classes nearest.
    """
    flags = cv2.WARP_INVERSE_MAP
    scale = metres_per_pixel / world.resolution_m
    if scale > 1.25:
        # Minifying: warp at about the raster's resolution, then area-average down (no aliasing of
        # lane dashes and field stripes). The intermediate tile covers exactly the same extent.
        fine = int(round(size_px * scale))
        matrix = _aerial_matrix(world, xy, fine, size_px * metres_per_pixel / fine, heading_deg)
        image = cv2.warpAffine(world.top, matrix, (fine, fine), flags=flags | cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
        image = cv2.resize(image, (size_px, size_px), interpolation=cv2.INTER_AREA)
    else:
        matrix = _aerial_matrix(world, xy, size_px, metres_per_pixel, heading_deg)
        image = cv2.warpAffine(world.top, matrix, (size_px, size_px), flags=flags | cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
    if not with_classes:
        return image
    matrix = _aerial_matrix(world, xy, size_px, metres_per_pixel, heading_deg)
    classes = cv2.warpAffine(world.classes, matrix, (size_px, size_px), flags=flags | cv2.INTER_NEAREST,
                             borderMode=cv2.BORDER_REPLICATE)
    return image, classes


def _aerial_matrix(world: World, xy, size_px: int, mpp: float, heading_deg: float) -> np.ndarray:
    """2x3 affine from output pixel (u, v) to raster (col, row), for WARP_INVERSE_MAP.

    World point p = xy + (u + 0.5 - size/2) mpp right + (size/2 - v - 0.5) mpp up, then
    col = p_x / res - 0.5 and row = (S - p_y) / res - 0.5.
    """
    theta = np.deg2rad(heading_deg)
    right = np.array([np.cos(theta), -np.sin(theta)])  # (east, north) of the tile's +u axis
    up = np.array([np.sin(theta), np.cos(theta)])
    du, dv = mpp * right, -mpp * up  # metres per output pixel step along u and v
    origin = np.asarray(xy, np.float64)[:2] + (0.5 - size_px / 2.0) * (du + dv)  # centre of pixel (0, 0)
    inv_res = 1.0 / world.resolution_m
    col = np.array([du[0], dv[0], origin[0]]) * inv_res - np.array([0.0, 0.0, 0.5])
    row = np.array([-du[1], -dv[1], world.size_m - origin[1]]) * inv_res - np.array([0.0, 0.0, 0.5])
    return np.stack([col, row])


def render_panorama(world: World, xy, height_px: int = 128, width_px: int = 512, camera_height_m: float = 2.0,
                    heading_deg: float = 0.0, fov_deg: float = 360.0, vfov_deg: Optional[float] = None,
                    max_range_m: float = 150.0, with_classes: bool = False):
    """Equirectangular street view at xy by 2.5-D heightfield ray casting: BGR uint8 [H, W, 3] (+ classes).

    Each column's ray samples the height map at K distances d_k; the sample tops' slopes
    s_k = (h_k - cam_h) / d_k are made monotone by a running max, and row i (slope tan e_i) sees the
    first sample with max_{k' <= k} s_k' >= tan e_i (one searchsorted over all columns at once).
    The hit is a wall when the ray passes under the object's top at the sample's near edge
    (tan e_i < (h_k - cam_h) / d_{k-1}), else a top surface, coloured at the exact intersection
    d = (h_k - cam_h) / tan e_i. vfov defaults to height / width * fov (square pixels).
    """
    n_rows, n_cols = int(height_px), int(width_px)
    vfov = n_rows / n_cols * fov_deg if vfov_deg is None else float(vfov_deg)
    cam_x, cam_y = float(xy[0]), float(xy[1])
    res, size = world.resolution_m, world.size_m
    raster_rows, raster_cols = world.height.shape

    # Column azimuths; mod 360 keeps dyadic values exact so heading offsets reproduce np.roll exactly.
    azimuth = np.mod(heading_deg + fov_deg * ((np.arange(n_cols) + 0.5) / n_cols - 0.5), 360.0)
    sin_az, cos_az = np.sin(np.deg2rad(azimuth)), np.cos(np.deg2rad(azimuth))
    elevation = np.deg2rad(vfov * (0.5 - (np.arange(n_rows) + 0.5) / n_rows))
    tan_e = np.tan(elevation)
    dist, d_far_tab, d_near_tab, d_wall_tab = _ray_distances(float(max_range_m), res,
                                                             float(np.deg2rad(vfov) / n_rows))
    n_samples = len(dist)

    # Height samples along every column's ray: [W, K].
    inv = 1.0 / res
    col = np.floor((cam_x + np.outer(sin_az, dist)) * inv)
    row = np.floor((size - cam_y - np.outer(cos_az, dist)) * inv)
    np.clip(col, 0, raster_cols - 1, out=col)
    np.clip(row, 0, raster_rows - 1, out=row)
    flat = row.astype(np.int64) * raster_cols + col.astype(np.int64)
    heights = world.height.ravel()[flat]
    slope = (heights - camera_height_m) / dist
    np.maximum.accumulate(slope, axis=1, out=slope)

    # First sample reaching each row: keys offset per column so one sorted array holds all columns.
    limit = float(max(np.abs(slope).max(), np.abs(tan_e).max())) + 1.0
    offset = 2.0 * limit * np.arange(n_cols, dtype=np.float64)
    keys = (slope.astype(np.float64) + offset[:, None]).ravel()
    queries = tan_e[::-1][None, :] + offset[:, None]  # ascending within each column
    found = np.searchsorted(keys, queries.ravel(), side="left").reshape(n_cols, n_rows)
    column_base = np.arange(n_cols) * n_samples
    k = np.ascontiguousarray((found - column_base[:, None])[:, ::-1].T)  # [H, W] sample index per pixel
    hit = k < n_samples
    np.minimum(k, n_samples - 1, out=k)

    # Per-pixel geometry in float32 (metres and raster pixels stay well within its precision).
    hit_flat = flat.ravel()[k + column_base[None, :]]
    hit_h = world.height.ravel()[hit_flat]
    d_far, d_near = d_far_tab[k], d_near_tab[k]
    t_row = tan_e.astype(np.float32)[:, None]
    rise = hit_h - np.float32(camera_height_m)
    wall = hit & (t_row * np.maximum(d_near, np.float32(1e-6)) < rise)
    # Top surfaces: exact intersection of the ray with the plane z = h_k inside the sample's cell.
    descending = t_row < 0
    d_top = np.where(descending, rise / np.where(descending, t_row, np.float32(-1.0)), d_far)
    np.clip(d_top, d_near, d_far, out=d_top)
    d_hit = np.where(wall, d_wall_tab[k], d_top)

    # Top colours bilinear at the exact hit; wall colours and classes from the hit cell.
    sin32, cos32 = (sin_az * inv).astype(np.float32), (cos_az * inv).astype(np.float32)
    map_x = np.float32(cam_x * inv - 0.5) + d_hit * sin32[None, :]
    map_y = np.float32((size - cam_y) * inv - 0.5) - d_hit * cos32[None, :]
    colour = cv2.remap(world.top, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    top_col = np.clip(np.floor(map_x + 0.5), 0, raster_cols - 1).astype(np.int64)
    top_row = np.clip(np.floor(map_y + 0.5), 0, raster_rows - 1).astype(np.int64)
    classes = np.where(wall, world.classes.ravel()[hit_flat], world.classes.ravel()[top_row * raster_cols + top_col])

    if np.any(wall):
        _shade_walls(world, colour, wall, hit_flat, hit_h, sin_az, cos_az, d_hit, tan_e, map_x, map_y,
                     camera_height_m, classes)

    # Mild distance fog: blend towards the background (sky gradient above the horizon, its horizon
    # colour below), which is also what rays that hit nothing see. One cv2.blendLinear pass.
    visibility = np.exp(d_hit * np.float32(-1.0 / _FOG_DISTANCE_M))
    visibility[~hit] = 0.0
    image = cv2.blendLinear(colour, _background(n_rows, float(vfov), n_cols), visibility, 1.0 - visibility)
    # Rays below the horizon that end beyond max range see far ground: fog colour, ground class.
    above = (elevation >= 0)[:, None]
    classes[~hit & above] = SKY
    classes[~hit & ~above] = GROUND
    if with_classes:
        return image, classes.astype(np.uint8)
    return image


def _shade_walls(world, colour, wall, hit_flat, hit_h, sin_az, cos_az, d_hit, tan_e, map_x, map_y, cam_h,
                 classes) -> None:
    """Paint wall pixels of `colour` in place: sun shading of the facing side, windows on buildings.

    Buildings: the face is x-facing (normal -sign(sin az) east) when the raster cell before the hit
    along x is lower, else y-facing (crisp box faces). Trees: normal = -grad h (round crowns).
    Brightness is 0.6 + 0.4 max(0, n . sun_horizontal).
    """
    n_rows, n_cols = world.height.shape
    flat_h = world.height.ravel()
    pix_row, pix_col = np.nonzero(wall)
    idx = hit_flat[pix_row, pix_col]
    h = hit_h[pix_row, pix_col]
    sx, sy = np.sign(sin_az)[pix_col], np.sign(cos_az)[pix_col]
    row, col = np.divmod(idx, n_cols)
    base = idx - col
    x_face = flat_h[base + np.clip(col - sx, 0, n_cols - 1).astype(np.int64)] < h - 0.5
    sun_az = np.deg2rad(SUN_AZIMUTH_DEG)
    sun_e, sun_n = np.sin(sun_az), np.cos(sun_az)
    lit = np.where(x_face, -sx * sun_e, -sy * sun_n)
    cls = classes[pix_row, pix_col]
    tree = cls == TREE
    if np.any(tree):
        r, c, b = row[tree], col[tree], base[tree]
        grad_e = flat_h[b + np.minimum(c + 1, n_cols - 1)] - flat_h[b + np.maximum(c - 1, 0)]
        grad_n = flat_h[np.maximum(r - 1, 0) * n_cols + c] - flat_h[np.minimum(r + 1, n_rows - 1) * n_cols + c]
        norm = np.hypot(grad_e, grad_n) + 1e-6
        lit[tree] = -(grad_e * sun_e + grad_n * sun_n) / norm
    shade = (0.6 + 0.4 * np.clip(lit, 0.0, 1.0)).astype(np.float32)
    rgb = world.side.reshape(-1, 3)[idx].astype(np.float32) * shade[:, None]

    # Windows: floors of _FLOOR_M, bays of _BAY_M along the face, none in the parapet.
    d = d_hit[pix_row, pix_col]
    z = cam_h + d * tan_e[pix_row]
    res = world.resolution_m
    hit_x = (map_x[pix_row, pix_col] + 0.5) * res
    hit_y = world.size_m - (map_y[pix_row, pix_col] + 0.5) * res
    along = np.where(x_face, hit_y, hit_x)  # position along the face: northing on x-facing walls
    fz, fa = np.mod(z, _FLOOR_M), np.mod(along, _BAY_M)
    window = ((cls == BUILDING) & (fz > 0.9) & (fz < 2.3) & (fa > 0.9) & (fa < 2.6) & (z > 0.8) & (z < h - 0.7))
    rgb[window] = rgb[window] * 0.3 + np.array([70, 60, 50], np.float32)
    colour[pix_row, pix_col] = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=32)
def _background(n_rows: int, vfov_deg: float, n_cols: int) -> np.ndarray:
    """[H, W, 3] uint8 sky: horizon colour -> zenith colour with t = (e / 90 deg)^0.6 above the horizon."""
    elevation = np.deg2rad(vfov_deg * (0.5 - (np.arange(n_rows) + 0.5) / n_rows))
    t = (np.clip(elevation / (np.pi / 2), 0.0, 1.0) ** 0.6)[:, None]
    rows = _SKY_HORIZON[None, :] * (1.0 - t) + _SKY_ZENITH[None, :] * t
    image = np.ascontiguousarray(np.broadcast_to(np.clip(rows + 0.5, 0, 255).astype(np.uint8)[:, None, :],
                                                 (n_rows, n_cols, 3)))
    image.setflags(write=False)
    return image


@functools.lru_cache(maxsize=32)
def _ray_distances(max_range_m: float, resolution_m: float, pixel_rad: float):
    """Sample distances: d_{k+1} = d_k + max(res / 2, d_k * step), from 0.5 m to max range.

    Linear near the camera (finer than the raster is useless), geometric further out with a relative
    step of about two pixel angles, capped to [0.015, 0.04] so thin objects are not skipped.
    Returns (d float64, and float32 tables of the far edge d_k, the near edge d_{k-1} (0 for k = 0)
    and the wall distance: the near edge, or d_0 when the camera stands inside an object).
    """
    step = float(np.clip(2.0 * pixel_rad, 0.015, 0.04))
    out = [0.5]
    while out[-1] < max_range_m:
        out.append(out[-1] + max(resolution_m / 2.0, out[-1] * step))
    dist = np.asarray(out, np.float64)
    dist[-1] = max_range_m
    far = dist.astype(np.float32)
    near = np.concatenate([[0.0], dist[:-1]]).astype(np.float32)
    wall = np.where(np.arange(len(dist)) > 0, near, far).astype(np.float32)
    for table in (dist, far, near, wall):
        table.setflags(write=False)
    return dist, far, near, wall

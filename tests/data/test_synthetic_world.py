"""Synthetic world: determinism, renderer shapes and conventions, occlusion, cross-view consistency."""

import dataclasses

import cv2
import numpy as np
import pytest
import scipy.ndimage

from cvm.data.polar import polar_transform
from cvm.data.synthetic import CLASSES, World, render_aerial, render_panorama, world_size_for
from cvm.data.synthetic.world import BUILDING, MAX_WORLD_SIZE_M, ROAD, SKY, TREE
from cvm.errors import CvmError

SIZE_M = 400.0


@pytest.fixture(scope="module")
def world():
    return World.generate(5, SIZE_M)


@pytest.fixture(scope="module")
def locations(world):
    return world.sample_locations(20, seed=7)


def test_world_rasters(world):
    n = int(SIZE_M / 0.4)
    assert world.top.shape == world.side.shape == (n, n, 3) and world.top.dtype == np.uint8
    assert world.height.shape == world.classes.shape == (n, n)
    assert world.height.dtype == np.float32 and world.classes.dtype == np.uint8
    counts = np.bincount(world.classes.ravel(), minlength=len(CLASSES))
    assert counts[CLASSES.index("sky")] == 0
    assert all(counts[c] > 0.02 * world.classes.size for c in (0, ROAD, BUILDING, TREE))
    buildings = world.height[world.classes == BUILDING]
    trees = world.height[world.classes == TREE]
    assert buildings.min() >= 3.0 and buildings.max() <= 40.0
    assert trees.min() > 0.0 and trees.max() <= 15.0
    assert np.all(world.height[world.classes == ROAD] == 0)


def test_world_is_deterministic():
    a, b, c = World.generate(3, 300.0), World.generate(3, 300.0), World.generate(4, 300.0)
    for name in ("top", "height", "side", "classes", "roads"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.top, c.top)


def test_renders_are_deterministic(world, locations):
    xy = locations[0]
    assert render_panorama(world, xy).tobytes() == render_panorama(world, xy).tobytes()
    assert render_aerial(world, xy).tobytes() == render_aerial(world, xy).tobytes()
    other = World.generate(6, SIZE_M)
    assert not np.array_equal(render_panorama(world, xy), render_panorama(other, xy))
    assert not np.array_equal(render_aerial(world, xy), render_aerial(other, xy))


@pytest.mark.parametrize("height,width,fov,heading", [(128, 512, 360.0, 0.0), (64, 256, 360.0, 33.0),
                                                      (112, 616, 360.0, 0.0), (96, 160, 90.0, 200.0),
                                                      (80, 80, 70.0, -45.0)])
def test_panorama_shapes(world, locations, height, width, fov, heading):
    image, classes = render_panorama(world, locations[1], height_px=height, width_px=width, fov_deg=fov,
                                     heading_deg=heading, with_classes=True)
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    assert classes.shape == (height, width) and classes.dtype == np.uint8 and classes.max() < len(CLASSES)
    assert render_panorama(world, locations[1], height_px=height, width_px=width).shape == (height, width, 3)
    # Sky is only ever above the horizon; the ground part is never sky.
    assert not np.any(classes[height // 2:] == SKY)


@pytest.mark.parametrize("size,mpp,heading", [(256, 0.5, 0.0), (100, 0.3, 0.0), (64, 1.0, 30.0)])
def test_aerial_shapes(world, locations, size, mpp, heading):
    image, classes = render_aerial(world, locations[2], size_px=size, metres_per_pixel=mpp, heading_deg=heading,
                                   with_classes=True)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert classes.shape == (size, size) and classes.dtype == np.uint8
    assert render_aerial(world, locations[2], size_px=size, metres_per_pixel=mpp).shape == (size, size, 3)


def test_aerial_is_a_north_up_crop(world, locations):
    """At the raster's own resolution and a pixel-aligned centre the tile equals the raster crop."""
    col, row = np.round(world.to_pixel(locations[3])).astype(int)
    xy = (col * world.resolution_m, world.size_m - row * world.resolution_m)  # a pixel corner
    tile = render_aerial(world, xy, size_px=64, metres_per_pixel=world.resolution_m)
    assert np.array_equal(tile, world.top[row - 32:row + 32, col - 32:col + 32])
    rotated = render_aerial(world, xy, size_px=64, metres_per_pixel=world.resolution_m, heading_deg=90.0)
    assert np.abs(rotated.astype(int) - np.rot90(tile, 1).astype(int)).max() <= 1  # east comes up


def test_heading_rolls_panorama(world, locations):
    xy = locations[4]
    base, base_cls = render_panorama(world, xy, with_classes=True)
    turned, turned_cls = render_panorama(world, xy, heading_deg=90.0, with_classes=True)
    assert np.array_equal(turned, np.roll(base, -512 // 4, axis=1))
    assert np.array_equal(turned_cls, np.roll(base_cls, -512 // 4, axis=1))
    back = render_panorama(world, xy, heading_deg=-45.0)
    assert np.array_equal(back, np.roll(base, 512 // 8, axis=1))


def test_limited_fov_is_a_crop(world, locations):
    xy = locations[5]
    full = render_panorama(world, xy, height_px=128, width_px=512)
    crop = render_panorama(world, xy, height_px=128, width_px=128, fov_deg=90.0)  # centred on north
    assert np.array_equal(crop, full[:, 192:320])
    east = render_panorama(world, xy, height_px=128, width_px=128, fov_deg=90.0, heading_deg=90.0)
    assert np.array_equal(east, full[:, 320:448])


def _camera_near_tall_building(world, min_height=12.0):
    """(camera xy, building cell xy, height): a road location 6-25 m from a tall building, clear between."""
    locs = world.sample_locations(300, seed=11)
    rows, cols = np.nonzero((world.classes == BUILDING) & (world.height >= min_height))
    cells = np.stack([(cols + 0.5) * world.resolution_m, world.size_m - (rows + 0.5) * world.resolution_m], axis=1)
    for xy in locs:
        dist = np.hypot(*(cells - xy).T)
        order = np.argsort(dist)
        target = cells[order[0]]
        if not 6.0 <= dist[order[0]] <= 25.0:
            continue
        # Nothing raised on the straight line to the building (dense check, 5 cm steps).
        t = np.arange(0.0, 1.0, 0.05 / dist[order[0]])[:, None]
        line = xy + t * (target - xy)
        heights = world.height.ravel()[world.flat_index(line[:, 0], line[:, 1])]
        first = np.argmax(heights > 0)
        if heights[first] >= min_height and np.all(heights[:first] == 0):
            return xy, target, float(heights[first])
    pytest.skip("no camera next to a tall building in this world")


def _max_elevation_reference(world, xy, azimuth_deg, cam_h=2.0, max_range=150.0, thickness_m=0.0):
    """Highest elevation (deg) of any surface along a ray, by dense 5 cm marching (slow reference).

    thickness_m > 0 only counts surfaces at least that high over that length of the ray (a running
    minimum), i.e. objects the renderer's sampling (steps <= 4 m) cannot step over at a corner.
    """
    d = np.arange(0.5, max_range, 0.05)
    az = np.deg2rad(azimuth_deg)
    h = world.height.ravel()[world.flat_index(xy[0] + d * np.sin(az), xy[1] + d * np.cos(az))]
    if thickness_m > 0:
        h = scipy.ndimage.minimum_filter1d(h, int(round(thickness_m / 0.05)), mode="nearest")
    return float(np.rad2deg(np.arctan2(h - cam_h, d).max()))


def test_occlusion_and_height(world):
    xy, target, height = _camera_near_tall_building(world)
    dist = float(np.hypot(*(target - xy)))
    azimuth = np.rad2deg(np.arctan2(target[0] - xy[0], target[1] - xy[1])) % 360.0
    width, rows = 512, 128
    _, classes = render_panorama(world, xy, height_px=rows, width_px=width, with_classes=True)
    column = int(np.floor(((azimuth - 180.0) % 360.0) / 360.0 * width))  # inverse of the column formula
    elevation = 90.0 * (0.5 - (np.arange(rows) + 0.5) / rows)
    # Building class from the horizon up to well within the building's angular height.
    top_angle = np.rad2deg(np.arctan2(height - 2.0, dist + 1.0))
    rising = (elevation > 0) & (elevation < 0.8 * top_angle)
    assert rising.sum() >= 5
    assert np.all(classes[rising, column] == BUILDING)
    # Rows above everything along a ray are sky; rows below any object thicker than the sampling
    # step are not (a ray grazing a corner may legitimately slip between samples).
    for az in np.arange(0.0, 360.0, 15.0):
        col = int(np.floor(((az - 180.0) % 360.0) / 360.0 * width))
        az_centre = 360.0 * ((col + 0.5) / width - 0.5)
        above = elevation > _max_elevation_reference(world, xy, az_centre) + 1.0
        below = (elevation < _max_elevation_reference(world, xy, az_centre, thickness_m=4.0) - 1.0) & (elevation > 0)
        assert np.all(classes[above, col] == SKY)
        assert not np.any(classes[below, col] == SKY)
    # An open column (nothing above 2 degrees) shows sky where the building column shows building.
    open_cols = [c for c in range(width)
                 if _max_elevation_reference(world, xy, 360.0 * ((c + 0.5) / width - 0.5)) < 2.0]
    if open_cols:
        probe = rising & (elevation > 3.0)
        assert np.all(classes[probe, open_cols[0]] == SKY)
    # Taller buildings cover more rows (full vertical fov so the top is in view).
    taller = dataclasses.replace(world, height=np.where(world.classes == BUILDING, world.height * 1.5,
                                                        world.height).astype(np.float32))
    full = dict(height_px=256, width_px=width, vfov_deg=180.0, with_classes=True)
    _, before = render_panorama(world, xy, **full)
    _, after = render_panorama(taller, xy, **full)
    assert (after[:, column] == BUILDING).sum() > (before[:, column] == BUILDING).sum() + 3


def test_locations(world):
    locs = world.sample_locations(200, seed=1)
    assert locs.shape == (200, 2) and locs.dtype == np.float64
    assert np.all(locs >= 100.0) and np.all(locs <= SIZE_M - 100.0)
    assert np.all(world.class_at(locs) == ROAD)
    assert np.array_equal(locs, world.sample_locations(200, seed=1))
    assert not np.array_equal(locs, world.sample_locations(200, seed=2))
    dist = np.hypot(*(locs[:, None, :] - locs[None, :, :]).transpose(2, 0, 1))
    dist[np.eye(200, dtype=bool)] = np.inf
    assert (dist < 25.0).sum() // 2 >= 20  # nearby views overlap (CVACT-style 25 m neighbours exist)
    near_edge = world.sample_locations(50, seed=1, margin_m=20.0)
    assert np.all(near_edge >= 20.0) and np.all(near_edge <= SIZE_M - 20.0)
    with pytest.raises(CvmError):
        world.sample_locations(5, seed=1, margin_m=199.0)


def test_world_size_for():
    sizes = [world_size_for(n) for n in (1, 6, 200, 1000, 5000, 35000, 10**6)]
    assert sizes == sorted(sizes)
    assert sizes[0] >= 400.0 and sizes[-1] == MAX_WORLD_SIZE_M


def _ground_rows(height_px, vfov, cam_h, d_min, d_max):
    """Panorama rows below the horizon whose ground distance cam_h / tan(-e) lies in [d_min, d_max]."""
    elevation = np.deg2rad(vfov * (0.5 - (np.arange(height_px) + 0.5) / height_px))
    rows = np.nonzero(elevation < 0)[0]
    dist = cam_h / np.tan(-elevation[rows])
    keep = (dist >= d_min) & (dist <= d_max)
    return rows[keep], dist[keep]


def test_cross_view_consistency(world, locations):
    """Each panorama agrees with the polar transform of its own aerial far better than with others'.

    Metric: for each panorama row below the horizon, the ground distance d = cam_h / tan(-e) maps to
    the polar row of radius d (r = (S/2)(h - 1 - i)/h pixels of mpp metres), columns align by the
    shared S -> W -> N -> E convention. (1) Class agreement: fraction of those pixels whose panorama
    class equals the polar-warped aerial class; robust to the appearance differences of the views
    (walls vs roofs, fog, perspective blur). (2) Grey-level Pearson correlation on the pixels where
    the panorama sees the ground or a road, where both views show the same top colours.
    """
    n, height, width, size, mpp, polar_h = len(locations), 128, 512, 256, 0.5, 128
    rows, dist = _ground_rows(height, 90.0, 2.0, 3.0, 40.0)
    polar_rows = np.round(polar_h - 1 - dist / mpp * polar_h / (size / 2)).astype(int)
    pano_cls, pano_grey, polar_cls, polar_grey = [], [], [], []
    for xy in locations:
        image, classes = render_panorama(world, xy, height, width, with_classes=True)
        aerial, aerial_cls = render_aerial(world, xy, size, mpp, with_classes=True)
        onehot = (aerial_cls[..., None] == np.arange(len(CLASSES))).astype(np.float32)
        polar_cls.append(polar_transform(onehot, polar_h, width).argmax(-1)[polar_rows])
        polar_grey.append(cv2.cvtColor(polar_transform(aerial, polar_h, width), cv2.COLOR_BGR2GRAY)[polar_rows])
        pano_cls.append(classes[rows])
        pano_grey.append(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[rows])

    agreement = np.array([[np.mean(pano_cls[a] == polar_cls[b]) for b in range(n)] for a in range(n)])
    off = ~np.eye(n, dtype=bool)
    assert np.diag(agreement).mean() > 0.85
    assert np.diag(agreement).mean() > agreement[off].mean() + 0.15
    assert np.mean(agreement.argmax(axis=1) == np.arange(n)) >= 0.8

    def corr(a, b, mask):
        a, b = a[mask].astype(float), b[mask].astype(float)
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-9))

    correlation = np.array([[corr(pano_grey[a], polar_grey[b], pano_cls[a] <= ROAD) for b in range(n)]
                            for a in range(n)])
    assert np.diag(correlation).mean() > 0.5
    assert np.diag(correlation).mean() > correlation[off].mean() + 0.3
    assert np.mean(correlation.argmax(axis=1) == np.arange(n)) >= 0.8


def test_rotated_aerial_matches_turned_panorama(world, locations):
    """rot90 of the aerial (east up) <-> polar roll by -width/4 <-> panorama heading 90: one convention."""
    xy, width = locations[6], 512
    aerial = render_aerial(world, xy, 256, 0.5)
    polar = polar_transform(aerial, 128, width).astype(float)
    polar_rot = polar_transform(np.ascontiguousarray(np.rot90(aerial, 1)), 128, width).astype(float)
    err_right = np.abs(polar_rot - np.roll(polar, -width // 4, axis=1)).mean()
    err_wrong = np.abs(polar_rot - np.roll(polar, width // 4, axis=1)).mean()
    assert err_right < 0.5 * err_wrong
    # The panorama turned by 90 degrees agrees with the rotated aerial's polar map like the original pair.
    rows, dist = _ground_rows(128, 90.0, 2.0, 3.0, 40.0)
    polar_rows = np.round(127 - dist / 0.5 * 128 / 128).astype(int)
    _, cls_turned = render_panorama(world, xy, heading_deg=90.0, with_classes=True)
    aerial_rot, aerial_rot_cls = render_aerial(world, xy, 256, 0.5, heading_deg=90.0, with_classes=True)
    onehot = (aerial_rot_cls[..., None] == np.arange(len(CLASSES))).astype(np.float32)
    polar_rot_cls = polar_transform(onehot, 128, width).argmax(-1)
    assert np.mean(cls_turned[rows] == polar_rot_cls[polar_rows]) > 0.8

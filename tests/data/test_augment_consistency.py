"""The joint augmentations keep a synthetic-world pair consistent; aerial-only rotation does not.

Consistency is measured as in test_synthetic_world: panorama class labels below the horizon against
the class labels of the polar-warped aerial at the matching ground distance (same column convention).
"""

import numpy as np
import pytest

from cvm.data import augment
from cvm.data.polar import polar_transform
from cvm.data.synthetic import CLASSES, World, render_aerial, render_panorama

HEIGHT, WIDTH, SIZE, MPP, CAM_H = 128, 512, 256, 0.5, 2.0


def _ground_rows():
    elevation = np.deg2rad(90.0 * (0.5 - (np.arange(HEIGHT) + 0.5) / HEIGHT))
    rows = np.nonzero(elevation < 0)[0]
    dist = CAM_H / np.tan(-elevation[rows])
    keep = (dist >= 3.0) & (dist <= 40.0)
    return rows[keep], dist[keep]


ROWS, DIST = _ground_rows()
POLAR_ROWS = np.round(HEIGHT - 1 - DIST / MPP * HEIGHT / (SIZE / 2)).astype(int)


def agreement(pano_cls, aerial_cls):
    onehot = (aerial_cls[..., None] == np.arange(len(CLASSES))).astype(np.float32)
    polar = polar_transform(onehot, HEIGHT, WIDTH).argmax(-1)
    return float(np.mean(pano_cls[ROWS] == polar[POLAR_ROWS]))


@pytest.fixture(scope="module")
def pairs():
    world = World.generate(11, 400.0)
    out = []
    for xy in world.sample_locations(6, seed=3):
        _, pano_cls = render_panorama(world, xy, HEIGHT, WIDTH, camera_height_m=CAM_H, with_classes=True)
        _, aerial_cls = render_aerial(world, xy, SIZE, MPP, with_classes=True)
        out.append((pano_cls, aerial_cls))
    return out


@pytest.mark.parametrize("k", [1, 2, 3])
def test_joint_rot90_keeps_pairs_consistent(pairs, k):
    for pano_cls, aerial_cls in pairs:
        base = agreement(pano_cls, aerial_cls)
        aerial_rot, pano_rolled = augment.joint_rot90(aerial_cls, pano_cls, k)
        joint = agreement(pano_rolled, aerial_rot)
        aerial_only = agreement(pano_cls, augment.rotate_aerial(aerial_cls, k, "exact"))
        assert abs(joint - base) < 0.03, (k, base, joint)
        assert aerial_only < joint - 0.05, (k, aerial_only, joint)


def test_joint_flip_keeps_pairs_consistent(pairs):
    drops = []
    for pano_cls, aerial_cls in pairs:
        base = agreement(pano_cls, aerial_cls)
        aerial_flip, pano_flip = augment.joint_flip(aerial_cls, pano_cls)
        assert abs(agreement(pano_flip, aerial_flip) - base) < 0.03
        drops.append(base - agreement(pano_cls, aerial_flip))
    assert np.mean(drops) > 0.05  # flipping one view alone breaks the pair


def test_panorama_roll_matches_a_turned_camera():
    """roll_panorama(pano, yaw) == the panorama rendered with heading yaw (azimuth shift convention)."""
    world = World.generate(11, 400.0)
    xy = world.sample_locations(1, seed=5)[0]
    pano = render_panorama(world, xy, 64, 256)
    for yaw in (90.0, 180.0, 270.0):
        turned = render_panorama(world, xy, 64, 256, heading_deg=yaw)
        np.testing.assert_allclose(augment.roll_panorama(pano, yaw).astype(float), turned.astype(float), atol=2)

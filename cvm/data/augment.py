"""Training augmentations, each a pure function of (images, rng) on uint8 BGR arrays.

Two families:
- the CVM-Net / Regmi CVUSA recipe (seeds.md §1.7): random zoom-crop of the full-resolution aerial
  and a random rotation of the aerial only, so that the network learns rotation invariance;
- the modern recipe (Sample4Geo): *consistent* joint transforms that keep the pair aligned
  (aerial rot90 + panorama roll by a quarter of its width, joint horizontal flip), plus panorama
  azimuth shift and limited field-of-view crops (DSM, TransGeo, ConGeo).

Panorama convention (CVUSA): the azimuth of column j's centre is 180 + 360 (j + 0.5) / W degrees,
clockwise from north: column 0 looks south and north is at the centre column.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from cvm.errors import CvmError

ROTATIONS = ("none", "cvm_net", "joint")


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
    """Which augmentations a training pipeline applies.

    Attributes:
      zoom_crop: CVM-Net random zoom: c ~ U{1..S-2}; if c > zoom_min * S / 750 the centred c x c crop
        of the S x S aerial is kept (then resized as usual).
      rotation: "none"; "cvm_net" (aerial alone rotated by a multiple of 90 degrees, the pano
        untouched); "joint" (aerial rot90 by k and panorama rolled by k quarters: pair stays aligned).
      double_zero: CVM-Net draws randint(0, 4) inclusive, so 0 degrees comes twice as often
        (360 = 0). True keeps that (faithful); False draws k in {0, 1, 2, 3} uniformly.
      rotation_impl: "warp_affine" rotates as the original (cv2.warpAffine about (S/2, S/2), which
        shifts the image by one pixel for 90/180/270 and leaves a zero border line); "exact" uses
        np.rot90. "joint" rotation always uses the exact rot90.
      joint_flip: probability of the joint horizontal flip (aerial mirrored east-west, panorama
        mirrored left-right: azimuth a -> -a on both).
      azimuth_shift: roll the panorama by a uniform random azimuth (orientation-unknown training);
        the drawn yaw is returned so that it can be recorded.
      fov_deg: keep a field of view of this many degrees around the panorama's (shifted) centre.
      zoom_min: threshold of the zoom draw at 750 px (512 in CVM-Net, the output size).
    """

    zoom_crop: bool = False
    rotation: str = "none"
    double_zero: bool = True
    rotation_impl: str = "warp_affine"
    joint_flip: float = 0.0
    azimuth_shift: bool = False
    fov_deg: float = 360.0
    zoom_min: int = 512

    def __post_init__(self):
        if self.rotation not in ROTATIONS:
            raise CvmError(f"rotation must be one of {ROTATIONS}, got {self.rotation!r}")
        if self.rotation_impl not in ("warp_affine", "exact"):
            raise CvmError(f"rotation_impl must be 'warp_affine' or 'exact', got {self.rotation_impl!r}")
        if not 0.0 <= self.joint_flip <= 1.0:
            raise CvmError(f"joint_flip is a probability in [0, 1], got {self.joint_flip}")
        if not 0.0 < self.fov_deg <= 360.0:
            raise CvmError(f"fov_deg must be in (0, 360], got {self.fov_deg}")

    @property
    def active(self) -> bool:
        return (self.zoom_crop or self.rotation != "none" or self.joint_flip > 0
                or self.azimuth_shift or self.fov_deg < 360.0)


# The CVM-Net / Regmi recipe: zoom-crop + aerial-only rotation (seeds.md §1.7).
CVM_NET = AugmentSpec(zoom_crop=True, rotation="cvm_net")
# The Sample4Geo recipe: consistent rot90 + roll and joint flip.
JOINT = AugmentSpec(rotation="joint", joint_flip=0.5)


def zoom_crop(aerial: np.ndarray, rng: np.random.Generator, zoom_min: int = 512) -> np.ndarray:
    """CVM-Net random zoom: c ~ U{1..S-2}; keep the centred c x c crop when c > zoom_min (at 750)."""
    size = aerial.shape[0]
    c = int(rng.integers(1, size - 2, endpoint=True))
    threshold = zoom_min * size / 750.0
    if c > threshold:
        start = (size - c) // 2
        aerial = aerial[start:start + c, start:start + c]
    return aerial


def draw_quarter_turns(rng: np.random.Generator, double_zero: bool = True) -> int:
    """k in 0..3; with double_zero the original randint(0, 4) draw (k = 4 is 0 again)."""
    return int(rng.integers(0, 5 if double_zero else 4)) % 4


def rotate_aerial(aerial: np.ndarray, k: int, impl: str = "warp_affine") -> np.ndarray:
    """Rotate counter-clockwise by k * 90 degrees (OpenCV's positive angle)."""
    if k % 4 == 0:
        return aerial
    if impl == "exact":
        return np.ascontiguousarray(np.rot90(aerial, k))
    h, w = aerial.shape[:2]
    # The original rotates about (S/2, S/2), not the pixel-centre (S-1)/2: kept for parity.
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), 90.0 * k, 1.0)
    return cv2.warpAffine(aerial, matrix, (w, h))


def roll_panorama(pano: np.ndarray, yaw_deg: float) -> np.ndarray:
    """Re-centre the panorama on azimuth yaw_deg: the new centre column shows what was at yaw_deg."""
    w = pano.shape[1]
    shift = int(round(yaw_deg / 360.0 * w)) % w
    return np.roll(pano, -shift, axis=1) if shift else pano


def joint_rot90(aerial: np.ndarray, pano: np.ndarray, k: int):
    """Aerial rot90 counter-clockwise by k, panorama rolled so that the pair stays aligned.

    After a counter-clockwise quarter turn, what was east is now north: the new panorama centre
    must show the old azimuth 90 k degrees.
    """
    if k % 4 == 0:
        return aerial, pano
    return np.ascontiguousarray(np.rot90(aerial, k)), roll_panorama(pano, 90.0 * k)


def joint_flip(aerial: np.ndarray, pano: np.ndarray):
    """Mirror east-west: aerial flipped left-right, panorama flipped left-right (azimuth a -> -a)."""
    return np.ascontiguousarray(aerial[:, ::-1]), np.ascontiguousarray(pano[:, ::-1])


def fov_crop(pano: np.ndarray, fov_deg: float) -> np.ndarray:
    """Keep round(W * fov / 360) columns centred on the panorama's centre azimuth."""
    w = pano.shape[1]
    keep = max(1, int(round(w * fov_deg / 360.0)))
    if keep >= w:
        return pano
    start = (w - keep) // 2
    return pano[:, start:start + keep]


def polar_flip(polar: np.ndarray) -> np.ndarray:
    """East-west mirror of a SAFA polar map (column j at azimuth 180 + 360 j / W): j -> -j mod W."""
    return np.ascontiguousarray(np.roll(polar[:, ::-1], 1, axis=1))


def apply(spec: AugmentSpec, ground: np.ndarray, aerial: np.ndarray, rng: np.random.Generator,
          resize_aerial=None, aerial_is_polar: bool = False):
    """Apply `spec` to one pair; returns (ground, aerial, yaw_deg).

    `resize_aerial` is the deterministic aerial preparation (resize or polar transform), applied
    between the zoom-crop (which needs the full resolution) and the rotations, as the original.
    A polar aerial (`aerial_is_polar`) is rotated by rolling it and mirrored with `polar_flip`.
    The draws happen in a fixed order, so a given rng state gives the same result every time.
    """
    if spec.zoom_crop:
        aerial = zoom_crop(aerial, rng, spec.zoom_min)
    if resize_aerial is not None:
        aerial = resize_aerial(aerial)
    if spec.rotation == "cvm_net":
        k = draw_quarter_turns(rng, spec.double_zero)
        aerial = roll_panorama(aerial, 90.0 * k) if aerial_is_polar else rotate_aerial(
            aerial, k, spec.rotation_impl)
    elif spec.rotation == "joint":
        k = draw_quarter_turns(rng, double_zero=False)
        if aerial_is_polar:
            aerial, ground = roll_panorama(aerial, 90.0 * k), roll_panorama(ground, 90.0 * k)
        else:
            aerial, ground = joint_rot90(aerial, ground, k)
    if spec.joint_flip > 0 and rng.random() < spec.joint_flip:
        if aerial_is_polar:
            aerial, ground = polar_flip(aerial), np.ascontiguousarray(ground[:, ::-1])
        else:
            aerial, ground = joint_flip(aerial, ground)
    yaw = 0.0
    if spec.azimuth_shift:
        yaw = float(rng.uniform(0.0, 360.0))
        ground = roll_panorama(ground, yaw)
    if spec.fov_deg < 360.0:
        ground = fov_crop(ground, spec.fov_deg)
    return ground, aerial, yaw

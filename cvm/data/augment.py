"""Training augmentations, each a pure function of (images, rng) on uint8 BGR arrays.

Two families:
- the CVM-Net / Regmi CVUSA recipe (seeds.md §1.7): random zoom-crop of the full-resolution aerial
  and a random rotation of the aerial only, so that the network learns rotation invariance;
- the modern recipe (Sample4Geo): *consistent* joint transforms that keep the pair aligned
  (aerial rot90 + panorama roll by a quarter of its width, joint horizontal flip), plus panorama
  azimuth shift and limited field-of-view crops (DSM, TransGeo, ConGeo);
- Sample4Geo's per-view photometric and dropout transforms (Deuser et al., ICCV 2023,
  `sample4geo/transforms.py`), re-implemented in OpenCV/NumPy after albumentations 1.3 (the version
  the release requires): ImageCompression, ColorJitter, OneOf(AdvancedBlur, Sharpen),
  OneOf(GridDropout, CoarseDropout). They never change an image's shape or dtype.

Panorama convention (CVUSA): the azimuth of column j's centre is 180 + 360 (j + 0.5) / W degrees,
clockwise from north: column 0 looks south and north is at the centre column.
"""

from __future__ import annotations

import dataclasses
import numbers

import cv2
import numpy as np

from cvm.errors import CvmError

ROTATIONS = ("none", "cvm_net", "joint")
# The AugmentSpec probabilities of Sample4Geo's per-view transforms, in the order they run.
PHOTOMETRIC_FIELDS = ("jpeg", "color_jitter", "blur_sharpen", "dropout")


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
      jpeg: probability of a JPEG re-encode at a quality drawn in 90..100 (Sample4Geo 0.5), per view.
      color_jitter: probability of the brightness/contrast/saturation/hue jitter (Sample4Geo 0.5).
      blur_sharpen: probability of OneOf(AdvancedBlur, Sharpen), each half of it (Sample4Geo 0.3).
      dropout: probability of OneOf(GridDropout, CoarseDropout), each half of it (Sample4Geo 0.3).
      grid_ratio: GridDropout's hole-to-cell side ratio for (ground, aerial): Sample4Geo uses 0.5 for
        the ground and 0.4 for the aerial (a side ratio: the dropped area is about its square).
    """

    zoom_crop: bool = False
    rotation: str = "none"
    double_zero: bool = True
    rotation_impl: str = "warp_affine"
    joint_flip: float = 0.0
    azimuth_shift: bool = False
    fov_deg: float = 360.0
    zoom_min: int = 512
    jpeg: float = 0.0
    color_jitter: float = 0.0
    blur_sharpen: float = 0.0
    dropout: float = 0.0
    grid_ratio: tuple = (0.5, 0.4)

    def __post_init__(self):
        if self.rotation not in ROTATIONS:
            raise CvmError(f"rotation must be one of {ROTATIONS}, got {self.rotation!r}")
        if self.rotation_impl not in ("warp_affine", "exact"):
            raise CvmError(f"rotation_impl must be 'warp_affine' or 'exact', got {self.rotation_impl!r}")
        if not 0.0 <= self.joint_flip <= 1.0:
            raise CvmError(f"joint_flip is a probability in [0, 1], got {self.joint_flip}")
        if not 0.0 < self.fov_deg <= 360.0:
            raise CvmError(f"fov_deg must be in (0, 360], got {self.fov_deg}")
        for name in PHOTOMETRIC_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
                raise CvmError(f"{name} is a probability in [0, 1], got {value!r}")
        ratio = self.grid_ratio
        if (not isinstance(ratio, (tuple, list)) or len(ratio) != 2
                or not all(isinstance(r, numbers.Real) and 0.0 < r <= 1.0 for r in ratio)):
            raise CvmError(f"grid_ratio is (ground, aerial), each in (0, 1], got {ratio!r}")
        object.__setattr__(self, "grid_ratio", tuple(float(r) for r in ratio))  # hashable, comparable

    @property
    def photometric(self) -> bool:
        """Whether any of Sample4Geo's per-view photometric / dropout transforms can fire."""
        return any(getattr(self, name) > 0 for name in PHOTOMETRIC_FIELDS)

    @property
    def active(self) -> bool:
        return (self.zoom_crop or self.rotation != "none" or self.joint_flip > 0
                or self.azimuth_shift or self.fov_deg < 360.0 or self.photometric)


# The CVM-Net / Regmi recipe: zoom-crop + aerial-only rotation (seeds.md §1.7).
CVM_NET = AugmentSpec(zoom_crop=True, rotation="cvm_net")
# The Sample4Geo recipe: consistent rot90 + roll and joint flip.
JOINT = AugmentSpec(rotation="joint", joint_flip=0.5)
# Sample4Geo's per-view probabilities (sample4geo/transforms.py, get_transforms_train).
SAMPLE4GEO_PHOTOMETRIC = {"jpeg": 0.5, "color_jitter": 0.5, "blur_sharpen": 0.3, "dropout": 0.3}
# The full Sample4Geo training recipe: JOINT plus the photometric / dropout transforms on both views.
SAMPLE4GEO = AugmentSpec(rotation="joint", joint_flip=0.5, **SAMPLE4GEO_PHOTOMETRIC)


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


# --- Sample4Geo's per-view photometric and dropout transforms ---------------------------------------
# Each mirrors the albumentations 1.3 transform that Sample4Geo's get_transforms_train composes, with
# its default parameters; images are uint8, BGR (the split readers' OpenCV order), HxWx3 (or HxW /
# HxWx1, for which the colour-only steps are skipped as albumentations does).


def _colour(image: np.ndarray) -> bool:
    return image.ndim == 3 and image.shape[2] == 3


def _lut(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    # A 256-entry table, rounded then saturated: uint8 in, uint8 out, same shape. (albumentations
    # truncates, a systematic half-level darkening; rounding is the unbiased choice.)
    table = np.clip(np.rint(table), 0, 255).astype(np.uint8)
    return cv2.LUT(image, table).reshape(image.shape)


def jpeg_recompress(image: np.ndarray, quality: int) -> np.ndarray:
    """JPEG encode + decode at `quality`; Sample4Geo (Deuser et al., ICCV 2023), A.ImageCompression."""
    ok, buffer = cv2.imencode(".jpg", np.ascontiguousarray(image), [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise ValueError(f"cv2.imencode failed on an image of shape {image.shape}")
    return cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED).reshape(image.shape)


def image_compression(image: np.ndarray, rng: np.random.Generator, quality=(90, 100)) -> np.ndarray:
    """JPEG round trip, quality drawn in lo..hi; Sample4Geo (Deuser et al., ICCV 2023), A.ImageCompression."""
    return jpeg_recompress(image, int(rng.integers(quality[0], quality[1], endpoint=True)))


def adjust_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """v -> round(f v), saturated; Sample4Geo (Deuser et al., ICCV 2023), A.ColorJitter brightness."""
    return _lut(image, np.arange(256) * factor)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """v -> round(f v + (1 - f) mean luma), saturated; Sample4Geo (Deuser et al., ICCV 2023), A.ColorJitter contrast."""
    # The pivot is the mean of the grey (luma) image, as torchvision; BGR2GRAY because the input is BGR.
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if _colour(image) else image
    return _lut(image, np.arange(256) * factor + float(grey.mean()) * (1.0 - factor))


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    """f img + (1 - f) grey (luma) image; Sample4Geo (Deuser et al., ICCV 2023), A.ColorJitter saturation."""
    if not _colour(image):
        return image
    grey = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    return cv2.addWeighted(image, float(factor), grey, 1.0 - float(factor), 0.0)


def adjust_hue(image: np.ndarray, shift: float) -> np.ndarray:
    """Rotate the hue by `shift` of a full turn; Sample4Geo (Deuser et al., ICCV 2023), A.ColorJitter hue."""
    if not _colour(image):
        return image
    # The _FULL conversions code a turn as 0..255 (albumentations' 0..179 has half the resolution),
    # so the shift is a uint8 add modulo 256. BGR2HSV because the input is BGR.
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV_FULL)
    step = int(round(shift * 256.0)) % 256
    hsv[..., 0] = cv2.LUT(hsv[..., 0], ((np.arange(256) + step) % 256).astype(np.uint8))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR_FULL)


def color_jitter(image: np.ndarray, rng: np.random.Generator, brightness: float = 0.15, contrast: float = 0.15,
                 saturation: float = 0.15, hue: float = 0.15) -> np.ndarray:
    """Factors U[1 - x, 1 + x], hue U[-h, h] turn, any order; Sample4Geo (Deuser et al., ICCV 2023), A.ColorJitter."""
    factors = (rng.uniform(max(0.0, 1.0 - brightness), 1.0 + brightness),
               rng.uniform(max(0.0, 1.0 - contrast), 1.0 + contrast),
               rng.uniform(max(0.0, 1.0 - saturation), 1.0 + saturation),
               rng.uniform(-hue, hue))
    # albumentations shuffles the four steps on every call (the steps do not commute: contrast
    # pivots on the mean that brightness moved, saturation clips what contrast stretched).
    steps = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    for i in rng.permutation(4):
        image = steps[i](image, factors[i])
    return image


def advanced_blur_kernel(ksize: int, sigma_x: float, sigma_y: float, angle_rad: float, beta: float,
                         noise: np.ndarray) -> np.ndarray:
    """Rotated generalised Gaussian x noise, normalised; Sample4Geo (Deuser et al., ICCV 2023), A.AdvancedBlur."""
    ax = np.arange(-ksize // 2 + 1.0, ksize // 2 + 1.0)
    grid = np.stack(np.meshgrid(ax, ax), axis=-1)  # (..., [x, y])
    rot = np.array([[np.cos(angle_rad), -np.sin(angle_rad)], [np.sin(angle_rad), np.cos(angle_rad)]])
    inverse_sigma = np.linalg.inv(rot @ np.diag([sigma_x ** 2, sigma_y ** 2]) @ rot.T)
    quad = np.sum((grid @ inverse_sigma) * grid, axis=-1)
    kernel = np.exp(-0.5 * np.power(quad, beta)) * noise
    return (kernel / kernel.sum()).astype(np.float32)


def advanced_blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur, A.AdvancedBlur's default draws (ksize 3/5/7, sigma U[0.2, 1]); Sample4Geo (Deuser et al., ICCV 2023)."""
    ksize = int(rng.choice((3, 5, 7)))
    sigma_x, sigma_y = rng.uniform(0.2, 1.0), rng.uniform(0.2, 1.0)
    angle = np.deg2rad(rng.uniform(-90.0, 90.0))
    # Half the draws below 1 (heavy tails), half above (flat tops), as albumentations, so that the
    # wide (1, 8] range does not dominate.
    beta = rng.uniform(0.5, 1.0) if rng.random() < 0.5 else rng.uniform(1.0, 8.0)
    noise = rng.uniform(0.9, 1.1, size=(ksize, ksize))
    kernel = advanced_blur_kernel(ksize, sigma_x, sigma_y, angle, beta, noise)
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101).reshape(image.shape)


def sharpen_kernel(alpha: float, lightness: float) -> np.ndarray:
    """(1 - a) identity + a [[-1]*3, [-1, 8 + l, -1], [-1]*3]; Sample4Geo (Deuser et al., ICCV 2023), A.Sharpen."""
    effect = -np.ones((3, 3), np.float32)
    effect[1, 1] = 8.0 + lightness
    identity = np.zeros((3, 3), np.float32)
    identity[1, 1] = 1.0
    return ((1.0 - alpha) * identity + alpha * effect).astype(np.float32)


def sharpen(image: np.ndarray, rng: np.random.Generator, alpha=(0.2, 0.5), lightness=(0.5, 1.0)) -> np.ndarray:
    """Sharpen, alpha U[0.2, 0.5], lightness U[0.5, 1]; Sample4Geo (Deuser et al., ICCV 2023), A.Sharpen defaults."""
    kernel = sharpen_kernel(rng.uniform(*alpha), rng.uniform(*lightness))
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101).reshape(image.shape)


def grid_dropout_mask(shape, ratio: float) -> tuple:
    """(rows, cols) masks, outer product = dropped grid; Sample4Geo (Deuser et al., ICCV 2023), A.GridDropout (1.3)."""
    height, width = int(shape[0]), int(shape[1])
    # Square cells of width // 10 anchored at (0, 0) (no random offset by default); the hole is
    # `ratio` of each cell side, so about ratio^2 of the area goes.
    unit_w = max(2, width // 10)
    unit_h = max(min(unit_w, height), 2)
    hole_w = min(max(int(unit_w * ratio), 1), unit_w - 1)
    hole_h = min(max(int(unit_h * ratio), 1), unit_h - 1)
    rows = (np.arange(height) % unit_h) < hole_h
    cols = (np.arange(width) % unit_w) < hole_w
    return rows, cols


def grid_dropout(image: np.ndarray, ratio: float) -> np.ndarray:
    """Zero a regular grid of holes, `ratio` of each cell side; Sample4Geo (Deuser et al., ICCV 2023), A.GridDropout."""
    rows, cols = grid_dropout_mask(image.shape, ratio)
    out = image.copy()
    out[np.ix_(rows, cols)] = 0
    return out


def coarse_dropout_holes(shape, rng: np.random.Generator, holes=(10, 25), size=(0.1, 0.2)) -> list:
    """(x1, y1, x2, y2) of 10..25 holes, sides 0.1..0.2 H; Sample4Geo (Deuser et al., ICCV 2023), A.CoarseDropout."""
    height, width = int(shape[0]), int(shape[1])
    # Sample4Geo sizes both sides from the image height (max_width=int(0.2 * size[0])).
    lo, hi = max(1, int(size[0] * height)), max(1, int(size[1] * height))
    out = []
    for _ in range(int(rng.integers(holes[0], holes[1], endpoint=True))):
        h = min(int(rng.integers(lo, hi, endpoint=True)), height)
        w = min(int(rng.integers(lo, hi, endpoint=True)), width)
        y1 = int(rng.integers(0, height - h, endpoint=True))
        x1 = int(rng.integers(0, width - w, endpoint=True))
        out.append((x1, y1, x1 + w, y1 + h))
    return out


def coarse_dropout(image: np.ndarray, rng: np.random.Generator, holes=(10, 25), size=(0.1, 0.2)) -> np.ndarray:
    """Zero 10..25 random rectangles; Sample4Geo (Deuser et al., ICCV 2023), A.CoarseDropout (fill 0)."""
    out = image.copy()
    for x1, y1, x2, y2 in coarse_dropout_holes(image.shape, rng, holes, size):
        out[y1:y2, x1:x2] = 0
    return out


PHOTOMETRIC_OPS = ("jpeg", "color_jitter", "advanced_blur", "sharpen", "grid_dropout", "coarse_dropout")


def draw_photometric_ops(spec: AugmentSpec, rng: np.random.Generator) -> tuple:
    """The names of the per-view ops that fire, in order; Sample4Geo (Deuser et al., ICCV 2023), A.Compose / A.OneOf."""
    # Six uniforms, always: the gates do not shift with the probabilities' values. OneOf picks each
    # of its two members with probability 1/2 (both have p=1.0 in Sample4Geo).
    u = rng.random(6)
    ops = []
    if u[0] < spec.jpeg:
        ops.append("jpeg")
    if u[1] < spec.color_jitter:
        ops.append("color_jitter")
    if u[2] < spec.blur_sharpen:
        ops.append("advanced_blur" if u[3] < 0.5 else "sharpen")
    if u[4] < spec.dropout:
        ops.append("grid_dropout" if u[5] < 0.5 else "coarse_dropout")
    return tuple(ops)


def run_photometric_op(name: str, image: np.ndarray, rng: np.random.Generator, grid_ratio: float) -> np.ndarray:
    """Apply one named op, its parameters drawn from rng; Sample4Geo (Deuser et al., ICCV 2023)."""
    if name == "jpeg":
        return image_compression(image, rng)
    if name == "color_jitter":
        return color_jitter(image, rng)
    if name == "advanced_blur":
        return advanced_blur(image, rng)
    if name == "sharpen":
        return sharpen(image, rng)
    if name == "grid_dropout":
        return grid_dropout(image, grid_ratio)
    if name == "coarse_dropout":
        return coarse_dropout(image, rng)
    raise ValueError(f"unknown photometric op {name!r}; expected one of {PHOTOMETRIC_OPS}")


def photometric(image: np.ndarray, spec: AugmentSpec, rng: np.random.Generator, grid_ratio: float) -> np.ndarray:
    """One view's JPEG, jitter, blur/sharpen, dropout; Sample4Geo (Deuser et al., ICCV 2023), A.Compose."""
    image = np.ascontiguousarray(image)
    for name in draw_photometric_ops(spec, rng):
        image = run_photometric_op(name, image, rng, grid_ratio)
    return image


def apply(spec: AugmentSpec, ground: np.ndarray, aerial: np.ndarray, rng: np.random.Generator,
          resize_aerial=None, aerial_is_polar: bool = False):
    """Apply `spec` to one pair; returns (ground, aerial, yaw_deg).

    `resize_aerial` is the deterministic aerial preparation (resize or polar transform), applied
    between the zoom-crop (which needs the full resolution) and the rotations, as the original.
    A polar aerial (`aerial_is_polar`) is rotated by rolling it and mirrored with `polar_flip`.
    Sample4Geo's photometric / dropout transforms (`spec.photometric`) run last, on each view.
    The draws happen in a fixed order, so a given rng state gives the same result every time; a
    spec without photometric transforms draws exactly as before they existed.
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
        # k uniform in 0..3: P(k) = 1/4 each, the same law as Sample4Geo's rotate with p 0.75 then
        # k ~ choice([1, 2, 3]) (train_cvusa.py prob_rotate, dataset/cvusa.py).
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
    if spec.photometric:
        # Last, on the images as the network sees them; the ground's draws, then the aerial's.
        # (Sample4Geo runs them between its flip and its rotation; the geometric draws' distribution
        # is the same either way, only the grid dropout's phase relative to the content differs.)
        ground = photometric(ground, spec, rng, spec.grid_ratio[0])
        aerial = photometric(aerial, spec, rng, spec.grid_ratio[1])
    return ground, aerial, yaw

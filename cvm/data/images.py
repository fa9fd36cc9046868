"""Image preprocessing as the original TF code does it: OpenCV BGR, INTER_AREA resize, Caffe mean.

`ImageSpec` says, per experiment, which sizes a method takes; `PRESETS` holds the sizes of the
original repositories (seeds.md §1.6).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import cv2
import numpy as np

from cvm.errors import CvmError

# Per-channel means of the original code, in BGR order. 123.6 (not Keras' 123.68) for red.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.6)
# ImageNet statistics of the modern backbones (torchvision / timm), in RGB order on 0..255 values.
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_SCALE_RGB = (1 / 58.395, 1 / 57.12, 1 / 57.375)  # 1 / (255 * std)


# ImageSpec.interpolation -> OpenCV flag.
INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear_exact": cv2.INTER_LINEAR_EXACT}


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """Input sizes and normalisation of one method.

    Attributes:
      ground_size: (height, width) the ground image is resized to, or None to keep it as read
        (CVM-Net feeds the 224x1232 CVUSA panorama unchanged).
      aerial_size: (height, width) of the aerial input. With `aerial_polar` it is the polar map size.
      aerial_polar: apply SAFA's polar transform to the aerial image (at its full resolution, as
        SAFA's data preparation did) instead of resizing it.
      polar_stretch: reproduce the per-image min-max stretch of SAFA's published polar maps.
      mean: per-channel mean subtracted after the cast to float32 (in `channel_order`); None: none.
      channel_order: "bgr" as the originals (OpenCV) or "rgb".
      scale: multiplier applied after the mean subtraction (1.0 for the Caffe convention), one value or one
        per channel (in `channel_order`: ImageNet's 1 / std for the modern backbones).
      interpolation: the resize: "area" (cv2.INTER_AREA, every original TF / Torch loader) or "linear_exact"
        (cv2.INTER_LINEAR_EXACT, Sample4Geo's albumentations Resize).
    """

    ground_size: Optional[tuple] = (224, 1232)
    aerial_size: tuple = (512, 512)
    aerial_polar: bool = False
    polar_stretch: bool = False
    mean: Optional[tuple] = CAFFE_MEAN_BGR
    channel_order: str = "bgr"
    scale: object = 1.0  # float, or a per-channel tuple
    interpolation: str = "area"  # INTERPOLATIONS: OpenCV's INTER_AREA (the originals) or INTER_LINEAR_EXACT

    def __post_init__(self):
        if self.channel_order not in ("bgr", "rgb"):
            raise CvmError(f"channel_order must be 'bgr' or 'rgb', got {self.channel_order!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise CvmError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        for name in ("ground_size", "aerial_size"):
            size = getattr(self, name)
            if size is None and name == "ground_size":
                continue
            if len(size) != 2 or min(int(s) for s in size) <= 0:
                raise CvmError(f"{name} must be (height, width) with positive values, got {size!r}")


# Sizes of the original repositories (seeds.md §1.6). Ground sizes are (height, width).
PRESETS = {
    # CVM-Net and Regmi: aerial 750 -> 512, CVUSA panorama fed at its native 224x1232.
    "cvm_net": ImageSpec(ground_size=(224, 1232), aerial_size=(512, 512)),
    "regmi": ImageSpec(ground_size=(224, 1232), aerial_size=(512, 512)),
    # CVFT (CVUSA and CVACT): aerial 256, panorama 112x616.
    "cvft": ImageSpec(ground_size=(112, 616), aerial_size=(256, 256)),
    # SAFA: polar aerial 112x616 computed from the full-resolution aerial, or plain 256.
    "safa_polar": ImageSpec(ground_size=(112, 616), aerial_size=(112, 616), aerial_polar=True),
    "safa": ImageSpec(ground_size=(112, 616), aerial_size=(256, 256)),
    # Sample4Geo (CVUSA / CVACT): the whole panorama squashed to 140x768, aerial 384; RGB with ImageNet's mean and
    # std, resized with INTER_LINEAR_EXACT as their albumentations Resize. VIGOR: panorama 384x768.
    "sample4geo": ImageSpec(ground_size=(140, 768), aerial_size=(384, 384), mean=IMAGENET_MEAN_RGB,
                            channel_order="rgb", scale=IMAGENET_SCALE_RGB, interpolation="linear_exact"),
    "sample4geo_vigor": ImageSpec(ground_size=(384, 768), aerial_size=(384, 384), mean=IMAGENET_MEAN_RGB,
                                  channel_order="rgb", scale=IMAGENET_SCALE_RGB, interpolation="linear_exact"),
    # Small sizes for the quickstart and tests on the synthetic world.
    "small": ImageSpec(ground_size=(64, 256), aerial_size=(128, 128)),
}


def preset(name: str) -> ImageSpec:
    """The ImageSpec of a named preset; a CvmError lists the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise CvmError(f"unknown image preset {name!r}; valid: {', '.join(sorted(PRESETS))}") from None


def resize_area(img: np.ndarray, size: tuple) -> np.ndarray:
    """cv2.resize with INTER_AREA to (height, width), as every original loader; no-op if equal."""
    return resize(img, size, "area")


def resize(img: np.ndarray, size: tuple, interpolation: str = "area") -> np.ndarray:
    """cv2.resize to (height, width) with an ImageSpec interpolation ("area", "linear_exact"); no-op if equal."""
    h, w = int(size[0]), int(size[1])
    if img.shape[0] == h and img.shape[1] == w:
        return img
    return cv2.resize(img, (w, h), interpolation=INTERPOLATIONS[interpolation])


def crop_rows(img: np.ndarray, rows: Optional[tuple]) -> np.ndarray:
    """Keep rows [top*H, bottom*H) (CVACT panoramas: (0.25, 0.75) -> rows 208..623 of 832)."""
    if rows is None:
        return img
    h = img.shape[0]
    top, bottom = int(round(rows[0] * h)), int(round(rows[1] * h))
    return img[top:bottom]


def normalise(img: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """uint8 BGR -> float32 with the spec's channel order, mean and scale (NumPy twin of the TF op)."""
    out = img.astype(np.float32)
    if spec.channel_order == "rgb":
        out = out[..., ::-1]
    if spec.mean is not None:
        out = out - np.asarray(spec.mean, np.float32)
    if spec.scale != 1.0:
        out = out * np.asarray(spec.scale, np.float32)
    return out


def denormalise(img: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """Inverse of `normalise` back to uint8 BGR, for image summaries and retrieval grids."""
    out = np.asarray(img, np.float32)
    if spec.scale != 1.0:
        out = out / np.asarray(spec.scale, np.float32)
    if spec.mean is not None:
        out = out + np.asarray(spec.mean, np.float32)
    if spec.channel_order == "rgb":
        out = out[..., ::-1]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def prepare_ground(img: np.ndarray, spec: ImageSpec, rows: Optional[tuple] = None) -> np.ndarray:
    """Deterministic ground preprocessing up to uint8: optional central-row crop, the spec's resize."""
    img = crop_rows(img, rows)
    if spec.ground_size is not None:
        img = resize(img, spec.ground_size, spec.interpolation)
    return img


def prepare_aerial(img: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """Deterministic aerial preprocessing up to uint8: polar transform or the spec's resize."""
    if spec.aerial_polar:
        from cvm.data.polar import polar_transform

        return polar_transform(img, spec.aerial_size[0], spec.aerial_size[1], stretch=spec.polar_stretch)
    return resize(img, spec.aerial_size, spec.interpolation)

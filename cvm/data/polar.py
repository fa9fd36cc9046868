"""SAFA polar transform of aerial images (Shi et al., NeurIPS 2019, data_preparation).

Output pixel (row i, col j) of a height x width polar map samples the S x S aerial at
    r = (S/2) (height - 1 - i) / height,   theta = 2 pi j / width,
    source row = S/2 + r cos(theta),        source col = S/2 - r sin(theta),
so the top row is the outer ring, the bottom row the centre, column 0 looks south and the columns
sweep S -> W -> N -> E with north at the centre column, like a CVUSA panorama. Rotating the aerial
counter-clockwise by 90 degrees (np.rot90, k=1) rolls the polar map by -width/4 columns.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np


@functools.lru_cache(maxsize=16)
def _cached_maps(size: int, height: int, width: int):
    i = np.arange(height, dtype=np.float64)[:, None]
    j = np.arange(width, dtype=np.float64)[None, :]
    radius = (size / 2.0) * (height - 1 - i) / height
    theta = 2.0 * np.pi * j / width
    map_y = (size / 2.0 + radius * np.cos(theta)).astype(np.float32)
    map_x = (size / 2.0 - radius * np.sin(theta)).astype(np.float32)
    map_x.setflags(write=False)
    map_y.setflags(write=False)
    return map_x, map_y


def polar_maps(size: int, height: int = 112, width: int = 616):
    """(map_x, map_y) float32 [height, width]: source column and row of each polar pixel (cv2.remap order)."""
    if size <= 0 or height <= 0 or width <= 0:
        raise ValueError(f"polar_maps needs positive sizes, got size={size}, height={height}, width={width}")
    return _cached_maps(int(size), int(height), int(width))


def polar_transform(aerial: np.ndarray, height: int = 112, width: int = 616, stretch: bool = False) -> np.ndarray:
    """SAFA polar map of a square aerial [S, S(, C)], uint8 or float32; bilinear, zeros outside.

    stretch=True rescales each image to 0..255 by its own min and max, as the published polar maps
    (saved with scipy.misc.imsave from float arrays) were.
    """
    aerial = np.asarray(aerial)
    if aerial.ndim not in (2, 3) or aerial.shape[0] != aerial.shape[1]:
        raise ValueError(f"polar_transform expects a square HxW or HxWxC image, got shape {aerial.shape}")
    if aerial.dtype not in (np.uint8, np.float32):
        raise ValueError(f"polar_transform supports uint8 and float32 images, got {aerial.dtype}")
    map_x, map_y = polar_maps(aerial.shape[0], height, width)
    source = aerial.astype(np.float32) if stretch and aerial.dtype == np.uint8 else aerial
    if source.ndim == 3 and source.shape[2] not in (1, 3, 4):
        # cv2 interpolates 2 or >4 channels with coarse fixed-point weights (1/32 px, ~2% of the
        # range on noisy images) but 1, 3 and 4 exactly: remap such images in 4/3/1-channel chunks.
        chunks, start = [], 0
        while start < source.shape[2]:
            left = source.shape[2] - start
            step = 4 if left >= 4 else (3 if left == 3 else 1)
            chunks.append(_remap(np.ascontiguousarray(source[..., start:start + step]), map_x, map_y))
            start += step
        polar = np.concatenate(chunks, axis=2)
    else:
        polar = _remap(source, map_x, map_y)
    if stretch:
        polar = polar.astype(np.float32)
        lo, hi = float(polar.min()), float(polar.max())
        polar = (polar - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(polar)
        if aerial.dtype == np.uint8:
            return np.clip(np.floor(polar + 0.5), 0, 255).astype(np.uint8)  # bytescale rounds half up
        return polar.astype(np.float32)
    return polar


def _remap(image: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """Bilinear cv2.remap with zeros outside, keeping a trailing channel axis cv2 would drop."""
    out = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if image.ndim == 3 and out.ndim == 2:
        out = out[..., None]
    return out

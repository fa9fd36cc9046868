"""SAFA polar transform of aerial images (Shi et al., NeurIPS 2019, `script/data_preparation.py`).

Output pixel (row i, col j) of a height x width polar map samples the S x S aerial at
    r = (S/2) (height - 1 - i) / height,   theta = 2 pi j / width,
    source row x = S/2 + r cos(theta),      source col y = S/2 - r sin(theta),
so the top row is the outer ring, the bottom row the centre, column 0 looks south and the columns
sweep S -> W -> N -> E with north at the centre column, like a CVUSA panorama. Rotating the aerial
counter-clockwise by 90 degrees (np.rot90, k=1) rolls the polar map by -width/4 columns.

The sampling is the original's `sample_bilinear` computed the same way in float64 (integer corners by
truncation, each of the four corners 0 when outside the image), so a given decoded aerial gives the
same floating-point polar map as SAFA's script. SAFA then saved that float map with
`scipy.misc.imsave`, which rescales every image by its own minimum and maximum to 0..255
(`bytescale`); `stretch=True` reproduces it bit for bit, `stretch=False` rounds the map to uint8
without rescaling. The transform applies to the full-resolution aerial (750 px for CVUSA, 1200 for
CVACT), never to a resized one.
"""

from __future__ import annotations

import functools

import numpy as np

# Output size of SAFA's polar maps (rows, columns), the size of its 112x616 panoramas.
POLAR_HEIGHT, POLAR_WIDTH = 112, 616


@functools.lru_cache(maxsize=16)
def _source_coordinates(size: int, height: int, width: int):
    """(x = source row, y = source column) float64 [height, width], as data_preparation.py computes them."""
    # Same expressions and operand order as the original, so that the float64 values are identical.
    i = np.arange(0, height)
    j = np.arange(0, width)
    jj, ii = np.meshgrid(j, i)
    y = size / 2. - size / 2. / height * (height - 1 - ii) * np.sin(2 * np.pi * jj / width)
    x = size / 2. + size / 2. / height * (height - 1 - ii) * np.cos(2 * np.pi * jj / width)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


@functools.lru_cache(maxsize=16)
def _sampling_plan(size: int, height: int, width: int):
    """Flat source indices, validity masks and the four interpolation weights of each polar pixel."""
    rx, ry = _source_coordinates(size, height, width)
    ix0 = rx.astype(int)  # truncation, as the original (coordinates are positive here)
    iy0 = ry.astype(int)
    ix1, iy1 = ix0 + 1, iy0 + 1
    corners = []
    for cx, cy in ((ix0, iy0), (ix1, iy0), (ix0, iy1), (ix1, iy1)):  # signal_00, _10, _01, _11
        valid = (0 <= cx) & (cx < size) & (0 <= cy) & (cy < size)
        flat = np.where(valid, cx * size + cy, 0).ravel()
        corners.append((flat, None if valid.all() else ~valid.ravel()))
    weights = tuple(w.reshape(-1, 1) for w in (ix1 - rx, rx - ix0, iy1 - ry, ry - iy0))
    return tuple(corners), weights


def polar_maps(size: int, height: int = POLAR_HEIGHT, width: int = POLAR_WIDTH):
    """(map_x, map_y) float32 [height, width]: source column and row of each polar pixel (cv2.remap order)."""
    if size <= 0 or height <= 0 or width <= 0:
        raise ValueError(f"polar_maps needs positive sizes, got size={size}, height={height}, width={width}")
    rows, cols = _source_coordinates(int(size), int(height), int(width))
    return cols.astype(np.float32), rows.astype(np.float32)


def sample_bilinear(image: np.ndarray, height: int = POLAR_HEIGHT, width: int = POLAR_WIDTH) -> np.ndarray:
    """SAFA data_preparation.py `sample_bilinear` at the polar coordinates: float64 [height, width, C]."""
    size = image.shape[0]
    (c00, c10, c01, c11), (wx0, wx1, wy0, wy1) = _sampling_plan(int(size), int(height), int(width))
    flat = image.reshape(size * size, -1)

    def corner(plan):
        index, outside = plan
        values = flat[index].astype(np.float64)
        if outside is not None:
            values[outside] = 0.0
        return values

    # Interpolate along the row coordinate x, then along the column coordinate y, as the original.
    fx1 = wx0 * corner(c00) + wx1 * corner(c10)
    fx2 = wx0 * corner(c01) + wx1 * corner(c11)
    return (wy0 * fx1 + wy1 * fx2).reshape(int(height), int(width), -1)


def bytescale(data: np.ndarray) -> np.ndarray:
    """scipy.misc.bytescale(data) (what imsave did to float arrays): min-max to 0..255, +0.5, truncate."""
    cmin, cmax = data.min(), data.max()
    cscale = cmax - cmin
    if cscale == 0:
        cscale = 1  # a constant image becomes all zeros, as scipy's
    scale = float(255 - 0) / cscale
    scaled = (data - cmin) * scale + 0
    return (scaled.clip(0, 255) + 0.5).astype(np.uint8)


def polar_transform(aerial: np.ndarray, height: int = POLAR_HEIGHT, width: int = POLAR_WIDTH,
                    stretch: bool = False) -> np.ndarray:
    """SAFA polar map (data_preparation.py) of a square aerial [S, S(, C)], uint8 or float32.

    Bilinear, zeros outside, computed in float64 as the original. uint8 input gives uint8 output:
    with `stretch` the per-image min-max rescale of `scipy.misc.imsave` (SAFA's published polar
    maps), without it the interpolated values rounded half up. float32 input gives float32 output
    (min-max rescaled to 0..255 with `stretch`, unrounded).
    """
    aerial = np.asarray(aerial)
    if aerial.ndim not in (2, 3) or aerial.shape[0] != aerial.shape[1] or aerial.shape[0] == 0:
        raise ValueError(f"polar_transform expects a square HxW or HxWxC image, got shape {aerial.shape}")
    if aerial.dtype not in (np.uint8, np.float32):
        raise ValueError(f"polar_transform supports uint8 and float32 images, got {aerial.dtype}")
    if height <= 0 or width <= 0:
        raise ValueError(f"polar_transform needs a positive output size, got {height}x{width}")
    polar = sample_bilinear(aerial, height, width)
    if aerial.ndim == 2:
        polar = polar[..., 0]
    if aerial.dtype == np.uint8:
        if stretch:
            return bytescale(polar)
        return np.floor(polar + 0.5).clip(0, 255).astype(np.uint8)
    if stretch:
        cmin, cmax = polar.min(), polar.max()
        polar = (polar - cmin) * (255.0 / (cmax - cmin)) if cmax > cmin else np.zeros_like(polar)
    return polar.astype(np.float32)

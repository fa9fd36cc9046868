"""Image operations of the Torch synthesis scripts, in NumPy / OpenCV: `image.scale`, the [-1, 1] BGR range,
Canny edge maps and the CVIU 2019 homography pre-warp.
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from cvm.data.synthesis.presets import parse_homography
from cvm.errors import CvmError

# Canny thresholds of train_xfork_pano2aerial_with_edgemap.lua.
CANNY_LOW, CANNY_HIGH = 50, 100


def homography_matrix(homography) -> np.ndarray:
    """3x3 matrix mapping the 4 source points onto the 4 destination points (exact for 4 pairs)."""
    src, dst = (np.asarray(side, np.float32) for side in parse_homography(homography))
    matrix = cv2.getPerspectiveTransform(src, dst)
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-12:
        raise CvmError(f"the homography points {homography} are degenerate (three points on a line?)")
    return matrix


def warp_homography(image: np.ndarray, homography, frame: Optional[tuple] = None) -> np.ndarray:
    """Warp an image with the homography of 4 point pairs (cv2.warpPerspective, bilinear, black outside).

    frame: (H, W) the points are measured in: the image is scaled to it first (torch_scale) and the
    output has that size; None keeps the image's size.
    """
    if frame is not None:
        image = torch_scale(image, frame)
    h, w = image.shape[:2]
    return cv2.warpPerspective(image, homography_matrix(homography), (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)



def _scale_axis(x: np.ndarray, n_out: int, axis: int, byte: bool) -> np.ndarray:
    """One pass of Torch's separable `image.scale` (image_(Main_scaleLinear_rowcol)) along `axis`, in the C
    code's float32 arithmetic and summation order, so byte images round as Torch's do, ties included."""
    f32 = np.float32
    n_in = x.shape[axis]
    if n_out == n_in:
        return x
    x = np.ascontiguousarray(np.moveaxis(x, axis, 0))  # gathers along a contiguous axis 0 are fast
    column = (-1,) + (1,) * (x.ndim - 1)

    def finish(v):  # FromIntermediate: byte tensors round half up and saturate
        return np.clip(np.floor(v + f32(0.5)), 0, 255) if byte else v

    out = np.empty((n_out,) + x.shape[1:], f32)
    if n_out > n_in:
        # Enlarging: linear interpolation at source position di (n_in - 1) / (n_out - 1) (aligned corners);
        # the last output is the last source sample.
        if n_in == 1:
            out[:] = x[0]
        else:
            pos = np.arange(n_out - 1, dtype=f32) * (f32(n_in - 1) / f32(n_out - 1))
            i0 = pos.astype(np.int64)
            f = (pos - i0.astype(f32)).reshape(column)
            out[:-1] = finish((f32(1) - f) * x[i0] + f * x[np.minimum(i0 + 1, n_in - 1)])
        out[-1] = x[-1]
    else:
        # Shrinking: the footprint [di s, (di + 1) s), s = n_in / n_out, summed in the C order (first
        # partial pixel, whole pixels, last partial pixel) and divided by the summed weights. (cv2's
        # INTER_AREA is not bit-for-bit this filter: measured up to 9e-4 off on [0, 1] for 1001 -> 1000.)
        ends = np.arange(1, n_out + 1, dtype=f32) * (f32(n_in) / f32(n_out))
        end_i = ends.astype(np.int64)
        end_f = ends - end_i.astype(f32)
        start_i = np.concatenate([[0], end_i[:-1]])
        start_w = f32(1) - np.concatenate([np.zeros(1, f32), end_f[:-1]])
        acc = start_w.reshape(column) * x[start_i]
        count = start_w
        for t in range(1, int(np.max(end_i - start_i))):  # whole pixels; outputs with fewer add exact zeros
            inside = (start_i + t < end_i).astype(f32)
            acc = acc + inside.reshape(column) * x[np.minimum(start_i + t, n_in - 1)]
            count = count + inside
        last_w = np.where(end_i < n_in, end_f, f32(0))
        acc = acc + last_w.reshape(column) * x[np.minimum(end_i, n_in - 1)]
        out[:] = finish(acc / (count + last_w).reshape(column))
    return np.moveaxis(out, 0, axis)


def torch_scale(image: np.ndarray, size: tuple) -> np.ndarray:
    """Torch `image.scale(img, W, H)` (mode "bilinear") to (H, W): width pass, then height pass.

    Enlarging interpolates linearly with aligned corners; shrinking averages over each output pixel's
    footprint (an exact box filter). Computed in float32 as the C code; uint8 images are rounded after
    each pass as Torch's byte tensors are and stay uint8; float images come back float32.
    """
    h, w = int(size[0]), int(size[1])
    if image.shape[0] == h and image.shape[1] == w:
        return image
    byte = image.dtype == np.uint8
    x = _scale_axis(_scale_axis(np.asarray(image, np.float32), w, 1, byte), h, 0, byte)
    return x.astype(np.uint8) if byte else x


def to_unit_range(image_uint8: np.ndarray) -> np.ndarray:
    """uint8 BGR -> float32 BGR in [-1, 1]: x / 255 * 2 - 1 (Torch image.load as float, then mul(2):add(-1))."""
    return image_uint8.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)


def to_uint8_bgr(images) -> np.ndarray:
    """[-1, 1] float BGR (one image or a batch; extra channels beyond 3 dropped) -> uint8 BGR for cv2.imwrite.

    (x + 1) / 2 * 255, rounded to nearest and clipped (the Torch test scripts' deprocess then save).
    """
    x = np.asarray(images, dtype=np.float32)
    if x.shape[-1] > 3:
        x = x[..., :3]
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def edge_map(grey_uint8: np.ndarray) -> np.ndarray:
    """Canny(50, 100) edges of a grey uint8 image as float32 0/1 (cv.Canny{...} / 255 in the Lua)."""
    return (cv2.Canny(grey_uint8, CANNY_LOW, CANNY_HIGH) > 0).astype(np.float32)


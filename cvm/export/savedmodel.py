"""SavedModel export: `ground` and `aerial` endpoints taking uint8 images, returning unit descriptors.

Preprocessing happens inside the graph, so a serving client sends decoded images of any size:
(optional central-row crop for CVACT-style full panoramas) -> resize to the model's input size ->
channel order -> Caffe mean -> encoder -> L2 normalisation. The resize is TensorFlow's "area"
resize, which equals OpenCV's INTER_AREA for integer down-scaling factors and differs slightly
otherwise; an image already at the model's size goes through unchanged, so it gives exactly the
descriptors of the Keras model on the pipeline's input. A polar-aerial model (SAFA) takes the
full-resolution square aerial and computes the polar map in the graph, pixel for pixel as the pipeline.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from cvm.data.images import ImageSpec
from cvm.data.pipeline import normalise_batch
from cvm.errors import CvmError
from cvm.export.towers import correlation_layout


def polar_transform_tf(images, height: int, width: int, stretch: bool):
    """SAFA's polar map (cvm.data.polar.polar_transform) in TensorFlow, for serving graphs.

    images: uint8 [B, S, S, C] square aerials of any size S. Computed in float64 with the same
    expressions, truncations and zero-outside corners as the NumPy version, then rounded (or min-max
    stretched per image, `scipy.misc.bytescale`) to uint8 values, so the two agree pixel for pixel.
    """
    x = tf.cast(images, tf.float64)
    size = tf.shape(x)[1]
    s = tf.cast(size, tf.float64)
    i = tf.range(height, dtype=tf.float64)[:, None]
    j = tf.range(width, dtype=tf.float64)[None, :]
    angle = 2 * np.pi * j / width
    ry = s / 2. - s / 2. / height * (height - 1 - i) * tf.sin(angle)  # source column
    rx = s / 2. + s / 2. / height * (height - 1 - i) * tf.cos(angle)  # source row
    ix0, iy0 = tf.cast(rx, tf.int32), tf.cast(ry, tf.int32)  # truncation (coordinates are positive)
    ix1, iy1 = ix0 + 1, iy0 + 1

    def corner(cx, cy):
        valid = (cx >= 0) & (cx < size) & (cy >= 0) & (cy < size)
        flat = tf.reshape(tf.where(valid, cx * size + cy, 0), [-1])
        values = tf.gather(tf.reshape(x, [tf.shape(x)[0], size * size, -1]), flat, axis=1)
        mask = tf.cast(tf.reshape(valid, [1, -1, 1]), tf.float64)
        return tf.reshape(values * mask, [tf.shape(x)[0], height, width, -1])

    wx0, wx1 = (tf.cast(ix1, tf.float64) - rx)[..., None], (rx - tf.cast(ix0, tf.float64))[..., None]
    wy0, wy1 = (tf.cast(iy1, tf.float64) - ry)[..., None], (ry - tf.cast(iy0, tf.float64))[..., None]
    fx1 = wx0 * corner(ix0, iy0) + wx1 * corner(ix1, iy0)
    fx2 = wx0 * corner(ix0, iy1) + wx1 * corner(ix1, iy1)
    polar = wy0 * fx1 + wy1 * fx2
    if stretch:
        cmin = tf.reduce_min(polar, axis=[1, 2, 3], keepdims=True)
        cmax = tf.reduce_max(polar, axis=[1, 2, 3], keepdims=True)
        scale = tf.where(cmax > cmin, cmax - cmin, tf.ones_like(cmax))
        return tf.floor(tf.clip_by_value((polar - cmin) * (255.0 / scale), 0.0, 255.0) + 0.5)
    return tf.clip_by_value(tf.floor(polar + 0.5), 0.0, 255.0)


def _preprocess(images, size, spec: ImageSpec, input_order: str, rows: Optional[tuple]):
    x = tf.cast(images, tf.float32)
    if rows is not None:
        height = tf.cast(tf.shape(x)[1], tf.float32)
        top = tf.cast(tf.round(rows[0] * height), tf.int32)
        bottom = tf.cast(tf.round(rows[1] * height), tf.int32)
        x = x[:, top:bottom]
    if size is not None:
        shape = tf.shape(x)
        same = tf.logical_and(tf.equal(shape[1], size[0]), tf.equal(shape[2], size[1]))
        # "area" approximates OpenCV's INTER_AREA, "bilinear" (half-pixel centres, no antialias) INTER_LINEAR_EXACT.
        method = "area" if spec.interpolation == "area" else "bilinear"
        x = tf.cond(same, lambda: x, lambda: tf.image.resize(x, size, method=method))
    if input_order == "rgb":
        x = tf.reverse(x, axis=[-1])  # to OpenCV's BGR, what the training pipeline decoded
    return normalise_batch(x, spec)


def export_savedmodel(encoder, spec: ImageSpec, out_dir: str, input_order: str = "rgb",
                      ground_rows: Optional[tuple] = None, ground_width: Optional[int] = None,
                      metadata: Optional[dict] = None) -> str:
    """Write a SavedModel with `ground(images)` and `aerial(images)` endpoints.

    Args:
      encoder: a retrieval model with encode_ground / encode_aerial.
      spec: the ImageSpec the model was trained with (sizes, mean, channel order).
      input_order: channel order of the uint8 images clients send: "rgb" (tf.io.decode_image,
        PIL) or "bgr" (OpenCV).
      ground_rows: crop these fractions of the ground image's rows first (CVACT full panoramas:
        (0.25, 0.75)).
      ground_width: ground input width if it differs from spec.ground_size (limited-FoV models).
      metadata: JSON-serialisable facts stored as assets/cvm.json (method, config, checkpoint).
    Returns the output directory. Load with `tf.saved_model.load(out_dir)`; then
    `m.ground(uint8 [B, H, W, 3]) -> float32 [B, D]` and likewise `m.aerial`.
    """
    if input_order not in ("rgb", "bgr"):
        raise CvmError(f"--input_order must be rgb or bgr, got {input_order!r}")
    ground_size = (spec.ground_size[0], ground_width or spec.ground_size[1])
    aerial_size = tuple(spec.aerial_size)
    image_spec = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")

    def ground_fn(images):
        x = _preprocess(images, ground_size, spec, input_order, ground_rows)
        return tf.math.l2_normalize(tf.cast(encoder.encode_ground(x, training=False), tf.float32), axis=-1)

    def aerial_fn(images):
        if spec.aerial_polar:  # the full-resolution square aerial in, SAFA's polar map computed in the graph
            polar = polar_transform_tf(images, aerial_size[0], aerial_size[1], spec.polar_stretch)
            x = _preprocess(polar, None, spec, input_order, None)
        else:
            x = _preprocess(images, aerial_size, spec, input_order, None)
        return tf.math.l2_normalize(tf.cast(encoder.encode_aerial(x, training=False), tf.float32), axis=-1)

    archive = keras.export.ExportArchive()
    archive.track(encoder)
    archive.add_endpoint(name="ground", fn=ground_fn, input_signature=[image_spec])
    archive.add_endpoint(name="aerial", fn=aerial_fn, input_signature=[image_spec])
    archive.write_out(out_dir, verbose=False)
    # aerial_polar: the aerial endpoint takes the square source aerial (cvm.geo.towers cuts gallery cells so).
    info = {"ground_size": list(ground_size), "aerial_size": list(aerial_size), "input_order": input_order,
            "aerial_polar": bool(spec.aerial_polar), "polar_stretch": bool(spec.polar_stretch),
            "mean": list(spec.mean) if spec.mean is not None else None, "ground_rows": ground_rows,
            "descriptor_dim": int(getattr(encoder, "descriptor_dim", 0)), **(metadata or {})}
    if spec.interpolation != "area":
        info["interpolation"] = spec.interpolation
    correlation = correlation_layout(encoder, spec, ground_width)
    if correlation:  # DSM: descriptors are flattened maps, compared by correlation (cvm.geo galleries read it)
        info["correlation"] = correlation
    os.makedirs(os.path.join(out_dir, "assets"), exist_ok=True)
    with open(os.path.join(out_dir, "assets", "cvm.json"), "w") as f:
        json.dump(info, f, indent=1, default=str)
    return out_dir

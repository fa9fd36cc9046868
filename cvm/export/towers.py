"""The two towers as fixed-size uint8 graphs for the portable formats (ONNX, LiteRT), and their parity check.

A portable export is a folder holding `ground.<ext>`, `aerial.<ext>` and `export.json`. Each tower takes
uint8 [B, H, W, 3] images at the fixed `input_size` recorded in export.json (TFLite and most ONNX
runtimes want static shapes) and returns L2-normalised float32 [B, D] descriptors. Inside the graph:
channel order -> (polar methods: SAFA's polar map of the square aerial, as the SavedModel endpoint) ->
Caffe mean -> encoder -> L2 normalisation. The resize to `input_size` (and CVACT's central-row crop) is
done by the runtime wrappers (`cvm.export.onnx.OnnxTower`, `cvm.export.litert.LiteRTTower`) with the
training pipeline's own OpenCV INTER_AREA functions, so a wrapper gives the Keras model's descriptors
of the pipeline input exactly, not TF's "area" resize (which neither format has as an op).

Every export is checked as it is written: a seeded random uint8 batch goes through the exported file
and through the Keras model on the NumPy pipeline preprocessing (`cvm.data.images`, `cvm.data.polar`),
and the max abs difference is recorded in export.json (`check`); above the tolerance the export fails.
"""

from __future__ import annotations

import abc
import json
import os
from typing import Callable, Optional

import numpy as np

from cvm.errors import CvmError

TOWERS = ("ground", "aerial")

# Tolerance of the parity check on unit-norm descriptors. Both sides run the same float32 graph with
# different kernels (TF/oneDNN against ONNX Runtime's MLAS or TFLite's XNNPACK/ruy): summation order and
# conv algorithms (im2col, Winograd) differ. A K-term float32 dot product carries a relative error of
# about sqrt(K) * 2^-24 when rounding errors are independent (K = 3*3*512 = 4608 gives ~4e-6); the VGG
# towers stack up to 16 such layers plus NetVLAD / SAFA aggregation, so ~16 * 4e-6 = 6.5e-5 relative on
# descriptor elements <= 1 in magnitude, rounded up to 1e-4. Measured differences are ~1e-6 (export.json).
TOLERANCE = 1e-4


def default_polar_source_size(dataset: str) -> int:
    """Side of the full-resolution square aerial a polar model was trained on (what its polar maps came from)."""
    # CVUSA's aerials are 750 px, CVACT's 1200 (seeds.md §1.6); the synthetic world renders 256 px tiles
    # for polar models (cvm.data.load_split).
    return {"cvusa": 750, "cvact": 1200}.get(dataset, 256)


def correlation_layout(encoder, spec, ground_width: Optional[int] = None) -> Optional[dict]:
    """What a correlation gallery needs of a DSM model (Shi et al., CVPR 2020); None for plain-descriptor models.

    {"map_height", "map_channels", "bins" (aerial map columns = azimuth bins), "ground_fov_deg"}: the flattened
    maps are unflattened with the first three, and ground_fov_deg (360 x the ground input's columns / the
    panorama's, exact where --fov_deg was rounded to whole columns) places the query's centre for its heading.
    """
    if not getattr(encoder, "correlation", False):
        return None
    panorama = int(spec.ground_size[1]) if spec.ground_size else None
    width = int(ground_width or panorama or 0)
    return {"map_height": int(encoder.map_height), "map_channels": int(encoder.map_channels),
            "bins": int(encoder.orientation_bins),
            "ground_fov_deg": 360.0 * width / panorama if panorama and width else 360.0}


def tower_layout(spec, ground_rows: Optional[tuple] = None, ground_width: Optional[int] = None,
                 polar_source_size: Optional[int] = None) -> dict:
    """{tower: {"input_size", "rows", "polar", ...}}: what each exported graph takes."""
    if spec.ground_size is None:
        raise CvmError("this model takes ground images at their native size (ground_size None); a portable export "
                       "needs a fixed size: retrain or export with --format savedmodel")
    ground_size = [int(spec.ground_size[0]), int(ground_width or spec.ground_size[1])]
    aerial = {"input_size": [int(s) for s in spec.aerial_size], "rows": None, "polar": False}
    if spec.aerial_polar:
        side = int(polar_source_size or 0)
        if side <= 0:
            raise CvmError(f"--polar_source_size must be a positive side in pixels, got {polar_source_size!r}")
        aerial = {"input_size": [side, side], "rows": None, "polar": True,
                  "polar_size": [int(s) for s in spec.aerial_size], "polar_stretch": bool(spec.polar_stretch)}
    layout = {"ground": {"input_size": ground_size, "rows": list(ground_rows) if ground_rows else None,
                         "polar": False}, "aerial": aerial}
    if spec.interpolation != "area":  # Sample4Geo's INTER_LINEAR_EXACT; absent means INTER_AREA (older exports)
        for tower in layout.values():
            tower["interpolation"] = spec.interpolation
    return layout


def spec_facts(spec) -> dict:
    """The ImageSpec facts an export records (a gallery's fingerprint reads them)."""
    return {"mean": list(spec.mean) if spec.mean is not None else None, "channel_order": spec.channel_order,
            "scale": spec.scale}


class ExportedTower(abc.ABC):
    """What the ONNX and LiteRT tower wrappers share: `embed` on top of their `run` (the bare graph)."""

    layout: dict
    descriptor_dim: int

    @abc.abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """The exported graph on uint8 [B, H, W, 3] already at `input_size` (no resize)."""

    def embed(self, images, batch_size: int = 64) -> np.ndarray:
        """uint8 images (a [B, H, W, 3] array or a list of any sizes: resized as the training pipeline does,
        `prepare`) -> float32 [B, D] unit descriptors."""
        batch = prepare(images, self.layout)
        if len(batch) == 0:
            return np.zeros([0, self.descriptor_dim], np.float32)
        return np.concatenate([self.run(batch[i:i + batch_size]) for i in range(0, len(batch), batch_size)])


def prepare(images, layout: dict) -> np.ndarray:
    """uint8 [B, H, W, 3] (or a list of HxWx3 arrays of any sizes) at the tower's input size.

    The training pipeline's own steps (cvm.data.images.crop_rows, resize: OpenCV INTER_AREA, or the layout's
    "interpolation"); images already at the input size pass unchanged.
    """
    from cvm.data.images import crop_rows, resize

    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = images[None]
    size = tuple(layout["input_size"])
    out = []
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise CvmError(f"image {i}: expected uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
        if layout.get("rows") is not None and image.shape[:2] != size:
            image = crop_rows(image, tuple(layout["rows"]))
        out.append(resize(image, size, layout.get("interpolation", "area")))
    if not out:
        return np.zeros([0, *size, 3], np.uint8)
    return np.stack(out)


def serving_model(encoder, spec, tower: str, input_order: str, layout: dict, polar_fn: Optional[Callable] = None):
    """A Keras model uint8 [B, H, W, 3] -> unit float32 [B, D] for one tower (what Keras' export converts).

    polar_fn(images, height, width, stretch) makes the polar map in the graph (default: the SavedModel
    export's float64 `polar_transform_tf`; LiteRT passes its float32 one).
    """
    import keras
    import tensorflow as tf

    from cvm.export.savedmodel import _preprocess, polar_transform_tf

    if input_order not in ("rgb", "bgr"):
        raise CvmError(f"--input_order must be rgb or bgr, got {input_order!r}")
    if not hasattr(encoder, "encode_ground") or getattr(encoder, "input_dim", None) is not None:
        raise CvmError(f"{type(encoder).__name__} takes descriptors, not images (regmi_fusion fuses a regmi_joint "
                       "model's descriptors): export the regmi_joint run it was trained on")
    polar_fn = polar_fn or polar_transform_tf
    info = layout[tower]
    encode = encoder.encode_ground if tower == "ground" else encoder.encode_aerial

    class Tower(keras.Model):
        def __init__(self):
            super().__init__(name=f"{tower}_tower")
            self.encoder = encoder  # tracked, so its variables are exported
            self.built = True  # the encoder is built; Keras' export refuses an unbuilt model

        def call(self, images):
            if info["polar"]:
                h, w = info["polar_size"]
                images = polar_fn(images, h, w, info["polar_stretch"])
            x = _preprocess(images, None, spec, input_order, None)  # sizes are fixed: no resize in the graph
            return tf.math.l2_normalize(tf.cast(encode(x, training=False), tf.float32), axis=-1)

    model = Tower()
    signature = [tf.TensorSpec([None, *info["input_size"], 3], tf.uint8, name="images")]
    return model, signature


def numpy_polar(images: np.ndarray, info: dict) -> np.ndarray:
    from cvm.data.polar import polar_transform

    h, w = info["polar_size"]
    return np.stack([polar_transform(a, h, w, stretch=info["polar_stretch"]) for a in images])


def reference_descriptors(encoder, spec, tower: str, input_order: str, layout: dict, images: np.ndarray,
                          polar: Optional[np.ndarray] = None):
    """The Keras model's unit descriptors of uint8 images at the input size, preprocessed in NumPy as the
    training pipeline does (cvm.data.polar.polar_transform, cvm.data.images.normalise): the parity reference.
    polar: the polar maps to use instead of cvm.data.polar's (same channel order as `images`)."""
    from cvm.data.images import normalise

    info = layout[tower]
    if info["polar"]:
        images = numpy_polar(images, info) if polar is None else polar
    bgr = images[..., ::-1] if input_order == "rgb" else images
    x = normalise(np.ascontiguousarray(bgr), spec)
    encode = encoder.encode_ground if tower == "ground" else encoder.encode_aerial
    out = np.asarray(encode(x, training=False), np.float64)
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def check_images(layout: dict, tower: str, batch: int = 2, seed: int = 0) -> np.ndarray:
    """A seeded uint8 batch at the tower's input size (smooth structure plus noise, like photos, not flat)."""
    rng = np.random.default_rng(seed + (0 if tower == "ground" else 1))
    h, w = layout[tower]["input_size"]
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127.5 + 80 * np.sin(xx[..., None] / max(w, 1) * 6.3 * rng.uniform(1, 4, (batch, 1, 1, 3)) + yy[..., None]
                               / max(h, 1) * 3.1 * rng.uniform(1, 3, (batch, 1, 1, 3)))
    noisy = base + rng.normal(0, 30, (batch, h, w, 3))
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def parity(run: Callable, encoder, spec, tower: str, input_order: str, layout: dict, tolerance: float,
           what: str, polar_fn: Optional[Callable] = None) -> dict:
    """Runs `run(uint8 batch) -> [B, D]` against the Keras reference; raises CvmError above `tolerance`.

    polar_fn: the graph's own polar transform when it is not cvm.data.polar's bit for bit (LiteRT's float32
    one): the network is then checked on that polar map, and the map against cvm.data.polar's separately.
    """
    images = check_images(layout, tower)
    got = np.asarray(run(images), np.float32)
    polar, extra = None, {}
    if layout[tower]["polar"] and polar_fn is not None:
        import tensorflow as tf

        info = layout[tower]
        polar = np.asarray(polar_fn(tf.constant(images), *info["polar_size"], info["polar_stretch"])).astype(np.uint8)
        levels = np.abs(polar.astype(np.int32) - numpy_polar(images, info))
        end_to_end = reference_descriptors(encoder, spec, tower, input_order, layout, images)
        extra = {"polar_values_differing": int(np.count_nonzero(levels)), "polar_values": int(levels.size),
                 "polar_max_level_diff": int(levels.max()),
                 "max_abs_diff_on_numpy_polar": float(np.max(np.abs(got - end_to_end)))}
        if levels.max() > 1 or np.count_nonzero(levels) > 1e-3 * levels.size:
            raise CvmError(f"{what}: the {tower} tower's polar map differs from cvm.data.polar's in "
                           f"{extra['polar_values_differing']} of {levels.size} values (up to {levels.max()} levels)")
    expected = reference_descriptors(encoder, spec, tower, input_order, layout, images, polar)
    if got.shape != expected.shape:
        raise CvmError(f"{what}: the exported {tower} tower returned shape {list(got.shape)}, the Keras model "
                       f"{list(expected.shape)}")
    diff = float(np.max(np.abs(got - expected)))
    if not np.isfinite(diff) or diff > tolerance:
        raise CvmError(f"{what}: the exported {tower} tower differs from the Keras model by {diff:.3g} (max abs on "
                       f"unit descriptors, tolerance {tolerance:g}); the file is not usable as exported")
    return {"max_abs_diff": diff, "tolerance": tolerance, "batch": int(images.shape[0]),
            "input_shape": list(images.shape), **extra}


def write_info(out_dir: str, info: dict) -> str:
    path = os.path.join(out_dir, "export.json")
    with open(path, "w") as f:
        json.dump(info, f, indent=1, default=str)
    return path


def read_info(out_dir: str, fmt: str) -> dict:
    """export.json of an export folder, checked to be of format `fmt`."""
    path = os.path.join(out_dir, "export.json")
    if not os.path.isfile(path):
        raise CvmError(f"{path} not found: {out_dir} is not a folder written by `cvm export --format {fmt}`")
    with open(path) as f:
        info = json.load(f)
    if info.get("format") != fmt:
        raise CvmError(f"{out_dir} holds a {info.get('format')!r} export, not {fmt!r}")
    return info


def locate(path: str, fmt: str, ext: str, tower: Optional[str]):
    """(folder, tower, export.json) of an export folder or one of its tower files."""
    if not os.path.exists(path):
        raise CvmError(f"{fmt} model not found: {path}")
    if os.path.isdir(path):
        if tower not in TOWERS:
            raise CvmError(f"{path} is an export folder: say which tower to load (ground or aerial), got {tower!r}")
        return path, tower, read_info(path, fmt)
    if not path.endswith(ext):
        raise CvmError(f"{path} is not a {fmt} model file (*{ext}) nor an export folder")
    folder = os.path.dirname(os.path.abspath(path))
    info = read_info(folder, fmt)
    named = [t for t in TOWERS if os.path.basename(path) == info[t]["file"]]
    if not named:
        raise CvmError(f"{path} is not one of the towers listed in {os.path.join(folder, 'export.json')}")
    if tower is not None and tower != named[0]:
        raise CvmError(f"{path} is the {named[0]} tower, not the {tower} tower")
    return folder, named[0], info

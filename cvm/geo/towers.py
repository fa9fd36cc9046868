"""The two towers of a trained retrieval model as the geo package uses them: uint8 RGB in, unit descriptors out.

Three back ends give the same interface (`Towers`): a Keras encoder in this process (`KerasTowers`, what
`cvm gallery build --model_dir` uses), an exported SavedModel (`SavedModelTowers`, `cvm export`'s output,
also what the Beam pipeline serves) and an exported ONNX model (`OnnxTowers`, through cvm.export.onnx when
present). All preprocess as the SavedModel export does (cvm.export.savedmodel: area resize to the model's
input, channel order, Caffe mean), so a gallery and a query embedded by different back ends of one model agree.

The fingerprint names the weights and the preprocessing: sha256 over the sorted per-variable digests
(order-free, so a SavedModel and the Keras model it was exported from give the same one) and the
preprocessing fields (input sizes, mean, ground rows, polar). A gallery remembers it; querying it with
another model is refused.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
from typing import Optional

import numpy as np

from cvm.errors import CvmError

# The square side a polar-aerial model's cells are cut at (its aerial input is the polar map): the
# synthetic world's full-resolution tile, as cvm.data.load_split renders for polar models.
POLAR_CELL_PX = 256


def weights_digest(arrays) -> str:
    """sha256 of the sorted digests of each array's dtype, shape and bytes (independent of variable order)."""
    digests = []
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
        digests.append(h.hexdigest())
    total = hashlib.sha256()
    for d in sorted(digests):
        total.update(d.encode())
    return total.hexdigest()


def fingerprint_of(weights: str, preprocessing: dict) -> str:
    """'<16 hex of weights>-<8 hex of preprocessing>': short enough to read in an error message."""
    prep = hashlib.sha256(json.dumps(preprocessing, sort_keys=True).encode()).hexdigest()
    return f"{weights[:16]}-{prep[:8]}"


class Towers(abc.ABC):
    """Interface: embed_aerial / embed_ground take uint8 RGB [B, H, W, 3] and return float32 [B, D] unit rows.

    Attributes: fingerprint, preprocessing (dict), cell_px ((h, w) gallery cells are resampled to),
    ground_size, fov_deg (ground field of view the model takes; None when unknown), description, correlation
    (None, or for a correlation model, DSM, the map layout of cvm.export.towers.correlation_layout: its
    descriptors are flattened feature maps, compared by circular correlation, not by the inner product).
    """

    fingerprint: str
    preprocessing: dict
    cell_px: tuple
    ground_size: Optional[tuple]
    fov_deg: Optional[float] = None
    description: str = ""
    correlation: Optional[dict] = None

    @abc.abstractmethod
    def embed_aerial(self, images: np.ndarray) -> np.ndarray:
        """uint8 RGB aerial cells [B, H, W, 3] -> float32 [B, D] unit descriptors."""

    @abc.abstractmethod
    def embed_ground(self, images: np.ndarray) -> np.ndarray:
        """uint8 RGB ground images [B, H, W, 3] -> float32 [B, D] unit descriptors."""

    def info(self) -> dict:
        return {"fingerprint": self.fingerprint, "preprocessing": self.preprocessing,
                "description": self.description, "kind": type(self).__name__}


def exported_correlation(meta: dict, path: str) -> Optional[dict]:
    """The correlation layout an export recorded; an export of a correlation method without one is refused."""
    if meta.get("correlation"):
        return dict(meta["correlation"])
    method = meta.get("method")
    try:
        from cvm.models import model_class

        correlation = bool(getattr(model_class(method), "correlation", False)) if method else False
    except Exception:  # an unknown or custom method name: a plain-descriptor export
        correlation = False
    if correlation:
        raise CvmError(f"{path} is a --method {method} export without its correlation map layout (written by an "
                       "older cvm): its descriptors are feature maps that only correlation can rank; export it "
                       "again with `cvm export`")
    return None


def _preprocessing(ground_size, aerial_size, mean, ground_rows, polar: bool, interpolation: str = "area") -> dict:
    out = {"ground_size": list(ground_size) if ground_size else None, "aerial_size": list(aerial_size),
           "mean": [float(m) for m in mean] if mean is not None else None,
           "ground_rows": list(ground_rows) if ground_rows else None, "aerial_polar": bool(polar)}
    if interpolation != "area":  # only then: INTER_AREA galleries keep the fingerprints they were built with
        out["interpolation"] = interpolation
    return out


class KerasTowers(Towers):
    """A Keras retrieval encoder with its ImageSpec, preprocessed as `cvm export` does (RGB clients)."""

    def __init__(self, encoder, spec, ground_rows: Optional[tuple] = None, fov_deg: float = 360.0,
                 description: str = ""):
        import tensorflow as tf

        from cvm.export.savedmodel import _preprocess, polar_transform_tf

        self.encoder, self.spec = encoder, spec
        width = spec.ground_size[1] if spec.ground_size else None
        if width is not None and fov_deg < 360.0:  # limited-FoV models take the crop only (cvm.data.augment.fov_crop)
            width = max(1, int(round(width * fov_deg / 360.0)))
        self.ground_size = (spec.ground_size[0], width) if spec.ground_size else None
        self.fov_deg = float(fov_deg)
        aerial_size = tuple(spec.aerial_size)
        self.cell_px = (POLAR_CELL_PX, POLAR_CELL_PX) if spec.aerial_polar else aerial_size
        self.preprocessing = _preprocessing(self.ground_size, aerial_size, spec.mean, ground_rows, spec.aerial_polar,
                                            spec.interpolation)
        self.fingerprint = fingerprint_of(weights_digest(w.numpy() for w in encoder.weights), self.preprocessing)
        self.description = description or f"keras {type(encoder).__name__}"
        from cvm.export.towers import correlation_layout

        self.correlation = correlation_layout(encoder, spec, width)
        ground_size = self.ground_size

        @tf.function(reduce_retracing=True)
        def ground(images):
            x = _preprocess(images, ground_size, spec, "rgb", ground_rows)
            return tf.math.l2_normalize(tf.cast(encoder.encode_ground(x, training=False), tf.float32), axis=-1)

        @tf.function(reduce_retracing=True)
        def aerial(images):
            if spec.aerial_polar:
                polar = polar_transform_tf(images, aerial_size[0], aerial_size[1], spec.polar_stretch)
                x = _preprocess(polar, None, spec, "rgb", None)
            else:
                x = _preprocess(images, aerial_size, spec, "rgb", None)
            return tf.math.l2_normalize(tf.cast(encoder.encode_aerial(x, training=False), tf.float32), axis=-1)

        self._ground, self._aerial = ground, aerial

    def embed_aerial(self, images):
        return np.asarray(self._aerial(np.asarray(images, np.uint8)))

    def embed_ground(self, images):
        return np.asarray(self._ground(np.asarray(images, np.uint8)))


class SavedModelTowers(Towers):
    """A `cvm export` SavedModel (its assets/cvm.json gives sizes, channel order and mean)."""

    def __init__(self, path: str):
        meta_path = os.path.join(path, "assets", "cvm.json")
        if not os.path.isfile(meta_path):
            raise CvmError(f"{path} is not a cvm SavedModel (no assets/cvm.json): export one with "
                           "`cvm export --model_dir RUN --out DIR`")
        import tensorflow as tf

        with open(meta_path) as f:
            meta = json.load(f)
        aerial_size = tuple(meta["aerial_size"])
        if "aerial_polar" not in meta and aerial_size[0] != aerial_size[1]:
            # Exports before aerial_polar was recorded: a polar model's aerial endpoint takes the square source
            # aerial, so its cells would be cut at the wrong size. Polar maps are never square; plain aerials are.
            raise CvmError(f"{meta_path} does not record aerial_polar (written by an older cvm) and its aerial "
                           f"input {aerial_size[0]}x{aerial_size[1]} is not square, as a polar map is: export it "
                           f"again with `cvm export --model_dir {meta.get('model_dir') or 'RUN'} --out DIR`")
        self.path, self.meta = path, meta
        self.model = tf.saved_model.load(path)
        self.input_order = meta.get("input_order", "rgb")
        self.ground_size = tuple(meta["ground_size"]) if meta.get("ground_size") else None
        polar = bool(meta.get("aerial_polar", False))
        self.cell_px = (POLAR_CELL_PX, POLAR_CELL_PX) if polar else aerial_size
        self.fov_deg = meta.get("fov_deg")
        self.correlation = exported_correlation(meta, path)
        self.preprocessing = _preprocessing(self.ground_size, aerial_size, meta.get("mean"), meta.get("ground_rows"),
                                            polar, meta.get("interpolation", "area"))
        self.fingerprint = fingerprint_of(weights_digest(v.numpy() for v in self.model.variables), self.preprocessing)
        self.description = f"savedmodel {path} ({meta.get('method', '?')}, {meta.get('checkpoint', '?')})"

    def _order(self, images):
        images = np.asarray(images, np.uint8)
        return images[..., ::-1] if self.input_order == "bgr" else images

    def embed_aerial(self, images):
        return self.model.aerial(self._order(images)).numpy()

    def embed_ground(self, images):
        return self.model.ground(self._order(images)).numpy()


def load_towers(path: str) -> Towers:
    """Towers from a path: a SavedModel folder (cvm export) or an .onnx file (cvm export --format onnx)."""
    if path.endswith(".onnx") or os.path.isfile(os.path.join(path, "aerial.onnx")):
        return onnx_towers(path)
    if not os.path.isdir(path):
        raise CvmError(f"model not found: {path} (give a SavedModel folder from `cvm export` or an .onnx file)")
    return SavedModelTowers(path)


def onnx_towers(path: str) -> Towers:
    """Towers from an ONNX export, through cvm.export.onnx (written by the export issue); CvmError without it."""
    try:
        from cvm.export import onnx as onnx_export  # noqa: F401
    except ImportError as exc:
        raise CvmError(f"cannot run the ONNX model {path}: this cvm has no cvm.export.onnx ({exc}); "
                       "give the SavedModel instead") from None
    from cvm.geo.onnx_towers import OnnxTowers

    return OnnxTowers(path)

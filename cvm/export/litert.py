"""LiteRT (TFLite) export of both towers (`cvm export --format litert`) and `LiteRTTower`, its runtime.

    from cvm.export.litert import LiteRTTower
    tower = LiteRTTower("exported/run_litert", "ground")      # or ".../ground.tflite"
    tower.embed(images) -> float32 [B, D] unit rows           # same contract as cvm.export.onnx.OnnxTower

Export folder: ground.tflite, aerial.tflite, export.json (layout of cvm.export.towers). The graphs are
Keras 3's own LiteRT export (`keras.Model.export(format="litert")`, the TFLite converter on a SavedModel
underneath) restricted to TFLite's builtin ops, so the files run in the bare `ai-edge-litert` interpreter
on a phone, with no TensorFlow (Flex) ops; where Keras' export fails, the converter on the tower's concrete
function. An op with no builtin kernel makes the export fail naming it.

Polar methods keep SAFA's polar transform inside the graph, but TFLite's builtin kernels have no float64
arithmetic (not even Sub), so the graph samples the aerial with cvm.data.polar's float64 source coordinates
and bilinear weights for the fixed input side (constants) and blends in float32 with an exact split of
the weights (`polar_transform_f32`). Its uint8 polar map equals cvm.data.polar's on all but ~5e-5 of the
values (one level off, where float64 rounding itself decides a tie). The parity check therefore has two
parts for a polar aerial tower: the network (LiteRT against Keras on the polar map the graph makes, within
towers.TOLERANCE) and the polar map (differing values counted against cvm.data.polar, at most one level
and 1e-3 of them); the end-to-end difference from Keras on cvm.data.polar's map is recorded too.
"""

from __future__ import annotations

import os
import re
from typing import Optional

import numpy as np

from cvm.errors import CvmError
from cvm.export import towers as towers_lib


def polar_transform_f32(images, height: int, width: int, stretch: bool):
    """SAFA's polar map (cvm.data.polar.polar_transform) for a static square side, in float32 (TFLite builtins).

    images: uint8 [B, S, S, C] with S known when the graph is traced. Corner indices and bilinear weights
    come from cvm.data.polar's own float64 coordinates (weight 0 outside the image, as its zero corners).
    Each weight w is split into h (w rounded to a multiple of 2^-12) and l = w - h: the products h * pixel
    and their sum H are exact in float32 (multiples of 2^-12 below 1024 need 22 bits), the small rest
    L = sum l * pixel carries float32 error ~1e-8. Rounding to uint8 is then decided exactly from H + 0.5
    and the sign of L, so ties (dyadic weights such as 1/8 make many exact x.5 values, and float64's
    cos(pi/2) = 6e-17 tips them) round as cvm.data.polar's float64 computation does except where float64
    itself absorbs a perturbation below its ulp: ~5e-5 of the values, one level off (measured; the parity
    check records the count).
    """
    import tensorflow as tf

    from cvm.data.polar import _source_coordinates

    size, channels = int(images.shape[1]), int(images.shape[3])
    if images.shape[2] != size:
        raise CvmError(f"the polar transform takes square aerials, got {images.shape[1]}x{images.shape[2]}")
    rx, ry = _source_coordinates(size, height, width)  # source row, source column (float64)
    ix0, iy0 = rx.astype(np.int64), ry.astype(np.int64)  # truncation, as the original (coordinates are >= 0)
    x = tf.reshape(tf.cast(images, tf.float32), [-1, size * size, channels])
    exact, rest = 0.0, 0.0
    for cx, wx in ((ix0, ix0 + 1 - rx), (ix0 + 1, rx - ix0)):
        for cy, wy in ((iy0, iy0 + 1 - ry), (iy0 + 1, ry - iy0)):
            valid = (cx >= 0) & (cx < size) & (cy >= 0) & (cy < size)
            weight = np.where(valid, wx * wy, 0.0)
            hi = np.round(weight * 4096.0) / 4096.0
            index = np.where(valid, cx * size + cy, 0).reshape(-1).astype(np.int32)
            pixels = tf.reshape(tf.gather(x, index, axis=1), [-1, height, width, channels])
            exact += pixels * hi.reshape(1, height, width, 1).astype(np.float32)
            rest += pixels * (weight - hi).reshape(1, height, width, 1).astype(np.float32)
    if stretch:  # scipy's bytescale of the float map: float32 error ~1e-5 on 0..255, ties are not structural
        polar = exact + rest
        cmin = tf.reduce_min(polar, axis=[1, 2, 3], keepdims=True)
        cmax = tf.reduce_max(polar, axis=[1, 2, 3], keepdims=True)
        scale = tf.where(cmax > cmin, cmax - cmin, tf.ones_like(cmax))
        return tf.floor(tf.clip_by_value((polar - cmin) * (255.0 / scale), 0.0, 255.0) + 0.5)
    shifted = exact + 0.5  # exact
    whole = tf.floor(shifted)
    return tf.clip_by_value(whole + tf.floor((shifted - whole) + rest), 0.0, 255.0)  # |rest| < 0.125


def _interpreter(path: str):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise CvmError("running a LiteRT model needs ai-edge-litert: pip install 'cvm[export]'") from None
    try:
        return Interpreter(model_path=path)
    except Exception as e:  # noqa: BLE001 (a damaged or foreign file)
        raise CvmError(f"the LiteRT interpreter cannot load {path}: {str(e).splitlines()[0]}") from None


class LiteRTTower(towers_lib.ExportedTower):
    """One exported tower in the LiteRT interpreter: `embed(uint8 images) -> unit descriptors`."""

    def __init__(self, path: str, tower: Optional[str] = None):
        folder, self.tower, self.info = towers_lib.locate(path, "litert", ".tflite", tower)
        self.layout = self.info[self.tower]
        self.path = os.path.join(folder, self.layout["file"])
        self.interpreter = _interpreter(self.path)
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        self.output_index = self.interpreter.get_output_details()[0]["index"]
        self.input_size = tuple(self.layout["input_size"])
        self.descriptor_dim = int(self.info["descriptor_dim"])
        self._batch = None

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The graph on uint8 [B, H, W, 3] already at `input_size` (no resize)."""
        batch = np.ascontiguousarray(batch, np.uint8)
        if self._batch != batch.shape[0]:  # the batch axis is dynamic: re-plan the tensors for a new size
            self.interpreter.resize_tensor_input(self.input_index, list(batch.shape))
            self.interpreter.allocate_tensors()
            self._batch = batch.shape[0]
        self.interpreter.set_tensor(self.input_index, batch)
        self.interpreter.invoke()
        return np.array(self.interpreter.get_tensor(self.output_index))


def _unsupported_ops(message: str) -> list:
    """TF op names the converter reports as having no builtin TFLite kernel."""
    ops = set(re.findall(r"'tf\.([A-Za-z0-9_]+)' op is neither a custom op nor a flex op", message))
    for line in re.findall(r"(?:Custom|Flex) ops: ([A-Za-z0-9_, ]+)", message):
        ops.update(op.strip() for op in line.split(",") if op.strip())
    return sorted(ops)


def _convert(model, signature, path: str, method: str, tower: str) -> str:
    """Keras' own LiteRT export (builtin ops only), the converter on the concrete function where that fails."""
    import tensorflow as tf

    builtins = [tf.lite.OpsSet.TFLITE_BUILTINS]
    errors = []
    try:
        model.export(path, format="litert", input_signature=signature, verbose=False,
                     target_spec={"supported_ops": builtins})
        return "keras.Model.export(format='litert')"
    except Exception as e:  # noqa: BLE001 (kept to name it if the fallback fails too)
        errors.append(f"{type(e).__name__}: {e}")
    try:
        fn = tf.function(lambda images: model(images), input_signature=signature)
        converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], model)
        converter.target_spec.supported_ops = builtins
        with open(path, "wb") as f:
            f.write(converter.convert())
        return "tf.lite.TFLiteConverter.from_concrete_functions"
    except Exception as e:  # noqa: BLE001
        text = f"{type(e).__name__}: {e}"
        ops = _unsupported_ops(text + "\n".join(errors))
        if ops:
            raise CvmError(f"{method}: the {tower} tower cannot be exported to LiteRT: the TensorFlow op(s) "
                           f"{', '.join(ops)} have no builtin TFLite kernel; use --format onnx or savedmodel") from None
        first = [line for line in text.splitlines() if line.strip()][:1]
        raise CvmError(f"{method}: the {tower} tower cannot be exported to LiteRT ({first[0] if first else text}); "
                       "use --format onnx or savedmodel") from None


def export_litert(encoder, spec, out_dir: str, input_order: str = "rgb", ground_rows: Optional[tuple] = None,
                  ground_width: Optional[int] = None, polar_source_size: Optional[int] = None,
                  metadata: Optional[dict] = None, tolerance: float = towers_lib.TOLERANCE) -> dict:
    """Write ground.tflite, aerial.tflite and export.json; each tower checked in the LiteRT interpreter.

    Args as cvm.export.onnx.export_onnx. Returns export.json's dict.
    """
    try:
        import ai_edge_litert  # noqa: F401
    except ImportError:
        raise CvmError("--format litert needs ai-edge-litert (its interpreter checks the export): "
                       "pip install 'cvm[export]'") from None
    layout = towers_lib.tower_layout(spec, ground_rows, ground_width, polar_source_size)
    method = (metadata or {}).get("method", type(encoder).__name__)
    os.makedirs(out_dir, exist_ok=True)
    info = {"format": "litert", "input_order": input_order, **towers_lib.spec_facts(spec),
            "descriptor_dim": int(getattr(encoder, "descriptor_dim", 0)), "converter": {}, "check": {},
            **(metadata or {})}
    correlation = towers_lib.correlation_layout(encoder, spec, ground_width)
    if correlation:  # DSM: flattened maps compared by correlation (cvm.geo galleries read the layout)
        info["correlation"] = correlation
    for tower in towers_lib.TOWERS:
        model, signature = towers_lib.serving_model(encoder, spec, tower, input_order, layout,
                                                    polar_fn=polar_transform_f32)
        path = os.path.join(out_dir, f"{tower}.tflite")
        info["converter"][tower] = _convert(model, signature, path, method, tower)
        info[tower] = {**layout[tower], "file": f"{tower}.tflite"}
    towers_lib.write_info(out_dir, info)
    import ai_edge_litert

    try:
        for tower in towers_lib.TOWERS:
            runtime = LiteRTTower(out_dir, tower)
            check = towers_lib.parity(runtime.run, encoder, spec, tower, input_order, layout, tolerance,
                                      f"{method} litert", polar_fn=polar_transform_f32)
            info["check"][tower] = {**check, "runtime": "ai-edge-litert " + getattr(ai_edge_litert, "__version__", "")}
    except CvmError:
        os.remove(os.path.join(out_dir, "export.json"))  # an export that failed its check is not loadable
        raise
    towers_lib.write_info(out_dir, info)
    return info

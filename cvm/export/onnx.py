"""ONNX export of both towers (`cvm export --format onnx`) and `OnnxTower`, the runtime that serves them.

Runtime API (stable; `cvm gallery build --onnx_model` uses it; needs only numpy, OpenCV and onnxruntime):

    from cvm.export.onnx import OnnxTower
    tower = OnnxTower("exported/run_onnx", "aerial")   # an export folder and a tower name,
    tower = OnnxTower("exported/run_onnx/aerial.onnx") # or one tower file of such a folder
    tower.tower            # "ground" or "aerial"
    tower.input_size       # (height, width) of the uint8 images the graph takes; for a polar method's
                           # aerial tower the full-resolution square aerial (the polar map is made inside)
    tower.descriptor_dim   # D
    tower.info             # the folder's export.json (method, checkpoint, input_order, check, ...)
    tower.embed(images, batch_size=64) -> float32 [B, D], unit rows
        images: uint8 [B, H, W, 3] or a list of uint8 [H, W, 3] arrays of any size, in the channel
        order of info["input_order"] (RGB unless exported with --input_order bgr). Images not at
        `input_size` are resized there with the training pipeline's OpenCV INTER_AREA (after CVACT's
        central-row crop for a ground tower exported with one); at `input_size` they go in unchanged
        (taken as already cropped and resized).
    tower.run(batch) -> float32 [B, D]: the graph alone on a uint8 batch already at `input_size`.

Export folder: ground.onnx, aerial.onnx, export.json (layout of cvm.export.towers). The graphs are
Keras 3's own ONNX export (`keras.Model.export(format="onnx")`, tf2onnx underneath) of a per-tower
serving model; where that fails, tf2onnx on the tower's concrete function. Polar methods keep SAFA's
polar transform inside the graph, in float64 as cvm.data.polar (ONNX Runtime has float64 kernels), so
the polar map is the NumPy one pixel for pixel.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Optional

import numpy as np

from cvm.errors import CvmError
from cvm.export import towers as towers_lib

OPSET = 17  # a recent opset every ONNX Runtime of the last years runs; tf2onnx 1.17 supports it


class OnnxTower(towers_lib.ExportedTower):
    """One exported tower in ONNX Runtime: `embed(uint8 images) -> unit descriptors` (see module doc)."""

    def __init__(self, path: str, tower: Optional[str] = None, providers: Optional[list] = None):
        folder, self.tower, self.info = towers_lib.locate(path, "onnx", ".onnx", tower)
        self.layout = self.info[self.tower]
        self.path = os.path.join(folder, self.layout["file"])
        try:
            import onnxruntime
        except ImportError:
            raise CvmError("loading an ONNX model needs onnxruntime: pip install 'cvm[export]'") from None
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = onnxruntime.InferenceSession(self.path, options,
                                                        providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # a damaged or foreign file
            raise CvmError(f"ONNX Runtime cannot load {self.path}: {str(e).splitlines()[0]}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.input_size = tuple(self.layout["input_size"])
        self.descriptor_dim = int(self.info["descriptor_dim"])

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The graph on uint8 [B, H, W, 3] already at `input_size` (no resize)."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, np.uint8)})[0]


def _unsupported_ops(message: str) -> list:
    """TF op names tf2onnx reports as unsupported in its error or log text."""
    found = re.findall(r"[Uu]nsupported ops?: Counter\(\{([^}]*)\}", message)
    if found:
        return sorted(set(re.findall(r"'([A-Za-z0-9_]+)'", found[0])))
    return sorted(set(re.findall(r"[Nn]o (?:ONNX )?(?:handler|op) (?:found )?for (?:op )?'?([A-Za-z0-9_]+)", message)))


class _Unsupported(logging.Handler):
    """Collects the 'Unsupported ops' tf2onnx logs: it writes such ops into the file as TF-domain nodes
    instead of failing, and the file then fails to load far from the cause."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.text = []

    def emit(self, record):
        self.text.append(record.getMessage())


def _convert(model, signature, path: str, method: str, tower: str) -> str:
    """Keras' own ONNX export, tf2onnx on the concrete function where that fails; returns which was used."""
    import warnings

    errors = []
    log = logging.getLogger("tf2onnx")
    handler = _Unsupported()
    log.addHandler(handler)
    previous, log.propagate = log.propagate, False  # tf2onnx's error lines are reported in our message instead

    def refuse_unsupported():
        ops = _unsupported_ops(" ".join(handler.text))
        if ops:
            raise CvmError(f"{method}: the {tower} tower cannot be exported to ONNX: tf2onnx has no conversion for "
                           f"the TensorFlow op(s) {', '.join(ops)}; use --format savedmodel")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # Keras' tf2onnx numpy-2 patch probes np.object
            try:
                model.export(path, format="onnx", input_signature=signature, verbose=False, opset_version=OPSET)
                refuse_unsupported()
                return "keras.Model.export(format='onnx')"
            except CvmError:
                raise
            except Exception as e:  # noqa: BLE001 (kept to name it if the fallback fails too)
                errors.append(f"Keras export: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            try:
                import tensorflow as tf
                import tf2onnx

                fn = tf.function(lambda images: model(images), input_signature=signature, autograph=False)
                tf2onnx.convert.from_function(fn, input_signature=signature, opset=OPSET, output_path=path)
            except Exception as e:  # noqa: BLE001
                refuse_unsupported()
                text = f"{type(e).__name__}: {e}"
                raise CvmError(f"{method}: the {tower} tower cannot be exported to ONNX ({errors[0]}; tf2onnx: "
                               f"{text.splitlines()[0]}); use --format savedmodel") from None
            refuse_unsupported()
            return "tf2onnx.convert.from_function"
    finally:
        log.removeHandler(handler)
        log.propagate = previous


def export_onnx(encoder, spec, out_dir: str, input_order: str = "rgb", ground_rows: Optional[tuple] = None,
                ground_width: Optional[int] = None, polar_source_size: Optional[int] = None,
                metadata: Optional[dict] = None, tolerance: float = towers_lib.TOLERANCE) -> dict:
    """Write ground.onnx, aerial.onnx and export.json; each tower checked in ONNX Runtime against Keras.

    Args as cvm.export.savedmodel.export_savedmodel, plus polar_source_size: side of the square aerial a
    polar method's aerial tower takes (towers.default_polar_source_size). Returns export.json's dict.
    """
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError as e:
        raise CvmError(f"--format onnx needs tf2onnx and onnxruntime ({e.name} is missing): "
                       "pip install 'cvm[export]'") from None
    layout = towers_lib.tower_layout(spec, ground_rows, ground_width, polar_source_size)
    method = (metadata or {}).get("method", type(encoder).__name__)
    os.makedirs(out_dir, exist_ok=True)
    info = {"format": "onnx", "input_order": input_order, **towers_lib.spec_facts(spec),
            "descriptor_dim": int(getattr(encoder, "descriptor_dim", 0)),
            "opset": OPSET, "converter": {}, "check": {}, **(metadata or {})}
    correlation = towers_lib.correlation_layout(encoder, spec, ground_width)
    if correlation:  # DSM: flattened maps compared by correlation (cvm.geo galleries read the layout)
        info["correlation"] = correlation
    for tower in towers_lib.TOWERS:
        model, signature = towers_lib.serving_model(encoder, spec, tower, input_order, layout)
        path = os.path.join(out_dir, f"{tower}.onnx")
        info["converter"][tower] = _convert(model, signature, path, method, tower)
        info[tower] = {**layout[tower], "file": f"{tower}.onnx"}
    towers_lib.write_info(out_dir, info)
    import onnxruntime

    try:
        for tower in towers_lib.TOWERS:
            check = towers_lib.parity(OnnxTower(out_dir, tower).run, encoder, spec, tower, input_order, layout,
                                      tolerance, f"{method} onnx")
            info["check"][tower] = {**check, "runtime": "onnxruntime " + onnxruntime.__version__}
    except CvmError:
        os.remove(os.path.join(out_dir, "export.json"))  # an export that failed its check is not loadable
        raise
    towers_lib.write_info(out_dir, info)
    return info

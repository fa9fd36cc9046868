"""What `cvm gallery` and `cvm locate` share: the model flags and the towers they name."""

from __future__ import annotations

from absl import flags

from cvm.errors import CvmError

MODEL_FLAGS = ("model_dir", "checkpoint", "saved_model", "onnx_model")


def define_model_flags(module_name: str) -> None:
    """The model flags, attributed to the verb's module (so its --help lists them)."""
    flags.DEFINE_string("model_dir", None, "Run folder written by `cvm train` (its best model; see --checkpoint).",
                        module_name=module_name)
    flags.DEFINE_string("checkpoint", "best", "With --model_dir: best, latest, or a checkpoint / .keras path.",
                        module_name=module_name)
    flags.DEFINE_string("saved_model", None, "A SavedModel folder written by `cvm export`.", module_name=module_name)
    flags.DEFINE_string("onnx_model", None, "An ONNX model written by `cvm export --format onnx`.",
                        module_name=module_name)


def model_unused(fv) -> dict:
    """{flag: reason} of the model flags this run does not use."""
    unused = {}
    if not fv.model_dir:
        unused["checkpoint"] = "it picks the checkpoint of --model_dir, which is not given"
    return unused


def towers_from_flags(fv, required: bool = True):
    """The Towers the flags name (exactly one of --model_dir / --saved_model / --onnx_model), or None."""
    given = [n for n in ("model_dir", "saved_model", "onnx_model") if getattr(fv, n)]
    if len(given) > 1:
        raise CvmError(f"give one model, not {' and '.join('--' + n for n in given)}")
    if not given:
        if required:
            raise CvmError("give the model: --model_dir RUN (cvm train), --saved_model DIR (cvm export) or "
                           "--onnx_model FILE")
        return None
    from cvm.geo import towers

    if fv.saved_model:
        return towers.SavedModelTowers(fv.saved_model)
    if fv.onnx_model:
        return towers.onnx_towers(fv.onnx_model)
    from cvm.training.restore import load_encoder

    encoder, config, described = load_encoder(fv.model_dir, fv.checkpoint)
    rows = (0.25, 0.75) if config.dataset == "cvact" else None
    return towers.KerasTowers(encoder, config.image_spec(), ground_rows=rows, fov_deg=config.fov_deg,
                              description=f"{config.method} {described}")

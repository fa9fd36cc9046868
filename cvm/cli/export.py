"""cvm export: a trained model's two towers as a SavedModel, ONNX or LiteRT files, uint8 images in.

  cvm export --model_dir runs/quickstart --out exported/quickstart                  # SavedModel
  cvm export --model_dir runs/quickstart --out exported/quickstart_onnx --format onnx
  cvm export --model_dir runs/quickstart --out exported/quickstart_litert --format litert

SavedModel: `ground` and `aerial` endpoints take uint8 images of any size ([B, H, W, 3], RGB by default)
and return L2-normalised float32 descriptors; preprocessing (crop, resize, mean) happens inside:

  m = tf.saved_model.load("exported/quickstart")
  ground = m.ground(tf.io.decode_jpeg(tf.io.read_file("pano.jpg"))[None])

onnx / litert: ground.onnx|tflite and aerial.onnx|tflite take uint8 images at the fixed size recorded in
export.json (a polar method's aerial tower: the full-resolution square aerial, --polar_source_size; the
polar map is made inside); cvm.export.onnx.OnnxTower / cvm.export.litert.LiteRTTower resize any image
there as the training pipeline does:

  from cvm.export.onnx import OnnxTower
  ground = OnnxTower("exported/quickstart_onnx", "ground").embed(images)   # uint8 [B, H, W, 3] -> [B, D]

Every onnx / litert export is run in ONNX Runtime / the LiteRT interpreter against the Keras model on the
same images as it is written; the max abs difference is in export.json ("check").
"""

from __future__ import annotations

from absl import flags

from cvm.cli import common

FORMATS = ("savedmodel", "onnx", "litert")

flags.DEFINE_string("model_dir", None, "Run folder written by `cvm train`.")
flags.DEFINE_string("checkpoint", "best", "best, latest, or a checkpoint / .keras path.")
flags.DEFINE_string("out", None, "Output folder (a SavedModel, or the towers' files and export.json).")
flags.DEFINE_string("format", "savedmodel", f"Export format: {', '.join(FORMATS)}.")
flags.DEFINE_enum("input_order", "rgb", ["rgb", "bgr"], "Channel order of the images clients send.")
flags.DEFINE_integer("polar_source_size", None,
                     "onnx / litert of a polar-aerial model: side in pixels of the square aerial its aerial tower "
                     "takes (default: the dataset's full-resolution tiles: cvusa 750, cvact 1200, synthetic 256).")

FLAGS = flags.FLAGS


def main(argv) -> int:
    import os

    from cvm.errors import CvmError

    if len(argv) > 1:
        raise CvmError(f"unexpected arguments {argv[1:]}")
    if FLAGS.format not in FORMATS:
        raise CvmError(f"unknown --format {FLAGS.format!r}; valid: {', '.join(FORMATS)}")
    if not FLAGS.model_dir or not FLAGS.out:
        raise CvmError("--model_dir and --out are required")
    if not os.path.isdir(FLAGS.model_dir):
        raise CvmError(f"--model_dir {FLAGS.model_dir} not found: give a run folder written by `cvm train`")
    if FLAGS.polar_source_size is not None and FLAGS.format == "savedmodel":
        raise CvmError("--polar_source_size applies to --format onnx or litert (the SavedModel takes aerials "
                       "of any size)")
    from cvm.training.restore import load_encoder

    encoder, config, described = load_encoder(FLAGS.model_dir, FLAGS.checkpoint)
    spec = config.image_spec()
    ground_width = None
    if config.fov_deg < 360.0:
        ground_width = max(1, int(round(spec.ground_size[1] * config.fov_deg / 360.0)))
    rows = (0.25, 0.75) if config.dataset == "cvact" else None
    # fov_deg in every format: `cvm locate --fov_deg` checks photos against it (SavedModelTowers.fov_deg).
    metadata = {"method": config.method, "checkpoint": described, "model_dir": FLAGS.model_dir,
                "fov_deg": config.fov_deg}
    dim = encoder.descriptor_dim
    if FLAGS.format == "savedmodel":
        from cvm.export.savedmodel import export_savedmodel

        export_savedmodel(encoder, spec, FLAGS.out, input_order=FLAGS.input_order, ground_rows=rows,
                          ground_width=ground_width, metadata=metadata)
        print(f"exported {described} to {FLAGS.out} (endpoints: ground, aerial; uint8 {FLAGS.input_order.upper()} "
              f"in, {dim}-d unit descriptors out)")
        return 0
    import cvm
    from cvm.export.towers import default_polar_source_size

    if FLAGS.format == "onnx":
        from cvm.export.onnx import export_onnx as export
    else:
        from cvm.export.litert import export_litert as export
    polar_side = FLAGS.polar_source_size
    if polar_side is None and spec.aerial_polar:
        polar_side = default_polar_source_size(config.dataset)
    metadata.update(cvm_version=cvm.__version__, dataset=config.dataset)
    info = export(encoder, spec, FLAGS.out, input_order=FLAGS.input_order, ground_rows=rows,
                  ground_width=ground_width, polar_source_size=polar_side, metadata=metadata)
    sizes = ", ".join(f"{t} {'x'.join(map(str, info[t]['input_size']))}" for t in ("ground", "aerial"))
    checks = ", ".join(f"{t} {info['check'][t]['max_abs_diff']:.2g}" for t in ("ground", "aerial"))
    print(f"exported {described} to {FLAGS.out} as {FLAGS.format} (ground.{info['ground']['file'].split('.')[-1]}, "
          f"aerial.{info['aerial']['file'].split('.')[-1]}; uint8 {FLAGS.input_order.upper()} in at {sizes}, {dim}-d "
          f"unit descriptors out); max abs difference from the Keras model: {checks}")
    return 0


def run(argv) -> None:
    common.run_app("cvm export", argv, main, __doc__, [__name__])

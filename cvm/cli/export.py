"""cvm export: a trained model as a SavedModel with `ground` and `aerial` endpoints.

  cvm export --model_dir runs/quickstart --out exported/quickstart

The endpoints take uint8 images of any size ([B, H, W, 3], RGB by default) and return
L2-normalised float32 descriptors; preprocessing (crop, resize, mean) happens inside:

  m = tf.saved_model.load("exported/quickstart")
  ground = m.ground(tf.io.decode_jpeg(tf.io.read_file("pano.jpg"))[None])
"""

from __future__ import annotations

from absl import flags

from cvm.cli import common

flags.DEFINE_string("model_dir", None, "Run folder written by `cvm train`.")
flags.DEFINE_string("checkpoint", "best", "best, latest, or a checkpoint / .keras path.")
flags.DEFINE_string("out", None, "Output SavedModel folder.")
flags.DEFINE_enum("input_order", "rgb", ["rgb", "bgr"], "Channel order of the images clients send.")

FLAGS = flags.FLAGS


def main(argv) -> int:
    from cvm.errors import CvmError

    if len(argv) > 1:
        raise CvmError(f"unexpected arguments {argv[1:]}")
    if not FLAGS.model_dir or not FLAGS.out:
        raise CvmError("--model_dir and --out are required")
    from cvm.export.savedmodel import export_savedmodel
    from cvm.training.restore import load_encoder

    encoder, config, described = load_encoder(FLAGS.model_dir, FLAGS.checkpoint)
    spec = config.image_spec()
    ground_width = None
    if config.fov_deg < 360.0:
        ground_width = max(1, int(round(spec.ground_size[1] * config.fov_deg / 360.0)))
    rows = (0.25, 0.75) if config.dataset == "cvact" else None
    export_savedmodel(encoder, spec, FLAGS.out, input_order=FLAGS.input_order, ground_rows=rows,
                      ground_width=ground_width,
                      metadata={"method": config.method, "checkpoint": described, "model_dir": FLAGS.model_dir})
    print(f"exported {described} to {FLAGS.out} (endpoints: ground, aerial; uint8 {FLAGS.input_order.upper()} in, "
          f"{encoder.descriptor_dim}-d unit descriptors out)")
    return 0


def run(argv) -> None:
    common.run_app("cvm export", argv, main, __doc__, [__name__])

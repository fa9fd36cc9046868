"""cvm convert: load the authors' released TF1 checkpoints into cvm models (.keras files).

  cvm convert --tf1_checkpoint Model/CVM-Net-I/10/model.ckpt --method cvm_net_i --out cvm_net_i.keras
  cvm convert --tf1_checkpoint Model/trained_model/CVUSA/CVFT/model.ckpt --method cvft --out cvft.keras
  cvm convert --torch_checkpoint weights_e40_98.6830.pth --method sample4geo --out s4g_cvusa.keras

Methods: cvm_net_i, cvm_net_ii (crossview_localisation), cvft, cvft_vgg_conv, cvft_vgg_gp (CVFT's ot_net.py),
safa (SAFA's spatial_net.py), regmi_two_stream, regmi_joint, regmi_fusion (cross-view-image-matching),
dsm (cross_view_localization_DSM's cir_net_FOV.py).

Variables are matched by their original names (VGG_grd/conv1_1/weights, netvlad_grd/cluster_weights,
dim_reduction/..., ...); optimizer slots are ignored; any other missing or unexpected variable is an
error that lists them. The .keras file reloads with keras.models.load_model after `import cvm.models`.

--torch_checkpoint: Sample4Geo's released PyTorch state_dicts (cvm.export.torch_sample4geo), read with
torch.load(weights_only=True) and loaded strictly (every key used, none missing, shapes checked).
"""

from __future__ import annotations

from absl import flags

from cvm.cli import common

flags.DEFINE_string("tf1_checkpoint", None, "TF1 checkpoint prefix (.../model.ckpt) or its folder.")
flags.DEFINE_string("torch_checkpoint", None, "PyTorch state_dict file (.pth) of Sample4Geo (--method sample4geo).")
flags.DEFINE_string("method", None, "Method of the checkpoint: cvm_net_i, cvm_net_ii, cvft, cvft_vgg_conv, cvft_vgg_gp, "
                    "safa, regmi_two_stream, regmi_joint, regmi_fusion, dsm.")
flags.DEFINE_string("out", None, "Output .keras file.")
flags.DEFINE_float("keep_prob", 0.8, "Dropout keep probability stored in the model (training only).")

FLAGS = flags.FLAGS


def check_flags(fv, argv) -> None:
    """Refuse flags this conversion would not use (cvm.flags.use)."""
    from cvm.flags import use as flag_use
    from cvm.models import available_methods, builder_options

    if fv.method not in available_methods():
        return  # main lists the valid methods
    unused = {}
    if "keep_prob" not in builder_options(fv.method):
        unused["keep_prob"] = f"the model of --method {fv.method} has no keep_prob option"
    flag_use.check_verb(fv, unused, [__name__], f"cvm convert --method {fv.method}")


def main(argv) -> int:
    from cvm.errors import CvmError

    if len(argv) > 1:
        raise CvmError(f"unexpected arguments {argv[1:]}")
    if bool(FLAGS.tf1_checkpoint) == bool(FLAGS.torch_checkpoint):
        raise CvmError("pass exactly one of --tf1_checkpoint and --torch_checkpoint")
    for name in ("method", "out"):
        if not getattr(FLAGS, name):
            raise CvmError(f"--{name} is required")
    if FLAGS.torch_checkpoint:
        from cvm.export.torch_sample4geo import convert_torch_checkpoint

        model = convert_torch_checkpoint(FLAGS.torch_checkpoint, FLAGS.method, FLAGS.out)
        print(f"converted {FLAGS.torch_checkpoint} ({FLAGS.method}, {model.descriptor_dim}-d) to {FLAGS.out}")
        return 0
    from cvm.export.tf1 import SUPPORTED_METHODS, convert_tf1_checkpoint
    from cvm.models import builder_options

    if FLAGS.method not in SUPPORTED_METHODS:
        raise CvmError(f"--method {FLAGS.method!r} has no TF1 mapping; supported: {', '.join(SUPPORTED_METHODS)}")
    options = {"keep_prob": FLAGS.keep_prob} if "keep_prob" in builder_options(FLAGS.method) else {}
    model = convert_tf1_checkpoint(FLAGS.tf1_checkpoint, FLAGS.method, FLAGS.out, **options)
    print(f"converted {FLAGS.tf1_checkpoint} ({FLAGS.method}, {model.descriptor_dim}-d) to {FLAGS.out}")
    return 0


def run(argv) -> None:
    common.run_app("cvm convert", argv, main, __doc__, [__name__], check=check_flags)

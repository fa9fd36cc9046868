"""cvm synthesize: write the generated images of a trained synthesis GAN for every sample of a split.

  cvm synthesize --model_dir runs/xfork_pano2aerial --root /data/CVUSA --split train --out synth/train
  cvm synthesize --model_dir runs/xfork_pano2aerial --root /data/CVUSA --split val --out synth/val --metrics
  cvm synthesize --model_dir runs/xfork_dayton --split test --out synth/test --inference_mode

One image per sample, named by its out_name (CVUSA: the aerial file's basename, as the original test
script), at the model's target size. The generator runs in the run's test-time mode, by default the
original test script's: xfork / xseq / xpix2pix with the batch's BatchNorm statistics and dropout on
(test_fork.lua, test_seq.lua, test_pix2pix.lua never call netG:evaluate(); images then depend on their
batch: --batch_size 10 is the scripts'), the ICCV19 forks in inference mode (moving statistics, no
dropout); --inference_mode / --noinference_mode choose. Resumable: images already in --out that decode
are kept, the rest written (atomically), so an interrupted run just continues.
--metrics then scores the folder against the real targets (SSIM, PSNR, sharpness difference) into
MODEL_DIR/results/synthesis_<dataset>_<split>.json.
"""

from __future__ import annotations

from absl import flags

from cvm.cli import common

flags.DEFINE_string("model_dir", None, "Run folder written by `cvm train --method xfork...`.")
flags.DEFINE_string("dataset", None, "Dataset (default: the run's): synthetic, cvusa, dayton, ucfop, cvact.")
flags.DEFINE_string("root", None, "Dataset root (default: the run's; not used by synthetic).")
flags.DEFINE_string("split", "val", "Split whose inputs are synthesized (train, val).")
flags.DEFINE_string("out", None, "Folder the generated images are written to.")
flags.DEFINE_integer("batch_size", None, "Generation batch size (default: the run's eval_batch_size).")
flags.DEFINE_string("checkpoint", "latest", "latest (newest checkpoint), best (lowest validation L1, if the run "
                                            "validated), or a checkpoints/ckpt-*.npz path.")
flags.DEFINE_boolean("metrics", False, "Score the generated images against the real targets afterwards.")
flags.DEFINE_boolean("inference_mode", None, "Generate with BatchNorm moving statistics and no dropout (netG:evaluate()); "
                                             "--noinference_mode: with the batch's statistics and dropout on. Default: "
                                             "the run's --inference_mode (the method's original: off for xfork / xseq / "
                                             "xpix2pix, on for the ICCV19 forks).")
flags.DEFINE_string("split_file", None, "--dataset cvusa: the list whose rows are synthesized (relative to --root or "
                                        "absolute; '{split}' stands for train / val). Default: splits/train-19zl.csv / "
                                        "val-19zl.csv, as test_xfork_pano2aerial.lua.")

FLAGS = flags.FLAGS


def check_flags(fv, argv) -> None:
    """Refuse flags this run would not use (cvm.flags.use)."""
    from cvm.flags import use as flag_use
    from cvm.training.synthesis_config import SynthesisConfig

    def unused(fv, config):
        dataset = fv.dataset or config.dataset
        if dataset != "cvusa":
            return {"split_file": f"only --dataset cvusa reads a split list (this run: --dataset {dataset})"}
        return {}

    flag_use.check_model_dir_verb(fv, argv, SynthesisConfig, [__name__], "cvm synthesize", more_unused=unused)


def main(argv) -> int:
    from cvm.errors import CvmError

    if len(argv) > 1:
        raise CvmError(f"unexpected arguments {argv[1:]}; flags take the form --name=value")
    if not FLAGS.model_dir:
        raise CvmError("--model_dir is required: the folder of a synthesis run trained with `cvm train`")
    if not FLAGS.out:
        raise CvmError("--out is required: the folder to write the generated images to")
    from cvm.synthesis.inference import synthesize

    summary = synthesize(FLAGS.model_dir, FLAGS.out, split=FLAGS.split, dataset=FLAGS.dataset, root=FLAGS.root,
                         batch_size=FLAGS.batch_size, checkpoint=FLAGS.checkpoint, metrics=FLAGS.metrics,
                         inference_mode=FLAGS.inference_mode, split_file=FLAGS.split_file)
    print(f"{summary['out_dir']}: {summary['written']} written, {summary['existing']} already there, "
          f"{summary['samples']} samples ({summary['checkpoint']}, {summary['mode']})")
    if summary.get("skipped_unreadable"):
        print(f"{summary['skipped_unreadable']} samples skipped: unreadable inputs (see {FLAGS.model_dir}/results)")
    if "metrics" in summary:
        values = summary["metrics"].get("metrics", summary["metrics"])
        shown = {k: v for k, v in values.items() if isinstance(v, float)}
        print(", ".join(f"{k} {v:.4f}" for k, v in shown.items()) or "metrics written")
        print(f"results: {summary['metrics_path']}")
    return 0


def run(argv) -> None:
    common.run_app("cvm synthesize", argv, main, __doc__, [__name__], check=check_flags)

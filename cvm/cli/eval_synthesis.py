"""cvm eval-synthesis: image-quality and scene-agreement metrics of generated images.

  cvm eval-synthesis --generated runs/xfork/images --dataset dayton --root /data/dayton --split test \\
      --direction a2g --classifier places365_alexnet.keras --out runs/xfork/results/dayton_test_synthesis.json
  cvm eval-synthesis --generated out/ --real real_images/          (two folders, files matched by name)

Every image file in --generated is compared with the real image of the same name: the target of
the sample whose output name it is (--dataset/--root/--split/--direction; CVUSA and synthetic: the
aerial file's basename, Dayton: the 4-panel file's name), or the file in --real. Prints and writes
SSIM, PSNR and sharpness difference (the originals' conventions and the standard ones) and, with
--classifier (any Keras image classifier saved with model.save; the originals used
AlexNet-Places365), top-1 / top-5 label agreement and the KL score. The JSON goes to --out
(default: synthesis_metrics.json beside the --generated folder).
"""

from __future__ import annotations

import os

from absl import flags

from cvm.cli import common

flags.DEFINE_string("generated", None, "Folder of generated images (named like the real ones).")
flags.DEFINE_string("real", None, "Folder of real images with the same file names (instead of --dataset).")
flags.DEFINE_string("dataset", None, "Dataset whose targets are the real images: synthetic, cvusa, dayton.")
flags.DEFINE_string("root", None, "Dataset root folder (cvusa, dayton).")
flags.DEFINE_string("split", "test", "Split of the real images (CVUSA/synthetic 'test' = 'val').")
flags.DEFINE_enum("direction", "g2a", ["a2g", "g2a"], "Synthesis direction: a2g (aerial -> ground) or g2a.")
flags.DEFINE_string("classifier", None, "Keras image classifier (.keras / .h5) for top-1/top-5 agreement and KL.")
flags.DEFINE_enum("classifier_preprocessing", "imagenet", ["imagenet", "unit", "none"],
                  "Classifier input: imagenet (RGB [0, 1], ImageNet mean/std, as the originals), unit, none (0..255).")
flags.DEFINE_enum("classifier_outputs", "auto", ["auto", "logits", "probabilities"],
                  "Whether the classifier ends in a softmax (auto: detected from the outputs).")
flags.DEFINE_integer("batch_size", 32, "Classifier batch size.", lower_bound=1)
flags.DEFINE_integer("limit", None, "Evaluate only the first N generated files (sorted by name).", lower_bound=1)
flags.DEFINE_string("out", None, "Results JSON (default: synthesis_metrics.json beside --generated).")
flags.DEFINE_integer("synthetic_pairs", 1000, "synthetic: pairs of the synthetic world's dataset.", lower_bound=2)
flags.DEFINE_integer("synthetic_seed", 0, "synthetic: seed of the synthetic world.")

FLAGS = flags.FLAGS


def check_flags(fv, argv) -> None:
    """Refuse flags this evaluation would not use (cvm.flags.use)."""
    from cvm.flags import use as flag_use

    unused = {}
    if fv.real:
        for name in ("root", "split", "direction", "synthetic_pairs", "synthetic_seed"):
            unused[name] = "--real compares with a folder of real images, not with a dataset split"
    elif fv.dataset == "synthetic":
        unused["root"] = "--dataset synthetic is rendered in memory and reads no files"
    else:
        for name in ("synthetic_pairs", "synthetic_seed"):
            unused[name] = f"only --dataset synthetic uses it (this run: --dataset {fv.dataset})"
    if not fv.classifier:
        for name in ("classifier_preprocessing", "classifier_outputs", "batch_size"):
            unused[name] = "there is no --classifier"
    flag_use.check_verb(fv, unused, [__name__], "cvm eval-synthesis")


def main(argv) -> int:
    from cvm.errors import CvmError

    if len(argv) > 1:
        raise CvmError(f"unexpected arguments {argv[1:]}")
    if not FLAGS.generated:
        raise CvmError("--generated is required: the folder of generated images")
    if bool(FLAGS.real) == bool(FLAGS.dataset):
        raise CvmError("pass either --dataset (with --root/--split/--direction) or --real (a folder of real images)")
    from cvm.evaluation.synthesis import evaluate_synthesis

    if FLAGS.real:
        real = FLAGS.real
    else:
        from cvm.data.synthesis import load_synthesis_split

        real = load_synthesis_split(FLAGS.dataset, FLAGS.split, FLAGS.root, FLAGS.direction, segmaps=False,
                                    synthetic_pairs=FLAGS.synthetic_pairs, synthetic_seed=FLAGS.synthetic_seed)
    generated = os.path.abspath(FLAGS.generated)
    out = FLAGS.out or os.path.join(os.path.dirname(generated.rstrip(os.sep)), "synthesis_metrics.json")
    results = evaluate_synthesis(generated, real, FLAGS.classifier, out,
                                 classifier_preprocessing=FLAGS.classifier_preprocessing,
                                 classifier_outputs=FLAGS.classifier_outputs, batch_size=FLAGS.batch_size,
                                 limit=FLAGS.limit, progress=True)
    m = results["metrics"]
    print(f"SSIM {m['ssim']:.4f}, PSNR {m['psnr']:.4f} dB, sharpness difference {m['sharpness_difference']:.4f} dB "
          "(original scripts' conventions)")
    print(f"standard: SSIM {m['ssim_standard']:.4f}, PSNR {m['psnr_standard']:.4f} dB, "
          f"sharpness difference {m['sharpness_difference_standard']:.4f} dB")
    if results["classifier"] is not None:
        def pct(v):
            return "n/a" if v is None else f"{100 * v:.2f}%"

        print(f"classifier agreement: top-1 {pct(m['top1'])}, top-5 {pct(m['top5'])}; real top-1 prob > 0.5 "
              f"({results['classifier']['n_confident']} images): top-1 {pct(m['top1_confident'])}, "
              f"top-5 {pct(m['top5_confident'])}; KL score {m['kl_score']:.4f} (std {m['kl_std']:.4f})")
    skipped = f", {results['n_skipped']} skipped" if results["n_skipped"] else ""
    print(f"N = {results['n_images']} images{skipped}; results in {results['results_json']}")
    return 0


def run(argv) -> None:
    common.run_app("cvm eval-synthesis", argv, main, __doc__, [__name__], check=check_flags)

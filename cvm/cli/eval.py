"""cvm eval: evaluate a trained model on a dataset split (recall@K, top-1%, both directions).

  cvm eval --model_dir runs/quickstart
  cvm eval --model_dir runs/cvm_net_i_cvusa --root /data/CVUSA --split val
  cvm eval --model_dir runs/cvm_net_i_cvact --dataset cvact --root /data/ANU_data_test --split test --radii 0,5,25
  cvm eval --model_dir runs/safa_cvusa --fov_deg 90 --unknown_orientation   limited FoV, heading unknown

Writes MODEL_DIR/results/<dataset>_<split>.json (every metric, both top-1% conventions, N, the
checkpoint), <dataset>_<split>_recall.png (recall@K curves) and <dataset>_<split>_grid.png (queries
with their top-5 aerial images, the true match framed green). Descriptors are compared in chunks,
never as an N x N matrix in memory.
"""

from __future__ import annotations

import os

from absl import flags

from cvm.cli import common

flags.DEFINE_string("model_dir", None, "Run folder written by `cvm train`.")
flags.DEFINE_string("checkpoint", "best", "best (best/model.keras), latest (newest checkpoint), or a path.")
flags.DEFINE_string("dataset", None, "Dataset (default: the run's).")
flags.DEFINE_string("root", None, "Dataset root (default: the run's).")
flags.DEFINE_string("split", None, "Split to evaluate (default: the run's validation split).")
flags.DEFINE_list("radii", ["0"], "Success radii in metres for datasets with UTM/metre locations (0 = the "
                                  "true match only; CVACT_test protocols use 5 or 25).")
flags.DEFINE_integer("batch_size", None, "Embedding batch size (default: the run's eval_batch_size).")
flags.DEFINE_string("out_dir", None, "Where to write results (default MODEL_DIR/results).")
flags.DEFINE_float("fov_deg", None, "Evaluate on limited field-of-view crops of this many degrees (a fixed, seeded "
                                    "test set; default: the run's --fov_deg).")
flags.DEFINE_boolean("unknown_orientation", None, "Shift each panorama by a random azimuth (a fixed, seeded test set; "
                                                  "default: the run's --azimuth_shift). Correlation methods (dsm) "
                                                  "also report the orientation they estimate.")

FLAGS = flags.FLAGS


def check_flags(fv, argv) -> None:
    """Refuse flags this run would not use (cvm.flags.use)."""
    from cvm.flags import use as flag_use
    from cvm.training.config import TrainConfig

    flag_use.check_model_dir_verb(fv, argv, TrainConfig, [__name__], "cvm eval")


def main(argv) -> int:
    from cvm.errors import CvmError

    if len(argv) > 1:
        raise CvmError(f"unexpected arguments {argv[1:]}")
    if not FLAGS.model_dir:
        raise CvmError("--model_dir is required: the folder of a run trained with `cvm train`")
    from cvm.data import load_split
    from cvm.data.pipeline import Pipeline
    from cvm.evaluation.run import evaluate_encoder
    from cvm.training.restore import load_encoder

    encoder, config, described = load_encoder(FLAGS.model_dir, FLAGS.checkpoint)
    protocol = {}
    if FLAGS.fov_deg is not None:
        if not 0.0 < FLAGS.fov_deg <= 360.0:
            raise CvmError(f"--fov_deg must be in (0, 360], got {FLAGS.fov_deg}")
        protocol["fov_deg"] = float(FLAGS.fov_deg)
    if FLAGS.unknown_orientation is not None:
        protocol["azimuth_shift"] = bool(FLAGS.unknown_orientation)
    if protocol:
        import dataclasses

        config = dataclasses.replace(config, **protocol)
    dataset = FLAGS.dataset or config.dataset
    root = FLAGS.root or (config.root if dataset == config.dataset else None)
    split_name = FLAGS.split or config.val_split or "val"
    options = config.split_options() if dataset == config.dataset else {}
    split = load_split(dataset, split_name, root, image_spec=config.image_spec(),
                       synthetic_pairs=config.synthetic_pairs, synthetic_seed=config.synthetic_seed, **options)
    out_dir = FLAGS.out_dir or os.path.join(FLAGS.model_dir, "results")
    suffix = "" if (config.fov_deg >= 360 and not config.azimuth_shift) or config.correlation_method() else (
        f"_fov{config.fov_deg:g}" + ("_unknown_orientation" if config.azimuth_shift else ""))
    pipeline = Pipeline(split, config.image_spec(), config.eval_augment_spec(), seed=2019 + config.seed,
                        faults_path=os.path.join(out_dir, f"{dataset}_{split_name}_faults.txt"))
    radii = [float(r) for r in FLAGS.radii]
    results = evaluate_encoder(encoder, pipeline, FLAGS.batch_size or config.eval_batch_size, method=config.method,
                               checkpoint=described, out_dir=out_dir, name=f"{dataset}_{split_name}{suffix}",
                               model_dir=FLAGS.model_dir, radii=radii, progress=True,
                               orientation=config.orientation_protocol())
    for direction, metrics in results["metrics"].items():
        shown = ", ".join(f"{k} {100 * v:.2f}%" for k, v in metrics.items() if k.startswith("r@"))
        print(f"{direction}: {shown}")
    for direction, table in results.get("within_radius", {}).items():
        for radius, metrics in table.items():
            shown = ", ".join(f"{k} {100 * v:.2f}%" for k, v in metrics.items() if k.startswith("r@"))
            print(f"{direction} within {radius} m: {shown}")
    print(f"N = {results['n_queries']} queries, {results['n_references']} references; "
          f"results in {results['results_json']}")
    return 0


def run(argv) -> None:
    common.run_app("cvm eval", argv, main, __doc__, [__name__], check=check_flags)

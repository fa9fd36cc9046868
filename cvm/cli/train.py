"""cvm train: train (or resume) a retrieval model.

  cvm train                                      the quickstart: a small CVM-Net-I on the synthetic world
  cvm train --flagfile experiments/cvm_net_i_cvusa.cfg --root /data/CVUSA --model_dir runs/cvmnet1
  cvm train --model_dir DIR ...                  resumes DIR from its last checkpoint (same flags)

The resolved flags are written to MODEL_DIR/flags.cfg (reusable as a --flagfile) and config.json.
"""

from __future__ import annotations

import os

from absl import flags

from cvm.cli import common, train_flags

train_flags.define_flags()
FLAGS = flags.FLAGS


def main(argv) -> int:
    if len(argv) > 1:
        from cvm.errors import CvmError

        raise CvmError(f"unexpected arguments {argv[1:]}; flags take the form --name=value")
    from cvm.training.loop import Run

    config = train_flags.config_from_flags(FLAGS)
    run_ = Run(config)  # refuses a model_dir that holds a run with other settings
    with open(os.path.join(config.model_dir, "flags.cfg"), "w") as f:
        f.write(train_flags.flagfile_text(config))
    state = run_.train()
    if state.get("best"):
        best = state["best"]
        print(f"best {best['metric']} {100 * best['score']:.2f}% after epoch {best['epoch']} "
              f"({os.path.join(config.model_dir, 'best', 'model.keras')})")
    return 0


def run(argv) -> None:
    common.run_app("cvm train", argv, main, __doc__, ["cvm.cli.train_flags"])

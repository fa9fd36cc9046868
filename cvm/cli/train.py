"""cvm train: train (or resume) a retrieval model.

  cvm train                                      the quickstart (experiments/sample4geo_quickstart.cfg, used as
                                                 the base whenever no --flagfile and no --method is given): the
                                                 Sample4Geo recipe at CPU size on the synthetic world
  cvm train --method cvm_net_i                   the run defaults: a small CVM-Net-I on the synthetic world
  cvm train --flagfile experiments/cvm_net_i_cvusa.cfg --root /data/CVUSA --model_dir runs/cvmnet1
  cvm train --model_dir DIR ...                  resumes DIR from its last checkpoint (same flags)
  cvm train --flagfile experiments/xfork_pano2aerial_cvusa.cfg --root /data/CVUSA --model_dir runs/xfork
                                                 a synthesis GAN (--method xfork, xseq, xpix2pix,
                                                 xfork_pano2aerial, xfork_aerial2pano; flags marked "Synthesis")

The resolved flags are written to MODEL_DIR/flags.cfg (reusable as a --flagfile) and config.json.
A flag the chosen method does not use (a retrieval flag in a GAN run, a model option its builder does
not take, --val_split with --holdout_fraction > 0, ...) is an error that says why.
"""

from __future__ import annotations

import os

from absl import flags

from cvm.cli import common
from cvm.flags import use as flag_use, synthesis as synthesis_flags, train as train_flags

train_flags.define_flags()
synthesis_flags.define_flags()
FLAGS = flags.FLAGS


def check_flags(fv, argv) -> None:
    """Refuse flags the run would not use (main refuses the pipeline-only methods itself)."""
    if len(argv) > 1 or fv.method in ("regmi_joint", "regmi_fusion"):
        return
    flag_use.check_train(fv)


def main(argv) -> int:
    if len(argv) > 1:
        from cvm.errors import CvmError

        raise CvmError(f"unexpected arguments {argv[1:]}; flags take the form --name=value")
    from cvm.synthesis.methods import is_synthesis_method

    if is_synthesis_method(FLAGS.method):
        return train_synthesis()
    if FLAGS.dataset == "dayton":
        from cvm.errors import CvmError

        raise CvmError(f"--dataset dayton has no retrieval pairs (it is a synthesis dataset): use it with a synthesis "
                       f"--method (xfork, xseq, xpix2pix), not {FLAGS.method!r}")
    if FLAGS.method in ("regmi_joint", "regmi_fusion"):
        from cvm.errors import CvmError

        raise CvmError(f"--method {FLAGS.method} trains on synthesized aerials / dumped descriptors that the "
                       "earlier stages produce: run it with `cvm pipeline regmi_iccv19` (its --joint_flag / "
                       "--fusion_flag pass flags to this stage)")
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


def train_synthesis() -> int:
    """A synthesis GAN run (cvm.training.gan); its resolved flags go to MODEL_DIR/flags.cfg."""
    from cvm.training.gan import SynthesisRun

    config = synthesis_flags.config_from_flags(FLAGS)
    run_ = SynthesisRun(config)  # refuses a model_dir that holds a run with other settings
    with open(os.path.join(run_.config.model_dir, "flags.cfg"), "w") as f:
        f.write(synthesis_flags.flagfile_text(run_.config))
    state = run_.train()
    if state.get("best"):
        best = state["best"]
        print(f"best validation L1 {best['score']:.4f} after epoch {best['epoch']} "
              f"({os.path.join(run_.config.model_dir, 'best')})")
    return 0


def method_help(fv, argv):
    """With --method (or a flagfile) given: the flags that run takes, its model's options first; else None."""
    if not any(a.startswith(("--method", "-method", "--flagfile", "-flagfile")) for a in argv[1:]):
        return None
    fv(argv)
    unused, subject = flag_use.train_unused(fv)
    takes = [name for name in (*train_flags.FIELDS, *synthesis_flags.FIELDS) if name not in unused]
    takes = list(dict.fromkeys(takes))
    model = [n for n in takes if n in train_flags.MODEL_FIELDS]
    if model:
        from cvm.models import model_class

        cls = model_class(fv.method)
        head = f"Model options of {subject} ({cls.__module__}.{cls.__name__}; defaults here are the run's):"
    else:
        head = f"Model options of {subject}:"
    rest = [n for n in takes if n not in model]
    texts = cls.option_help() if model else {}
    texts = {name: text[:1].upper() + text[1:] for name, text in texts.items() if text}
    sections = [head, common.flag_help(model, fv, texts=texts)] if model else []
    sections += [f"The other flags {subject} takes (every other flag is refused for it):", common.flag_help(rest, fv)]
    return "\n".join(sections)


def run(argv) -> None:
    common.run_app("cvm train", argv, main, __doc__, ["cvm.flags.train", "cvm.flags.synthesis"],
                   check=check_flags, method_help=method_help)

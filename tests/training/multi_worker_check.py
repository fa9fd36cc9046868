"""Run as a script: one retrieval run (`cvm train`'s flags) whose trainable weights before and after
training are written to --weights_out (.npz: init_<i>, final_<i>). With TF_CONFIG set and
--strategy=multi_worker it is one worker of a cluster; without, the one-process reference."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from cvm.flags import train as train_flags  # noqa: E402
from cvm.training.loop import Run  # noqa: E402


def main(argv) -> None:
    fv = flags.FlagValues()
    train_flags.define_flags(fv)
    flags.DEFINE_string("weights_out", None, "where to write the .npz of the weights", flag_values=fv)
    fv(argv)
    run = Run(train_flags.config_from_flags(fv), progress=False)
    # Variables exist (and, under MultiWorkerMirroredStrategy, hold the chief's broadcast initial values).
    init = [np.asarray(v.numpy()) for v in run.encoder.trainable_variables]
    state = run.train()
    final = [np.asarray(v.numpy()) for v in run.encoder.trainable_variables]
    arrays = {f"init_{i}": a for i, a in enumerate(init)}
    arrays.update({f"final_{i}": a for i, a in enumerate(final)})
    np.savez(fv.weights_out, global_step=state["global_step"], **arrays)


if __name__ == "__main__":
    main(sys.argv)

"""A NaN loss stops the run at the step it happened, naming that step, with the last checkpoint and
best/ untouched. The NaN is injected (CVM_NAN_AT_STEP: the first trainable variable set to NaN before
that step) at a step that is neither a log point nor a checkpoint, so a check that ran only every
--log_every_steps would name a later step."""

import hashlib
import os

import pytest

import soaklib
from conftest import copy_run

pytestmark = pytest.mark.slow


def digests(folder):
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def _nan_run(reference, tmp_path, args, keep_until, nan_step):
    model_dir = copy_run(reference, tmp_path / "run", keep_until=keep_until)
    checkpoints, best = os.path.join(model_dir, "checkpoints"), os.path.join(model_dir, "best")
    before = digests(checkpoints), digests(best)
    result = soaklib.cvm("train", f"--model_dir={model_dir}", *args, "--keep_checkpoints=20",
                         env={"CVM_NAN_AT_STEP": str(nan_step)})
    assert result.returncode != 0 and "Traceback" not in result.stderr, soaklib.tail(result)
    errors = [line for line in result.stderr.splitlines() if line.startswith("cvm train: error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert (digests(checkpoints), digests(best)) == before  # nothing saved after the NaN, best/ untouched
    last = os.path.join(checkpoints, f"ckpt-{keep_until:09d}.npz")
    assert f"the last checkpoint is {last}" in errors[0]
    return errors[0]


def test_retrieval_nan_names_its_step(retrieval_reference, tmp_path):
    # Resumed at global step 8 (epoch 2, step 2); NaN in global step 10 = epoch 2, step 4. Log points are
    # steps 5 and 6 of the epoch, the next checkpoint global step 12.
    error = _nan_run(retrieval_reference, tmp_path, soaklib.RETRIEVAL, keep_until=8, nan_step=10)
    assert "the loss became nan at epoch 2, step 4:" in error, error


def test_gan_nan_names_its_step(gan_reference, tmp_path):
    # Resumed at global step 6 (epoch 2, step 1); NaN in global step 7 = epoch 2, step 2. The next log
    # point is step 3 (also the checkpoint at global step 8).
    error = _nan_run(gan_reference, tmp_path, soaklib.GAN, keep_until=6, nan_step=7)
    assert "became non-finite at epoch 2, step 2:" in error and "g_loss" in error, error

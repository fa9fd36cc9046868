"""Damaged newest checkpoints: resume falls back to the newest good one and says so; with none good it is
a clear CvmError and nothing is written."""

import hashlib
import json
import os

import numpy as np
import pytest

import soaklib
from conftest import copy_run

pytestmark = pytest.mark.slow


def ckpt(model_dir, step, ext="npz"):
    return os.path.join(model_dir, "checkpoints", f"ckpt-{step:09d}.{ext}")


def damage(model_dir):
    """The four newest checkpoints of a copy kept up to step 16, each damaged another way."""
    with open(ckpt(model_dir, 16, "json"), "r+") as f:  # loop state cut mid-file
        f.truncate(len(f.read()) // 2)
    with open(ckpt(model_dir, 12), "r+b") as f:  # truncated .npz (no zip directory)
        f.truncate(os.path.getsize(ckpt(model_dir, 12)) // 2)
    open(ckpt(model_dir, 8), "wb").close()  # zero bytes
    with np.load(ckpt(model_dir, 6)) as data:  # another model's variables: one renamed, one reshaped
        arrays = {k: data[k] for k in data.files}
    first, second = sorted(arrays)[:2]
    arrays[first.replace(":", ":other_")] = arrays.pop(first)
    arrays[second] = np.zeros((3, 3), np.float32)
    np.savez(ckpt(model_dir, 6), **arrays)


def digests(folder):
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_resume_skips_damaged_checkpoints_to_the_newest_good_one(retrieval_reference, tmp_path):
    model_dir = copy_run(retrieval_reference, tmp_path / "run", keep_until=16)
    damage(model_dir)
    # `cvm eval --checkpoint latest` reads the same way (and writes no checkpoint).
    evaluated = soaklib.cvm("eval", f"--model_dir={model_dir}", "--checkpoint=latest")
    assert evaluated.returncode == 0, soaklib.tail(evaluated)
    assert "resuming from ckpt-000000004.npz" in evaluated.stderr
    assert "ckpt-000000004.npz (epoch 0, step 4)" in open(
        os.path.join(model_dir, "results", "synthetic_val.json")).read()

    resumed = soaklib.cvm("train", f"--model_dir={model_dir}", *soaklib.RETRIEVAL, "--keep_checkpoints=20")
    assert resumed.returncode == 0, soaklib.tail(resumed)
    said = [line for line in resumed.stderr.splitlines() if "damaged checkpoint" in line]
    assert len(said) == 1, resumed.stderr[-3000:]
    line = said[0]
    assert "skipped 4 damaged checkpoint(s)" in line and "resuming from ckpt-000000004.npz (global step 4)" in line
    assert "ckpt-000000016.npz (cannot read the loop state" in line
    assert "ckpt-000000012.npz (cannot read checkpoint" in line and "BadZipFile" in line
    assert "ckpt-000000008.npz (cannot read checkpoint" in line
    assert "ckpt-000000006.npz (checkpoint" in line and "does not match the model" in line
    assert "resuming" in resumed.stdout and "at epoch 1, step 4" in resumed.stdout
    # The resumed run rewrote the damaged ones and ended where the uninterrupted run did.
    got, state = soaklib.final_checkpoint(model_dir)
    want, ref_state = soaklib.final_checkpoint(retrieval_reference)
    assert state["global_step"] == 18 and state["history"] == ref_state["history"]
    soaklib.assert_same_arrays(got, want)
    for step in (6, 8, 12, 16):
        soaklib.assert_same_arrays(soaklib.by_ordinal(ckpt(model_dir, step)),
                                   soaklib.by_ordinal(ckpt(retrieval_reference, step)))
    with open(os.path.join(model_dir, "best", "metrics.json")) as a, \
            open(os.path.join(retrieval_reference, "best", "metrics.json")) as b:
        assert json.load(a) == json.load(b)


def test_no_good_checkpoint_is_an_error_and_nothing_is_overwritten(retrieval_reference, tmp_path):
    model_dir = copy_run(retrieval_reference, tmp_path / "run", keep_until=16)
    damage(model_dir)
    with open(ckpt(model_dir, 4), "r+b") as f:
        f.truncate(100)
    before = digests(model_dir)
    result = soaklib.cvm("train", f"--model_dir={model_dir}", *soaklib.RETRIEVAL, "--keep_checkpoints=20")
    assert result.returncode != 0 and "Traceback" not in result.stderr, soaklib.tail(result)
    errors = [line for line in result.stderr.splitlines() if line.startswith("cvm train: error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    error = errors[0]
    assert f"no usable checkpoint in {os.path.join(model_dir, 'checkpoints')}" in error
    for step in (4, 6, 8, 12, 16):
        assert f"ckpt-{step:09d}.npz (" in error
    assert "Nothing was written" in error
    # Every checkpoint, best/ and results/ byte for byte. (config.json and flags.cfg are rewritten at
    # start-up with the same settings: they name this copy's --model_dir.)
    kept = ("checkpoints", "best", "results", "faults.txt")
    assert {k: v for k, v in digests(model_dir).items() if k.startswith(kept)} == \
        {k: v for k, v in before.items() if k.startswith(kept)}

"""What the soak tests share: running `cvm` in a subprocess, killing it at a named moment
(cvm.faultinject), and checking what survived in a model_dir."""

import glob
import json
import os
import re
import subprocess
import sys
import zipfile

import numpy as np

from cvm.training.checkpoints import CheckpointManager

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KILLED = re.compile(r"cvm faultinject: kill at (\S+), global step (\d+)")

# A tiny retrieval run: 60 synthetic pairs (48 train, 12 val), 32x128 / 64x64 images, a 1/16-width
# CVM-Net-I: 3 epochs of 6 steps, a checkpoint every 4 steps and at each epoch end (steps 4, 6, 8, 12,
# 16, 18), validation and best/ after every epoch. Losses are logged every 5 steps (not a divisor of
# the checkpoint interval, so a NaN check that ran only at log points would name the wrong step).
RETRIEVAL = ["--method=cvm_net_i", "--synthetic_pairs=60", "--ground_size=32,128", "--aerial_size=64,64", "--batch_size=8",
             "--output_dim=16", "--clusters=4", "--backbone_width=0.0625", "--keep_prob=1.0", "--lr=3e-4",
             "--eval_batch_size=12", "--nojit_compile", "--epochs=3", "--steps_per_epoch=6",
             "--checkpoint_every_steps=4", "--log_every_steps=5", "--deterministic"]
RETRIEVAL_INTERVAL = 4
RETRIEVAL_CHECKPOINTS = (4, 6, 8, 12, 16, 18)
RETRIEVAL_EPOCH_ENDS = (6, 12, 18)


def cvm(*args, env=None, timeout=900, **kwargs):
    """`python -m cvm.cli.main ARGS` from the repository root; a CompletedProcess with text output."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    for key in ("CVM_KILL_AT", "CVM_KILL_GROUP", "CVM_NAN_AT_STEP"):
        full_env.pop(key, None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "cvm.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=full_env, **kwargs)


def tail(result, n=3000) -> str:
    return f"rc {result.returncode}\nstdout: {result.stdout[-n:]}\nstderr: {result.stderr[-n:]}"


def by_ordinal(path) -> dict:
    """{"model/0003": array, ...}: a checkpoint's arrays keyed by creation order (names carry Keras'
    per-process suffixes)."""
    with np.load(path) as data:
        return {k.split(":")[0]: data[k] for k in data.files}


def final_checkpoint(model_dir):
    path = CheckpointManager(os.path.join(model_dir, "checkpoints")).latest()
    return by_ordinal(path), CheckpointManager.read_state(path)


def assert_same_arrays(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def check_checkpoints(model_dir, shapes: dict) -> dict:
    """Every checkpoint a resume could pick reads whole, with every variable of the reference shapes.

    Returns {"newest": global step of the newest, "count": how many, "leftovers": temporary files of
    killed saves, "partial": how many of those leftovers are not a complete .npz}.
    """
    directory = os.path.join(model_dir, "checkpoints")
    manager = CheckpointManager(directory)
    listed = manager._paths()
    for path in listed:
        state = CheckpointManager.read_state(path)
        arrays = by_ordinal(path)  # reads every member (CRC-checked)
        assert {k: a.shape for k, a in arrays.items()} == shapes, path
        assert int(os.path.basename(path)[5:14]) == state["global_step"], path
    leftovers = sorted(glob.glob(os.path.join(directory, "*.tmp*")))
    partial = sum(1 for p in leftovers if p.endswith(".npz") and not _complete_npz(p))
    newest = CheckpointManager.read_state(listed[-1])["global_step"] if listed else 0
    return {"newest": newest, "count": len(listed), "leftovers": len(leftovers), "partial": partial}


def _complete_npz(path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except (zipfile.BadZipFile, OSError):
        return False


def killed_at(result):
    """(point, global step) of the faultinject line in a killed run's stderr, or None."""
    match = KILLED.search(result.stderr)
    return (match.group(1), int(match.group(2))) if match else None


def kill_soak(args, model_dir, moments, interval, shapes, group=False):
    """Run `cvm ARGS` once per moment with CVM_KILL_AT=moment, then once to the end.

    After each kill: the run died by SIGKILL at the named point, every checkpoint left reads whole, and
    the work lost (steps done at the kill minus the newest checkpoint's) is at most `interval`.
    Returns one row per kill.
    """
    rows = []
    for moment in moments:
        env = {"CVM_KILL_AT": moment}
        if group:
            env["CVM_KILL_GROUP"] = "1"
        result = cvm(*args, env=env, start_new_session=group)
        assert result.returncode == -9, f"{moment}: not killed\n{tail(result)}"
        landed = killed_at(result)
        point = moment.split("@")[0].split("/")[-1]
        assert landed is not None and landed[0] == point, f"{moment}: {landed}\n{tail(result)}"
        found = check_checkpoints(model_dir, shapes)
        lost = landed[1] - found["newest"]
        assert 0 <= lost <= interval, (moment, landed, found)
        rows.append({"moment": moment, "killed_at_step": landed[1], "resumes_from": found["newest"],
                     "lost_steps": lost, **found})
    final = cvm(*args)
    assert final.returncode == 0, tail(final)
    return rows, final


def print_rows(title, rows) -> None:
    print(f"\n{title}")
    for row in rows:
        print("  " + json.dumps(row))

# A tiny X-Fork (ICCV19 CVUSA fork) GAN run: 40 synthetic pairs, 32x128 panoramas -> 64x64 aerials, 1/8
# width: 2 epochs of 5 steps, a checkpoint every 2 steps and at each epoch end (2, 4, 5, 6, 8, 10),
# validation L1 and best/ after each epoch, losses logged every 3 steps.
GAN = ["--method=xfork_pano2aerial", "--preset=pano2aerial_small", "--input_size=32,128", "--target_size=64,64",
       "--ngf=8", "--ndf=8", "--d_layers=3", "--synthetic_pairs=40", "--batch_size=4", "--image_every_steps=0",
       "--epochs=2", "--steps_per_epoch=5", "--checkpoint_every_steps=2", "--log_every_steps=3", "--val_split=val"]
GAN_INTERVAL = 2
GAN_CHECKPOINTS = (2, 4, 5, 6, 8, 10)
GAN_EPOCH_ENDS = (5, 10)

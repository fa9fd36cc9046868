"""kill -9 at seeded random moments of a run, each followed by the same command: nothing is lost.

Each moment is a named point (cvm.faultinject: inside a step, the new checkpoint half on disk, its
.npz in place without its .json, before the old ones are pruned, mid-validation, best/ model written
but not renamed, best/ model renamed but metrics.json not written) and the global step from which it
fires. A seeded RNG draws the steps (and which points get more than one kill); after every kill the
run must have died at that point, every checkpoint left must read whole, and at most one checkpoint
interval of steps may be lost. The final weights, best/ and the loop state must equal those of an
uninterrupted run with the same seed.
"""

import glob
import json
import os

import keras
import numpy as np
import pytest

import soaklib

pytestmark = pytest.mark.slow

# Within one global step the points come in this order (an epoch end: the interval checkpoint, then
# validation, best/, the epoch-end checkpoint; the next step starts after all of them).
ORDER = {"checkpoint.write": 0, "checkpoint.rename": 1, "validation": 2, "best.model": 3, "best.metrics": 4,
         "checkpoint.prune": 5, "step": 6}


def draw_moments(rng, plan, scope=""):
    """"[scope/]point@step" strings in run order: `count` distinct steps drawn from the allowed steps of
    each (point, allowed steps, count) of `plan`."""
    moments = [(point, int(step)) for point, steps, count in plan
               for step in rng.choice(list(steps), size=min(count, len(steps)), replace=False)]
    return [f"{scope}{p}@{s}" for p, s in sorted(moments, key=lambda m: (m[1], ORDER[m[0]]))]


def improving_epoch_ends(state, steps_per_epoch, metric, sign=1):
    """Global steps of the epoch ends whose validation improved the best (where best/ is written);
    sign=-1 for a metric where lower is better."""
    best, steps = None, []
    for entry in state["history"]:
        if best is None or sign * entry[metric] > sign * best:
            best = entry[metric]
            steps.append(entry["epoch"] * steps_per_epoch)
    return steps


def keras_weights(path):
    import cvm.models  # noqa: F401  (registers the custom layers the .keras files name)
    import cvm.models.synthesis  # noqa: F401

    return keras.saving.load_model(path, compile=False).get_weights()


def assert_no_leftovers(model_dir):
    left = glob.glob(os.path.join(model_dir, "**", "*.tmp*"), recursive=True)
    assert not left, left


def test_retrieval_run_survives_ten_kills(retrieval_reference, tmp_path):
    reference, ref_state = soaklib.final_checkpoint(retrieval_reference)
    shapes = {k: a.shape for k, a in reference.items()}
    best_steps = improving_epoch_ends(ref_state, 6, "r@1")
    steps = range(0, 18)  # step@N: killed inside step N + 1
    checkpoints = soaklib.RETRIEVAL_CHECKPOINTS
    plan = [("step", steps, 3), ("checkpoint.write", checkpoints, 2), ("checkpoint.rename", checkpoints, 1),
            ("checkpoint.prune", checkpoints, 1), ("validation", soaklib.RETRIEVAL_EPOCH_ENDS, 1),
            ("best.model", best_steps, 1), ("best.metrics", best_steps, 1)]
    moments = draw_moments(np.random.default_rng(11), plan)
    model_dir = str(tmp_path / "killed")
    # Two checkpoints kept (the reference keeps all): pruning runs under the kills too.
    args = ["train", f"--model_dir={model_dir}", *soaklib.RETRIEVAL, "--keep_checkpoints=2"]
    rows, final = soaklib.kill_soak(args, model_dir, moments, soaklib.RETRIEVAL_INTERVAL, shapes)
    soaklib.print_rows("retrieval: kill -9 moments", rows)
    for row in rows:
        if row["moment"].startswith("checkpoint.write"):
            assert row["partial"] >= 1, row  # the kill left the new checkpoint half-written (and it was ignored)
    assert len(rows) == 10 and "resuming" in final.stdout

    got, state = soaklib.final_checkpoint(model_dir)
    assert (state["epoch"], state["global_step"]) == (ref_state["epoch"], ref_state["global_step"]) == (3, 18)
    assert state["history"] == ref_state["history"] and state["best"] == ref_state["best"]
    soaklib.assert_same_arrays(got, reference)
    with open(os.path.join(model_dir, "best", "metrics.json")) as a, \
            open(os.path.join(retrieval_reference, "best", "metrics.json")) as b:
        assert json.load(a) == json.load(b)
    for x, y in zip(keras_weights(os.path.join(model_dir, "best", "model.keras")),
                    keras_weights(os.path.join(retrieval_reference, "best", "model.keras"))):
        np.testing.assert_array_equal(x, y)
    assert_no_leftovers(model_dir)


def test_gan_run_survives_six_kills(gan_reference, tmp_path):
    reference, ref_state = soaklib.final_checkpoint(gan_reference)
    shapes = {k: a.shape for k, a in reference.items()}
    best_steps = improving_epoch_ends(ref_state, 5, "l1", sign=-1)
    checkpoints = soaklib.GAN_CHECKPOINTS
    plan = [("step", range(0, 10), 2), ("checkpoint.write", checkpoints, 1), ("checkpoint.rename", checkpoints, 1),
            ("validation", soaklib.GAN_EPOCH_ENDS, 1), ("best.model", best_steps, 1)]
    moments = draw_moments(np.random.default_rng(12), plan)
    model_dir = str(tmp_path / "killed")
    args = ["train", f"--model_dir={model_dir}", *soaklib.GAN, "--keep_checkpoints=2"]
    rows, final = soaklib.kill_soak(args, model_dir, moments, soaklib.GAN_INTERVAL, shapes)
    soaklib.print_rows("gan: kill -9 moments", rows)
    assert len(rows) == 6 and "resuming" in final.stdout
    for row in rows:
        if row["moment"].startswith("checkpoint.write"):
            assert row["partial"] >= 1, row

    got, state = soaklib.final_checkpoint(model_dir)
    assert state["global_step"] == ref_state["global_step"] == 10
    assert state["history"] == ref_state["history"] and state["best"] == ref_state["best"]
    soaklib.assert_same_arrays(got, reference)
    with open(os.path.join(model_dir, "best", "metrics.json")) as a, \
            open(os.path.join(gan_reference, "best", "metrics.json")) as b:
        assert json.load(a) == json.load(b)
    for x, y in zip(keras_weights(os.path.join(model_dir, "best", "generator_g.keras")),
                    keras_weights(os.path.join(gan_reference, "best", "generator_g.keras"))):
        np.testing.assert_array_equal(x, y)
    assert_no_leftovers(model_dir)

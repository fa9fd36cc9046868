"""Training on the synthetic world: learning happens, resumption after kill -9 is exact,
checkpoints that do not match are refused, the SavedModel export matches Keras."""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from cvm.errors import CvmError
from cvm.training.checkpoints import CheckpointManager
from cvm.training.config import TrainConfig
from cvm.training.loop import Run

# A tiny run: 120 synthetic pairs (96 train, 24 val), 32x128 panoramas, 64x64 aerials.
TINY = dict(method="cvm_net_i", synthetic_pairs=120, ground_size=(32, 128), aerial_size=(64, 64), batch_size=8,
            output_dim=64, clusters=8, keep_prob=1.0, lr=3e-4, eval_batch_size=24, jit_compile=False)


def tiny_config(model_dir, **overrides):
    return TrainConfig(model_dir=str(model_dir), **{**TINY, **overrides})


def test_training_improves_recall_over_the_untrained_model(tmp_path):
    run = Run(tiny_config(tmp_path / "run", epochs=6, best_metric="r@5"), progress=False)
    before = run.validate(0)
    state = run.train()
    # The best epoch (the one kept in best/) against the untrained model; chance R@5 = 5/24 ~ 0.21.
    after = max(state["history"], key=lambda h: h["r@5"])
    assert state["best"]["epoch"] >= 1
    assert after["r@5"] > before["r@5"] + 0.2, (before, state["history"])
    assert after["r@5"] > 0.45, (before, state["history"])
    assert after["r@1%_floor_plus_1"] > before["r@1%_floor_plus_1"], (before, state["history"])
    assert os.path.isfile(tmp_path / "run" / "best" / "model.keras")
    assert glob.glob(str(tmp_path / "run" / "tensorboard" / "train" / "events.*"))
    assert os.path.isfile(tmp_path / "run" / "results" / "validation" / "epoch006.json")


def _cli_train(model_dir, *extra):
    args = [f"--{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in TINY.items()]
    cmd = [sys.executable, "-m", "cvm.cli.main", "train", f"--model_dir={model_dir}", "--epochs=2",
           "--steps_per_epoch=5", "--checkpoint_every_steps=2", "--val_split=", "--deterministic", *args, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def _final_weights(model_dir):
    path = CheckpointManager(os.path.join(model_dir, "checkpoints")).latest()
    with np.load(path) as data:
        return {k: data[k] for k in data.files}, CheckpointManager.read_state(path)


def test_a_killed_run_resumes_to_the_same_weights(tmp_path):
    """kill -9 after global step 7 (mid epoch 2; last checkpoint at step 6): resume == uninterrupted."""
    straight = _cli_train(tmp_path / "straight", "--augment=joint")
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = _cli_train(tmp_path / "killed", "--augment=joint", "--kill_after_steps=7")
    assert killed.returncode == -9
    _, state = _final_weights(tmp_path / "killed")
    assert (state["epoch"], state["step"], state["global_step"]) == (1, 1, 6)  # lost one step < one interval
    resumed = _cli_train(tmp_path / "killed", "--augment=joint")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    a, state_a = _final_weights(tmp_path / "straight")
    b, state_b = _final_weights(tmp_path / "killed")
    assert state_a["global_step"] == state_b["global_step"] == 10
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # flags.cfg is a flagfile that reproduces the run.
    assert "--model_dir=" in open(tmp_path / "straight" / "flags.cfg").read()


def test_mismatched_checkpoint_is_refused_with_the_variables_listed(tmp_path):
    run = Run(tiny_config(tmp_path / "a", epochs=1, steps_per_epoch=1, val_split=None), progress=False)
    run.train()
    path = run.checkpoints.latest()
    other = Run(tiny_config(tmp_path / "b", epochs=1, output_dim=32, val_split=None), progress=False)
    with pytest.raises(CvmError) as err:
        CheckpointManager.restore(path, other.encoder, other.optimizer)
    message = str(err.value)
    assert "does not match the model" in message and "dim_reduction/kernel" in message
    assert "(512, 64)" in message and "(512, 32)" in message
    # A model_dir that holds a run with other settings is refused too.
    with pytest.raises(CvmError, match="holds a run with other settings.*output_dim"):
        Run(tiny_config(tmp_path / "a", epochs=1, output_dim=32, val_split=None), progress=False)


def test_savedmodel_round_trip(tmp_path):
    from cvm.data.images import ImageSpec
    from cvm.export.savedmodel import export_savedmodel

    run = Run(tiny_config(tmp_path / "run", epochs=1, steps_per_epoch=1, val_split=None), progress=False)
    spec = ImageSpec(ground_size=(32, 128), aerial_size=(64, 64))
    export_savedmodel(run.encoder, spec, str(tmp_path / "sm"), input_order="bgr")
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    rng = np.random.default_rng(0)
    ground = rng.integers(0, 256, (3, 32, 128, 3), dtype=np.uint8)
    aerial = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    mean = np.array([103.939, 116.779, 123.6], np.float32)
    expected = run.encoder({"ground": ground.astype(np.float32) - mean, "aerial": aerial.astype(np.float32) - mean})
    np.testing.assert_allclose(loaded.ground(ground).numpy(), expected["ground"].numpy(), atol=1e-5)
    np.testing.assert_allclose(loaded.aerial(aerial).numpy(), expected["aerial"].numpy(), atol=1e-5)
    # Any size goes in; unit descriptors come out.
    big = loaded.aerial(rng.integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)).numpy()
    assert big.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(big, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_steps_keep_a_float32_loss(tmp_path, policy):
    import keras

    try:
        run = Run(tiny_config(tmp_path / policy, epochs=1, steps_per_epoch=2, val_split=None, precision=policy),
                  progress=False)
        if policy == "mixed_float16":  # dynamic loss scaling guards float16 gradients
            assert isinstance(run.optimizer, keras.optimizers.LossScaleOptimizer)
        features, meta = next(iter(run.pipeline.train(8, epochs=1)))
        out = run.encoder(run.trainer.prepare(features), training=False)
        assert out["ground"].dtype == tf.float32  # descriptors leave the model in float32
        before = [w.copy() for w in run.encoder.get_weights()]
        loss = run._step_fn((features, meta))
        assert loss.dtype == tf.float32 and np.isfinite(float(loss))
        moved = max(float(np.max(np.abs(a - b))) for a, b in zip(before, run.encoder.get_weights()))
        assert moved > 0
    finally:
        keras.mixed_precision.set_global_policy("float32")

"""Sample4Geo's learning-rate schedule (WarmupSchedule: transformers' get_{cosine,constant}_schedule_with_warmup as a
Keras schedule of the optimizer's step count), its flags (--optimizer, --weight_decay, --lr_schedule,
--warmup_epochs, --clip_grad_value) and a small `cvm train` run that logs the scheduled rate."""

import glob
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from cvm.errors import CvmError
from cvm.flags import train as train_flags, use as flag_use
from tests.flaglib import train_flag_values
from cvm.training.config import TrainConfig
from cvm.training.optimizers import FusedAdam, FusedAdamW, WarmupSchedule, make_optimizer


def transformers_lambda(step, warmup, total, decay="cosine"):
    """transformers' get_cosine_schedule_with_warmup (num_cycles 0.5) / get_constant_schedule_with_warmup
    multiplier at `step`, restated in NumPy float64."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    if decay == "constant":
        return 1.0
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + np.cos(np.pi * 0.5 * 2.0 * progress)))


@pytest.mark.parametrize("decay, warmup_epochs, epochs, steps_per_epoch", [
    ("cosine", 1.0, 40, 13),  # Sample4Geo: 1 warm-up epoch of 40
    ("cosine", 0.5, 3, 7),  # fractional warm-up (3.5 steps), as their len(loader) * warmup_epochs
    ("cosine", 0.0, 2, 5),  # no warm-up: cosine from the first step
    ("constant", 2.0, 4, 3)])  # linear warm-up, then constant
def test_schedule_is_transformers_lambda_at_every_step(decay, warmup_epochs, epochs, steps_per_epoch):
    lr = 1e-3
    schedule = WarmupSchedule(lr, warmup_epochs, epochs, steps_per_epoch, decay=decay)
    warmup, total = warmup_epochs * steps_per_epoch, epochs * steps_per_epoch
    steps = np.arange(total + 3)
    got = np.array([float(schedule(tf.constant(s, tf.int64))) for s in steps])
    expected = np.array([lr * transformers_lambda(s, warmup, total, decay) for s in steps])
    # float32 step / warm-up / progress and cos: a few float32 ulp of lr (1e-3 * 6e-8 each).
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-10)
    # The landmarks, stated plainly: warm-up starts at 0 and ends at lr, the cosine is at lr / 2 halfway through
    # its steps and reaches 0 at the end of training (the last step runs at a small positive rate).
    if warmup:
        assert got[0] == 0.0 and got[1] == pytest.approx(lr / warmup, rel=1e-6)
    assert got[math.ceil(warmup)] == pytest.approx(lr * transformers_lambda(math.ceil(warmup), warmup, total, decay))
    if decay == "cosine":
        middle = warmup + (total - warmup) / 2
        if middle == int(middle):
            assert got[int(middle)] == pytest.approx(lr / 2, rel=1e-6)
        # The last step: 0.5 (1 - cos(pi / (T - W))) <= (pi / (T - W))^2 / 4 of lr.
        assert 0 < got[total - 1] <= lr * (math.pi / (total - warmup)) ** 2 / 4 * (1 + 1e-6)
        assert got[total] == pytest.approx(0.0, abs=1e-12)
        assert np.all(np.diff(got[math.ceil(warmup):total + 1]) < 0)
    else:
        assert np.all(got[math.ceil(warmup):] == np.float32(lr))


def test_schedule_serialises_traces_and_reads_its_steps_late():
    schedule = WarmupSchedule(1e-3, 1.0, 4, steps_per_epoch=lambda: 10)  # a run knows it after the optimizer
    config = keras.saving.serialize_keras_object(schedule)
    assert config["config"] == {"peak_lr": 1e-3, "warmup_epochs": 1.0, "epochs": 4, "steps_per_epoch": 10,
                                "decay": "cosine"}
    again = keras.saving.deserialize_keras_object(config)
    assert isinstance(again, WarmupSchedule)
    traced = tf.function(lambda step: again(step))
    for step in (0, 5, 10, 25, 40):  # traced vs eager float32 cos: an ulp apart
        assert float(traced(tf.constant(step, tf.int64))) == pytest.approx(float(schedule(step)), rel=1e-6)
    with pytest.raises(ValueError, match="decay"):
        WarmupSchedule(1e-3, decay="linear")


def test_optimizer_learning_rate_is_the_scheduled_one():
    """What Run.log_step logs: optimizer.learning_rate evaluates the schedule at `iterations` (the rate of the
    next update; Sample4Geo's progress bar also shows it after scheduler.step())."""
    config = TrainConfig(optimizer="adamw", lr_schedule="cosine", warmup_epochs=1.0, epochs=2, lr=1e-3)
    optimizer = make_optimizer(config, steps_per_epoch=4)
    assert type(optimizer) is FusedAdamW and optimizer.weight_decay == 0.01 and optimizer.clipvalue is None
    variable = keras.Variable(np.ones(3, np.float32))
    assert float(optimizer.learning_rate) == 0.0
    optimizer.apply([tf.ones(3)], [variable])
    assert float(optimizer.learning_rate) == pytest.approx(1e-3 / 4)
    with pytest.raises(ValueError, match="steps of an epoch"):
        make_optimizer(config)
    assert type(make_optimizer(TrainConfig(clip_grad_value=100.0))) is FusedAdam
    assert make_optimizer(TrainConfig(clip_grad_value=100.0)).clipvalue == 100.0


# --- flags ------------------------------------------------------------------------------------------------


def test_weight_decay_without_adamw_is_refused_naming_the_flag():
    with pytest.raises(CvmError) as err:
        flag_use.check_train(train_flag_values("--method=sample4geo", "--weight_decay=0.05"))
    message = str(err.value)
    assert "--weight_decay has no effect: only --optimizer adamw decays the weights" in message
    assert "--optimizer adam has no weight decay" in message and "--lr_schedule" in message.split("takes: ")[1]
    flag_use.check_train(train_flag_values("--method=sample4geo", "--optimizer=adamw", "--weight_decay=0.05"))
    # The schedule, warm-up and clipping apply to every retrieval method, Adam included.
    flag_use.check_train(train_flag_values("--method=cvm_net_i", "--lr_schedule=cosine", "--warmup_epochs=0.5",
                                           "--clip_grad_value=10"))
    with pytest.raises(CvmError, match="--lr_schedule has no effect: it is a retrieval flag"):
        flag_use.check_train(train_flag_values("--method=xfork", "--lr_schedule=cosine"))


@pytest.mark.parametrize("changes, flag", [({"warmup_epochs": 2.0, "epochs": 2}, "--warmup_epochs"),
                                           ({"warmup_epochs": -0.5}, "--warmup_epochs"),
                                           ({"clip_grad_value": 0.0}, "--clip_grad_value"),
                                           ({"clip_grad_value": float("nan")}, "--clip_grad_value"),
                                           ({"weight_decay": -0.01, "optimizer": "adamw"}, "--weight_decay"),
                                           ({"optimizer": "sgd"}, "--optimizer"),
                                           ({"lr_schedule": "linear"}, "--lr_schedule")])
def test_bad_values_name_their_flag(changes, flag):
    with pytest.raises(CvmError, match=f"^{flag} must"):
        TrainConfig(**changes).validate()


def test_new_flags_round_trip_through_flags_cfg(tmp_path):
    argv = ["--method=sample4geo", "--optimizer=adamw", "--weight_decay=0.02", "--lr_schedule=cosine",
            "--warmup_epochs=1.5", "--clip_grad_value=100", "--epochs=40"]
    config = train_flags.config_from_flags(train_flag_values(*argv))
    assert (config.optimizer, config.weight_decay, config.lr_schedule, config.warmup_epochs,
            config.clip_grad_value) == ("adamw", 0.02, "cosine", 1.5, 100.0)
    text = train_flags.flagfile_text(config)
    for line in ("--optimizer=adamw", "--weight_decay=0.02", "--lr_schedule=cosine", "--warmup_epochs=1.5",
                 "--clip_grad_value=100.0"):
        assert line in text.splitlines()
    path = tmp_path / "flags.cfg"
    path.write_text(text)
    assert train_flags.config_from_flags(train_flag_values(f"--flagfile={path}")) == config
    # The defaults: Adam, no schedule, no clipping; an Adam run's flags.cfg leaves --weight_decay out.
    default = train_flags.config_from_flags(train_flag_values())
    assert (default.optimizer, default.lr_schedule, default.warmup_epochs, default.clip_grad_value) == \
        ("adam", "constant", 0.0, None)
    lines = train_flags.flagfile_text(default).splitlines()
    assert "--optimizer=adam" in lines and not any(line.startswith(("--weight_decay", "--clip_grad_value"))
                                                   for line in lines)


def test_sample4geo_flagfiles_train_with_the_papers_optimisation():
    here = os.path.dirname(os.path.abspath(__file__))
    paths = sorted(glob.glob(os.path.join(here, "..", "..", "cvm", "experiments", "sample4geo_*.cfg")))
    paths = [p for p in paths if not p.endswith("sample4geo_quickstart.cfg")]  # CPU-sized: tested on its own
    assert len(paths) == 4
    for path in paths:
        config = train_flags.config_from_flags(train_flag_values(f"--flagfile={path}", "--root=/data"))
        # ... and the rest of Sample4Geo's recipe: its batches and augmentations.
        assert (config.sampler, config.neighbour_pool, config.neighbour_select, config.sampler_refresh_epochs,
                config.augment) == ("neighbours", 128, 64, 4, "sample4geo"), path
        assert (config.optimizer, config.weight_decay, config.lr_schedule, config.warmup_epochs, config.lr,
                config.batch_size, config.clip_grad_value) == ("adamw", 0.01, "cosine", 1.0, 1e-3, 128, 100.0), path
        text = open(path).read()  # the comment no longer lists the optimisation as missing
        pending = text.split("Not yet here", 1)[1].split(". ")[0] if "Not yet here" in text else ""
        assert "constant rate" not in text and not any(w in pending for w in ("AdamW", "cosine", "clipping")), path


# --- a run ---------------------------------------------------------------------------------------------
def _scalars(folder: str, tag: str) -> dict:
    """{step: value} of one scalar in a TensorBoard folder."""
    out = {}
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    out[event.step] = float(tf.make_ndarray(value.tensor))
    return out


def test_a_sample4geo_run_trains_with_adamw_cosine_warmup_and_clipping(tmp_path):
    """`cvm train`'s Run: the optimizer is made before the pipeline says how many steps an epoch has; the
    schedule reads them at its first step. TensorBoard's learning_rate at global step s is the rate of the next
    update, lr * lambda(s): lr / 4 after the first step of a 4-step warm-up epoch."""
    from cvm.training.loop import Run

    lr, steps = 1e-3, 4
    config = TrainConfig(method="sample4geo", backbone="convnext_tiny", backbone_width=0.25,
                         backbone_depths=(1, 1, 1, 1), synthetic_pairs=48, ground_size=(32, 128),
                         aerial_size=(64, 64), batch_size=8, epochs=2, steps_per_epoch=steps, val_split="",
                         jit_compile=False, lr=lr, optimizer="adamw", weight_decay=0.01, lr_schedule="cosine",
                         warmup_epochs=1.0, clip_grad_value=100.0, log_every_steps=1,
                         model_dir=str(tmp_path / "s4g"))
    run = Run(config, progress=False)
    assert isinstance(run.optimizer, FusedAdamW) and run.optimizer.clipvalue == 100.0
    assert run.steps_per_epoch == steps
    start = [w.copy() for w in run.encoder.get_weights()]
    run.train()
    logged = _scalars(os.path.join(config.model_dir, "tensorboard", "train"), "learning_rate")
    assert sorted(logged) == list(range(1, 2 * steps + 1))
    for step, value in logged.items():
        assert value == pytest.approx(lr * transformers_lambda(step, steps, 2 * steps), rel=1e-6, abs=1e-12), step
    assert logged[1] == pytest.approx(lr / 4) and logged[steps] == pytest.approx(lr)
    assert logged[2 * steps] == pytest.approx(0.0, abs=1e-12)
    assert int(run.optimizer.iterations) == 2 * steps
    assert any(np.abs(a - b).max() > 0 for a, b in zip(run.encoder.get_weights(), start))
    saved = TrainConfig.load(config.model_dir)  # config.json: what a resume compares and rebuilds from
    assert (saved.optimizer, saved.lr_schedule, saved.warmup_epochs, saved.clip_grad_value) == \
        ("adamw", "cosine", 1.0, 100.0)

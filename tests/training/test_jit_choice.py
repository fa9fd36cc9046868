"""XLA or TF's kernels, chosen per machine: the timing logic (fake steps, fake clock), a measured run
that ends bit-identical to one pinned to the value it chose, resumption that reads jit_choice.json
instead of measuring again, and the tri-state --jit_compile flag (unset / --jit_compile / --nojit_compile)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from cvm.training import jit_choice
from cvm.training.checkpoints import CheckpointManager
from cvm.training.config import TrainConfig

# --- choose_jit_compile with fake steps and a fake clock -------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Lazy:
    """A step's loss whose cost is paid when it is read back (as an asynchronously dispatched step)."""

    def __init__(self, clock, cost):
        self.clock, self.cost = clock, cost

    def __array__(self, dtype=None, copy=None):
        self.clock.now += self.cost
        self.cost = 0.0
        return np.asarray(1.0, dtype)

    def __float__(self):
        return float(self.__array__())


def fake_step(name, clock, costs, log, variable=None):
    """A step whose n-th call costs costs[n] seconds (the last repeats); logs its calls, bumps `variable`."""

    def step(batch):
        n = sum(1 for entry in log if entry == name)
        log.append(name)
        if variable is not None:
            variable.assign_add(1.0)
        return Lazy(clock, costs[min(n, len(costs) - 1)])

    return step


def test_the_faster_step_is_chosen_after_both_are_warmed():
    clock, log = FakeClock(), []
    # Compiling XLA costs 100 s; its steps then take 1 s against 2 s for TF's kernels.
    plain = fake_step("plain", clock, [3.0, 2.0], log)
    xla = fake_step("xla", clock, [100.0, 1.0], log)
    choice = jit_choice.choose_jit_compile(plain, xla, None, [], timer=clock, min_rounds=3, max_rounds=4,
                                           budget_seconds=1e9)
    assert choice.jit_compile is True
    assert log[:2] == ["plain", "xla"]  # both warmed before any timed call
    assert choice.xla_times == [1.0] * 4 and choice.plain_times == [2.0] * 4  # warm-up calls not timed
    assert choice.warmup_seconds == {"xla": 100.0, "tf_kernels": 3.0}
    assert (choice.xla_seconds, choice.plain_seconds) == (1.0, 2.0)
    # Timed calls alternate, and which of the two goes first alternates too.
    assert log[2:] == ["plain", "xla", "xla", "plain", "plain", "xla", "xla", "plain"]
    assert "XLA 1 s/step vs TF kernels 2 s/step: using XLA" == choice.summary()


def test_tf_kernels_are_chosen_when_xla_is_slower_or_equal():
    for xla_cost in (3.0, 2.0):
        clock, log = FakeClock(), []
        choice = jit_choice.choose_jit_compile(fake_step("plain", clock, [2.0], log),
                                               fake_step("xla", clock, [xla_cost], log), None, [], timer=clock)
        assert choice.jit_compile is False, xla_cost
        assert choice.summary().endswith("using TF kernels")


def test_medians_decide_not_means():
    clock, log = FakeClock(), []
    # XLA's second timed step is slowed by another job (100 s): its mean is far above TF's 2 s, its median 1 s.
    plain = fake_step("plain", clock, [2.0], log)
    xla = fake_step("xla", clock, [5.0, 1.0, 100.0, 1.0], log)
    choice = jit_choice.choose_jit_compile(plain, xla, None, [], timer=clock, min_rounds=3, max_rounds=3)
    assert choice.xla_times == [1.0, 100.0, 1.0]
    assert np.mean(choice.xla_times) > choice.plain_seconds
    assert choice.jit_compile is True and choice.xla_seconds == 1.0


def test_timing_stops_after_the_budget_but_not_before_the_minimum_rounds():
    clock, log = FakeClock(), []
    choice = jit_choice.choose_jit_compile(fake_step("plain", clock, [2.0], log), fake_step("xla", clock, [1.0], log),
                                           None, [], timer=clock, min_rounds=3, max_rounds=50, budget_seconds=1.0)
    assert len(choice.plain_times) == len(choice.xla_times) == 3  # the budget was spent in round 1
    clock, log = FakeClock(), []
    choice = jit_choice.choose_jit_compile(fake_step("plain", clock, [0.5], log),
                                           fake_step("xla", clock, [0.25], log), None, [], timer=clock,
                                           min_rounds=3, max_rounds=50, budget_seconds=3.0)
    assert len(choice.xla_times) == 4  # 0.75 s a round: 3 s after 4 rounds
    clock, log = FakeClock(), []
    choice = jit_choice.choose_jit_compile(fake_step("plain", clock, [0.0], log), fake_step("xla", clock, [0.0], log),
                                           None, [], timer=clock, min_rounds=3, max_rounds=7, budget_seconds=1.0)
    assert len(choice.xla_times) == 7  # the cap


def test_every_state_variable_is_restored_even_when_a_step_fails():
    clock, log = FakeClock(), []
    a, b = tf.Variable(5.0), tf.Variable([1, 2], dtype=tf.int64)

    def plain(batch):
        a.assign_add(1.0)
        b.assign_add([1, 1])
        return 0.0

    choice = jit_choice.choose_jit_compile(plain, fake_step("xla", clock, [1.0], log, variable=a), None, [a, b],
                                           timer=clock)
    assert len(log) > 3 and choice.jit_compile is False  # the fake clock: plain steps cost nothing
    assert float(a.numpy()) == 5.0 and b.numpy().tolist() == [1, 2]

    def broken(batch):
        a.assign(-1.0)
        raise RuntimeError("XLA compilation failed")

    with pytest.raises(RuntimeError):
        jit_choice.choose_jit_compile(plain, broken, None, [a, b], timer=clock)
    assert float(a.numpy()) == 5.0 and b.numpy().tolist() == [1, 2]


def test_worker_count():
    assert jit_choice.worker_count(tf.distribute.get_strategy()) == 1

    class Strategy:
        def __init__(self, cluster):
            self.cluster_resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
                tf.train.ClusterSpec(cluster), task_type="worker", task_id=0)

    assert jit_choice.worker_count(Strategy({"worker": ["a:1", "b:2"]})) == 2
    assert jit_choice.worker_count(Strategy({"chief": ["c:0"], "worker": ["a:1"], "ps": ["p:3"]})) == 2
    assert jit_choice.worker_count(Strategy({"worker": ["a:1"]})) == 1


# --- a tiny run: measured == pinned, resumption reads jit_choice.json ------------------------------

# 40 synthetic pairs, 1/16-width tower on 32x128 / 64x64 images, with dropout (keep_prob 0.5): its Keras
# SeedGenerator states change every step, so a measurement that did not restore them would show.
# Blocks 1-4 frozen: a third of the XLA compilation time of the whole tower.
TINY = dict(synthetic_pairs=40, ground_size=(32, 128), aerial_size=(64, 64), batch_size=4, output_dim=16,
            clusters=4, backbone_width=0.0625, freeze_blocks=4, keep_prob=0.5, lr=1e-3, epochs=1, steps_per_epoch=3,
            val_split="")


def final_checkpoint(model_dir):
    """{"model/0016": array, ...}: the latest checkpoint's arrays by position (the second model built in a
    process has other automatic names, e.g. seed_generator_12 for seed_generator)."""
    path = CheckpointManager(os.path.join(model_dir, "checkpoints")).latest()
    with np.load(path) as data:
        return {k.split(":")[0]: (k, data[k]) for k in data.files}


def fixed_outcome(monkeypatch, winner, calls):
    """choose_jit_compile as the run calls it, on the real steps, with the loser slowed by 0.5 s a step."""
    import time

    real = jit_choice.choose_jit_compile

    def slowed(step):
        def run(batch):
            out = step(batch)
            np.asarray(out)
            time.sleep(0.5)
            return out

        return run

    def choose(plain, xla, batch, variables, **kwargs):
        calls.append(len(variables))
        if winner == "xla":
            plain = slowed(plain)
        else:
            xla = slowed(xla)
        return real(plain, xla, batch, variables, min_rounds=2, max_rounds=2)

    monkeypatch.setattr(jit_choice, "choose_jit_compile", choose)


# XLA-compiling the tiny model twice costs 30-60 s on 2 cores: that case runs with `pytest -m slow`.
@pytest.mark.parametrize("winner", [pytest.param("xla", marks=pytest.mark.slow), "plain"])
def test_a_measured_run_is_identical_to_one_pinned_to_its_choice(tmp_path, monkeypatch, capsys, winner):
    from cvm.training.loop import Run

    calls = []
    fixed_outcome(monkeypatch, winner, calls)
    measured = Run(TrainConfig(model_dir=str(tmp_path / "measured"), **TINY), progress=True)
    assert measured._step_fn is None  # resolved by train()
    measured.train()
    assert len(calls) == 1
    # The step timed on the measurement's batch is the one trained with: not traced (or compiled) again.
    assert measured._step_fn.experimental_get_tracing_count() == 1
    record = json.load(open(tmp_path / "measured" / "jit_choice.json"))
    assert record["jit_compile"] is (winner == "xla") and measured.jit_compile is record["jit_compile"]
    assert len(record["xla_step_times"]) == len(record["tf_kernels_step_times"]) == 2
    assert record["cpu"] and record["date"] and record["xla_seconds_per_step"] > 0
    used = "XLA" if winner == "xla" else "TF kernels"
    assert f"s/step: using {used} (jit_choice.json)" in capsys.readouterr().out

    pinned = Run(TrainConfig(model_dir=str(tmp_path / "pinned"), jit_compile=record["jit_compile"], **TINY),
                 progress=False)
    pinned.train()
    assert len(calls) == 1 and not os.path.exists(tmp_path / "pinned" / "jit_choice.json")
    a, b = final_checkpoint(tmp_path / "measured"), final_checkpoint(tmp_path / "pinned")
    assert a.keys() == b.keys() and sum("seed_generator" in name for name, _ in a.values()) >= 4
    assert any("iteration" in name for name, _ in a.values())
    for key in a:
        assert np.array_equal(a[key][1], b[key][1]), a[key][0]
    for va, vb in zip(measured.trainer.metrics_variables, pinned.trainer.metrics_variables):
        assert np.array_equal(va.numpy(), vb.numpy()), va.path
    # The dropout seed states are among the variables restored.
    assert any("seed_generator" in v.path for v in jit_choice.state_variables(
        measured.encoder, measured.trainer, measured.optimizer))


def test_the_fusion_stage_measures_through_the_same_loop(tmp_path, monkeypatch):
    """FusionRun (descriptor dumps, no images) reuses Run's loop: measured == pinned there too."""
    from cvm.training.fusion import FusionRun, write_dump

    rng = np.random.default_rng(0)
    for name, n in (("train", 60), ("val", 20)):
        arrays = {k: rng.normal(size=(n, 8)).astype("float32") for k in ("ground", "aerial", "synthesized")}
        write_dump(str(tmp_path / f"{name}.npz"), {**arrays, "index": np.arange(n)}, name, "toy")
    calls = []
    fixed_outcome(monkeypatch, "xla", calls)
    common = dict(method="regmi_fusion", output_dim=8, init="original", lr=1e-2, batch_size=10, epochs=1,
                  steps_per_epoch=4, holdout_fraction=0.0, eval_batch_size=20, best_metric="regmi_selection")
    runs = {}
    for name, jit in (("measured", None), ("pinned", True)):
        config = TrainConfig(model_dir=str(tmp_path / name), jit_compile=jit, **common)
        runs[name] = FusionRun(config, str(tmp_path / "train.npz"), str(tmp_path / "val.npz"), progress=False)
        runs[name].train()
    assert len(calls) == 1 and runs["measured"].jit_compile is True
    assert json.load(open(tmp_path / "measured" / "jit_choice.json"))["jit_compile"] is True
    a, b = final_checkpoint(tmp_path / "measured"), final_checkpoint(tmp_path / "pinned")
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key][1], b[key][1]), a[key][0]


def test_a_resumed_run_reads_jit_choice_json_and_does_not_measure(tmp_path, monkeypatch, capsys):
    from cvm.training.loop import Run

    model_dir = tmp_path / "run"
    Run(TrainConfig(model_dir=str(model_dir), jit_compile=False, **TINY), progress=False).train()
    assert not os.path.exists(model_dir / "jit_choice.json")  # a pinned run measures nothing
    jit_choice.write(str(model_dir), {"jit_compile": False, "xla_seconds_per_step": 2.0,
                                      "tf_kernels_seconds_per_step": 1.0})

    def no_measurement(*args, **kwargs):
        raise AssertionError("measured again on resume")

    monkeypatch.setattr(jit_choice, "choose_jit_compile", no_measurement)
    resumed = Run(TrainConfig(model_dir=str(model_dir), **{**TINY, "epochs": 2}), progress=True)
    state = resumed.train()
    assert state["epoch"] == 2 and state["global_step"] == 6 and resumed.jit_compile is False
    assert "TF kernels, as measured at the start of this run (jit_choice.json)" in capsys.readouterr().out
    # With several workers nothing is measured (they could disagree) and nothing is written: TF's kernels.
    monkeypatch.setattr(jit_choice, "worker_count", lambda strategy: 2)
    several = Run(TrainConfig(model_dir=str(tmp_path / "workers"), **TINY), progress=True)
    several.train()
    assert several.jit_compile is False and not os.path.exists(tmp_path / "workers" / "jit_choice.json")
    assert "not measured with 2 workers" in capsys.readouterr().out
    # A forced value needs neither the file nor a measurement: its step is made at once.
    forced = Run(TrainConfig(model_dir=str(model_dir), jit_compile=True, **{**TINY, "epochs": 2}), progress=False)
    assert forced._step_fn is not None
    forced.train()  # finished: nothing to do
    assert json.load(open(model_dir / "jit_choice.json"))["jit_compile"] is False


# --- the flag -----------------------------------------------------------------------------------


def flag_values(*argv):
    from tests.flaglib import train_flag_values

    return train_flag_values(*argv)


@pytest.mark.parametrize("argv, expected", [((), None), (("--jit_compile",), True), (("--nojit_compile",), False),
                                            (("--jit_compile=false",), False)])
def test_the_flag_is_tri_state_and_flags_cfg_reruns_it(tmp_path, argv, expected):
    from cvm.flags import synthesis as synthesis_flags, train as train_flags

    config = train_flags.config_from_flags(flag_values(*argv))
    assert config.jit_compile is expected
    text = train_flags.flagfile_text(config)
    lines = [line for line in text.splitlines() if "jit_compile" in line]
    assert lines == {None: [], True: ["--jit_compile"], False: ["--nojit_compile"]}[expected]
    path = tmp_path / "flags.cfg"
    path.write_text(text)
    assert train_flags.config_from_flags(flag_values(f"--flagfile={path}")) == config
    # config.json keeps None as null.
    config.save(str(tmp_path))
    assert json.load(open(tmp_path / "config.json"))["jit_compile"] is expected
    assert TrainConfig.load(str(tmp_path)).jit_compile is expected
    # A GAN run takes the shared flag only when given (its own default: no XLA).
    gan = synthesis_flags.config_from_flags(flag_values("--method=xfork", *argv))
    assert gan.jit_compile is (False if expected is None else expected)


def test_the_help_says_what_the_default_does():
    from cvm.flags import train as train_flags

    text = train_flags.help_texts()["jit_compile"]
    assert "Neither (the default): time both" in text and "jit_choice.json" in text
    assert "Default: measured (see above) for retrieval methods; synthesis methods: False." in text
    assert TrainConfig().jit_compile is None


def test_experiment_flagfiles_leave_the_choice_to_the_measurement():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    folder = os.path.join(root, "experiments")
    for name in sorted(os.listdir(folder)):
        if name.endswith(".cfg"):
            lines = open(os.path.join(folder, name)).read().splitlines()
            assert "--jit_compile" not in lines, name

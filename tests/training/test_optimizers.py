"""FusedAdam: the TF1 Adam update (checked against NumPy), and updates that wait for every gradient.
FusedAdamW + WarmupSchedule + clipvalue: torch's AdamW + LambdaLR + clip_grad_value_ (Sample4Geo's), clipping
after the loss scale is undone and after the replicas' gradients are summed, and an exact resume."""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from cvm.training.checkpoints import CheckpointManager
from cvm.training.config import TrainConfig
from cvm.training.optimizers import FusedAdam, FusedAdamW, WarmupSchedule, make_optimizer


def numpy_adam(w, grads, lr=1e-2, b1=0.9, b2=0.999, eps=1e-8):
    """tf.compat.v1.train.AdamOptimizer's update (Kingma & Ba 2015, Alg. 1, 'epsilon hat' form), float64."""
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        lr_t = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        w = w - lr_t * m / (np.sqrt(v) + eps)
    return w


def test_fused_adam_is_tf1_adam():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5, 3)).astype(np.float32)
    grads = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(3)]
    variable = keras.Variable(w0)
    optimizer = FusedAdam(1e-2)
    for g in grads:
        optimizer.apply([tf.constant(g)], [variable])
    expected = numpy_adam(w0.astype(np.float64), [g.astype(np.float64) for g in grads])
    # float32 arithmetic on values of order 1 after 3 steps of ~1e-2: a few ulp (1.2e-7 each) of error
    np.testing.assert_allclose(variable.numpy(), expected, rtol=0, atol=2e-6)
    assert np.abs(variable.numpy() - w0).mean() > 5e-3  # and it did move the weights (~lr a step)


def _ancestors(op):
    seen, stack = set(), [op]
    while stack:
        current = stack.pop()
        for parent in [t.op for t in current.inputs] + list(current.control_inputs):
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


@pytest.mark.parametrize("make", [FusedAdam, FusedAdamW], ids=["adam", "adamw"])
def test_every_update_is_gated_on_every_gradient(make):
    """In CVM-Net's traced training step each ResourceApplyAdam waits, through control dependencies, for
    every gradient. Keras' own IdentityN over the gradients does not hold once grappler prunes it: the
    FC's update then overlapped the backward reads of its kernel and copied the 134M-parameter variable
    first (copy-on-write): ResourceApplyAdam 1.5 s a step instead of 0.3 s, the step 1.05x the TF1
    original instead of 1.2x (bench/train_step.py, the TF profiler; 2-core AMD EPYC). FusedAdamW's weight decay
    writes every variable too: it waits as well."""
    from cvm.losses import WeightedSoftMarginTripletLoss
    from cvm.models import build_model
    from cvm.training.retrieval import RetrievalTrainer

    keras.utils.set_random_seed(0)
    encoder = build_model("cvm_net_i", backbone_width=0.0625, freeze_blocks=3, keep_prob=0.8, clusters=4,
                          output_dim=8)
    trainer = RetrievalTrainer(encoder, WeightedSoftMarginTripletLoss())
    trainer.compile(optimizer=make(1e-5))
    trainer.optimizer.build(encoder.trainable_variables)
    batch = ({"ground": tf.zeros((4, 32, 128, 3)), "aerial": tf.zeros((4, 64, 64, 3))}, {})
    graph = tf.function(trainer.train_step).get_concrete_function(batch).graph
    ops = graph.get_operations()
    updates = [op for op in ops if op.type == "ResourceApplyAdam"]
    n = len(encoder.trainable_variables)
    assert len(updates) == n
    # FusedAdamW's w *= 1 - lr wd, in the optimizer's name scope (the encoder's dropout seed states assign too).
    decays = [op for op in ops if op.type == "AssignVariableOp" and op.name.startswith("adamw/")]
    assert len(decays) == (n if make is FusedAdamW else 0)
    updates += decays
    for update in updates:
        # an Identity of one gradient whose control inputs are the others (its own is its data input)
        gates = [op for op in _ancestors(update) if op.type == "Identity"
                 and len({*op.control_inputs, op.inputs[0].op}) >= n]
        assert gates, f"{update.name} is not gated on all {n} gradients"


def test_default_flags_keep_todays_fused_adam_bit_for_bit():
    """TrainConfig's defaults give FusedAdam(--lr): no schedule, no clipping, no decay; its updates are the
    ResourceApplyAdam calls it made before AdamW / clipping existed, bit for bit."""
    optimizer = make_optimizer(TrainConfig(lr=1e-2))
    assert type(optimizer) is FusedAdam and optimizer.clipvalue is None and optimizer.weight_decay is None
    assert isinstance(optimizer._learning_rate, keras.Variable)  # a constant rate, not a schedule
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(5, 3)).astype(np.float32)
    grads = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(4)]
    variable = keras.Variable(w0)
    ref, m, v = tf.Variable(w0), tf.Variable(tf.zeros_like(w0)), tf.Variable(tf.zeros_like(w0))
    for t, g in enumerate(grads, start=1):
        optimizer.apply([tf.constant(g)], [variable])
        step, b1, b2 = tf.constant(float(t)), tf.constant(0.9), tf.constant(0.999)
        tf.raw_ops.ResourceApplyAdam(var=ref.handle, m=m.handle, v=v.handle, beta1_power=tf.pow(b1, step),
                                     beta2_power=tf.pow(b2, step), lr=tf.constant(1e-2), beta1=b1, beta2=b2,
                                     epsilon=tf.constant(1e-8), grad=tf.constant(g), use_locking=False)
    np.testing.assert_array_equal(variable.numpy(), ref.numpy())


# Sample4Geo's optimisation, restated with torch (the test extras install torch CPU).
LR, WD, CLIP, WARMUP, TOTAL = 0.1, 0.5, 1.0, 2.0, 8  # warm-up and total in steps (0.5 and 2 epochs of 4 steps)


def _transformers_cosine(step, warmup=WARMUP, total=TOTAL):
    """transformers' get_cosine_schedule_with_warmup lambda (num_cycles 0.5), restated."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


def _gradients(steps=TOTAL):
    """Per-step gradients: N(0, 1), a row x3 (clipped at 1 often) and a row x1e-8 (sqrt(v) ~ eps, where
    torch's epsilon placement and Keras' "epsilon hat" differ by ~50 % of the update)."""
    rng = np.random.default_rng(7)
    out = []
    for _ in range(steps):
        g = rng.normal(size=(4, 3)).astype(np.float32)
        g[0] *= 1e-8
        g[1] *= 3.0
        out.append(g)
    return out


def test_fused_adamw_cosine_and_clip_match_torch():
    """FusedAdamW(WarmupSchedule) with clipvalue vs torch.optim.AdamW + LambdaLR + clip_grad_value_, as
    Sample4Geo's train loop runs them (clip, optimizer.step(), scheduler.step()), on the same weights and
    gradients for the whole schedule: warm-up from rate 0, cosine to ~0.

    Error analysis (float32, |w| <= 4, 8 steps of at most lr = 0.1): rounding of the decay product and the
    update, ~2 ulp(4) = 1e-6 a step; TF's float32 beta_2 (0.999 + 1.3e-8: 1 - beta_2 off by 1.3e-5 relative,
    torch's bias corrections are float64) changes the v average's weights by that much, <= 1e-5 * lr a step.
    Sum <= 8 * (1e-6 + 1e-6) = 1.6e-5; measured 3e-7. The wrong implementations this separates: decay after the
    Adam step (lr wd * update = 5e-3 a step), decay without lr (wd w ~ 0.5), Keras' epsilon hat (2.5e-2 on the
    small-gradient row), the schedule one step ahead (first step at lr / 2 instead of 0), no clipping (1e-2)."""
    import torch

    w0 = np.random.default_rng(3).normal(size=(4, 3)).astype(np.float32)
    grads = _gradients()
    schedule = WarmupSchedule(LR, warmup_epochs=WARMUP / 4, epochs=TOTAL // 4, steps_per_epoch=4, decay="cosine")
    optimizer = FusedAdamW(schedule, weight_decay=WD, clipvalue=CLIP)
    variable = keras.Variable(w0)
    rates = []
    for g in grads:
        rates.append(float(optimizer.learning_rate))  # the rate this step uses
        optimizer.apply([tf.constant(g)], [variable])

    param = torch.nn.Parameter(torch.tensor(w0))
    reference = torch.optim.AdamW([param], lr=LR, weight_decay=WD)  # betas, eps: torch's defaults, as Sample4Geo
    scheduler = torch.optim.lr_scheduler.LambdaLR(reference, _transformers_cosine)
    torch_rates = []
    for g in grads:
        torch_rates.append(reference.param_groups[0]["lr"])
        param.grad = torch.tensor(g)
        torch.nn.utils.clip_grad_value_([param], CLIP)
        reference.step()
        scheduler.step()
    np.testing.assert_allclose(rates, torch_rates, rtol=1e-6, atol=1e-9)
    assert rates[0] == 0.0 and rates[2] == pytest.approx(LR)
    np.testing.assert_allclose(variable.numpy(), param.detach().numpy(), rtol=0, atol=1.6e-5)
    assert np.abs(variable.numpy() - w0).max() > 0.1  # it moved


def test_clipping_sees_the_gradient_the_loss_scale_optimizer_unscaled():
    """Under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer, which divides the gradients of
    the scaled loss by the scale (2^15) before the inner optimizer's apply: clipping at 1 must act there
    (torch: clip_grad_value_ after GradScaler.unscale_). Power-of-2 scaling is exact, so bit-identical."""
    w0 = np.random.default_rng(4).normal(size=(4, 3)).astype(np.float32)
    plain_var, scaled_var = keras.Variable(w0), keras.Variable(w0)
    plain = FusedAdamW(0.1, weight_decay=WD, clipvalue=CLIP)
    scaled = keras.optimizers.LossScaleOptimizer(FusedAdamW(0.1, weight_decay=WD, clipvalue=CLIP))
    scaled.build([scaled_var])
    scale = float(scaled.dynamic_scale.numpy())
    assert scale == 2.0 ** 15
    for g in _gradients(4):
        plain.apply([tf.constant(g)], [plain_var])
        scaled.apply([tf.constant(g * scale)], [scaled_var])
    np.testing.assert_array_equal(scaled_var.numpy(), plain_var.numpy())


_MIRRORED_CLIP = r"""
import json, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
from cvm.training.optimizers import FusedAdamW
grads = tf.constant(json.loads(os.environ["GRADS"]), tf.float32)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    w = keras.Variable(np.ones(grads.shape[1], np.float32))
    optimizer = FusedAdamW(0.1, weight_decay=0.0, clipvalue=1.0)
    optimizer.build([w])

@tf.function
def step():
    def replica():
        i = tf.distribute.get_replica_context().replica_id_in_sync_group
        optimizer.apply([tf.gather(grads, i)], [w])
    strategy.run(replica)

step()
print(json.dumps([v.numpy().tolist() for v in w.value.values]))
"""


def test_clipping_acts_on_the_gradient_summed_over_replicas():
    """2 replicas (MirroredStrategy on 2 logical CPUs, a subprocess): clip(g0 + g1), as torch clips the
    all-reduced gradient, not clip(g0) + clip(g1) (Keras' own clipvalue: element 0 would get no update)."""
    grads = [[3.0, -3.0, 0.5, 2.0], [-2.5, 3.0, 0.2, 2.0]]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", GRADS=json.dumps(grads))
    out = subprocess.run([sys.executable, "-c", _MIRRORED_CLIP], capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    replicas = np.array(json.loads(out.stdout.strip().splitlines()[-1]), np.float32)
    expected = keras.Variable(np.ones(4, np.float32))
    FusedAdamW(0.1, weight_decay=0.0, clipvalue=1.0).apply(
        [tf.constant(np.clip(np.sum(grads, 0), -1, 1), tf.float32)], [expected])
    for values in replicas:
        np.testing.assert_allclose(values, expected.numpy(), rtol=0, atol=1e-7)
    assert replicas[0][0] < 0.95  # the summed 0.5 moved it by ~lr; per-replica clipping would sum to 0


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_resume_from_a_checkpoint_is_bit_identical(tmp_path, name):
    """6 steps in one go == 3 steps, a checkpoint (CheckpointManager), restore into a fresh model and
    optimizer, 3 more steps: the schedule is a function of the restored `iterations` (warm-up 2 steps,
    cosine after), the moments and the clip / decay come back with it."""
    config = TrainConfig(optimizer=name, lr=0.05, weight_decay=0.1, lr_schedule="cosine", warmup_epochs=1.0,
                         epochs=3, clip_grad_value=0.5)
    rng = np.random.default_rng(5)
    data = [(rng.normal(size=(8, 3)).astype(np.float32), rng.normal(size=(8, 2)).astype(np.float32))
            for _ in range(6)]

    def fresh(seed):
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        optimizer = make_optimizer(config, steps_per_epoch=2)
        optimizer.build(model.trainable_variables)
        return model, optimizer

    def train(model, optimizer, batches):
        for x, y in batches:
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((model(x) - y) ** 2) * 10.0  # gradients beyond the clip
            optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

    straight, straight_opt = fresh(0)
    train(straight, straight_opt, data)
    first, first_opt = fresh(0)
    train(first, first_opt, data[:3])
    path = CheckpointManager(str(tmp_path)).save({"global_step": 3}, first, first_opt)
    resumed, resumed_opt = fresh(1)  # other weights: all of them must come from the checkpoint
    CheckpointManager.restore(path, resumed, resumed_opt)
    assert int(resumed_opt.iterations) == 3
    train(resumed, resumed_opt, data[3:])
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert float(resumed_opt.learning_rate) == float(straight_opt.learning_rate) == 0.0  # cosine ended at 0

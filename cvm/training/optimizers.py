"""Adam as the originals ran it (TensorFlow's fused kernel, TF1's epsilon), and Sample4Geo's AdamW, warm-up +
cosine schedule and clipping by value, for any retrieval method.

Keras' Adam updates each variable with about ten element-wise ops; on CVM-Net's 134M-parameter FC
that alone cost ~2 s per step on a 2-core CPU, 10x TF1's fused `ApplyAdam` (bench/train_step.py).
`FusedAdam` computes the same update (Kingma & Ba 2015, Alg. 1 with the "epsilon hat" form:
lr_t = lr sqrt(1 - b2^t) / (1 - b1^t); var -= lr_t m / (sqrt(v) + eps)) in one kernel per variable.

Sample4Geo (Deuser et al., ICCV 2023; Skyy93/Sample4Geo train_cvusa.py, sample4geo/trainer.py) trains with
torch.optim.AdamW(params, lr=1e-3) (torch's defaults: betas (0.9, 0.999), eps 1e-8, weight decay 0.01, every
parameter decayed), transformers' get_cosine_schedule_with_warmup stepped once per batch (1 warm-up epoch) and
torch.nn.utils.clip_grad_value_(params, 100) after GradScaler.unscale_. Here: `FusedAdamW` (torch's AdamW
update on the same kernel), `WarmupSchedule` (the schedule as a function of the optimizer's `iterations`, which
a checkpoint holds: a resumed run continues the curve exactly) and `clipvalue` on either optimizer, applied to
the gradient summed over the replicas and unscaled by a LossScaleOptimizer. `make_optimizer`: a TrainConfig's.
"""

from __future__ import annotations

import math
from typing import Callable, Union

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="cvm")
class FusedAdam(keras.optimizers.Adam):
    """keras.optimizers.Adam whose update runs TF's fused ResourceApplyAdam kernel.

    epsilon defaults to 1e-8, tf.compat.v1.train.AdamOptimizer's (Keras uses 1e-7). Falls back to
    Keras' update for amsgrad or other backends. `clipvalue` clips each gradient element to [-clipvalue,
    clipvalue] in `update_step`, i.e. after the replicas' gradients are summed (Keras' own clipping runs on each
    replica's share, before the sum) and after a LossScaleOptimizer unscaled them (torch's clip_grad_value_
    after GradScaler.unscale_).
    """

    def __init__(self, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8, **kwargs):
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, **kwargs)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if keras.backend.backend() == "tensorflow":
            # Every update waits for every gradient, by control dependencies (Keras' IdentityN over the
            # gradients is pruned by grappler). Otherwise the FC's update can start while the backward
            # pass still reads its kernel, and the kernel copies the whole 134M-parameter variable before
            # writing it (copy-on-write of a resource still read): ResourceApplyAdam took 1.5 s a step
            # instead of 0.3 s (TF profiler, bench/train_step.py; the step 1.05x -> 1.2x the TF1 original).
            ready = [g for g in grads if g is not None]
            with tf.control_dependencies(ready):
                grads = [None if g is None else tf.identity(g) for g in grads]
        return super()._backend_update_step(grads, trainable_variables, learning_rate)

    def _clip_gradients(self, grads):
        if self.clipvalue:  # update_step clips, once the gradients are summed over the replicas
            return grads
        return super()._clip_gradients(grads)

    def _epsilon(self, beta_2_power, dtype):
        """The kernel's epsilon ("epsilon hat") at this step."""
        return tf.cast(self.epsilon, dtype)

    def update_step(self, gradient, variable, learning_rate):
        if self.clipvalue:
            gradient = _clip_by_value(gradient, self.clipvalue)
        if self.amsgrad or keras.backend.backend() != "tensorflow" or not hasattr(variable, "handle"):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        momentum, velocity = self._momentums[index], self._velocities[index]
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        beta_2_power = tf.pow(beta_2, step)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=_handle(momentum), v=_handle(velocity),
            beta1_power=tf.pow(beta_1, step), beta2_power=beta_2_power,
            lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2, epsilon=self._epsilon(beta_2_power, dtype),
            grad=tf.cast(gradient, dtype), use_locking=False)


@keras.saving.register_keras_serializable(package="cvm")
class FusedAdamW(FusedAdam):
    """torch.optim.AdamW (Loshchilov & Hutter 2019, decoupled weight decay) on FusedAdam's fused kernel.

    Per variable and step, as torch: p *= 1 - lr wd (lr: this step's scheduled rate), then the Adam step with
    torch's epsilon, added to sqrt(v) / sqrt(1 - b2^t) (Keras' Adam adds it to sqrt(v): "epsilon hat"; they
    differ where sqrt(v) is of the order of eps). That is keras.optimizers.AdamW's decay (the same order and
    scheduled lr), done in update_step so that it too waits for every gradient (FusedAdam) and runs per
    replica on mirrored variables. amsgrad falls back to Keras' update.
    """

    def __init__(self, learning_rate=1e-3, weight_decay=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-8, name="adamw",
                 **kwargs):
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         weight_decay=weight_decay, name=name, **kwargs)
        if self.weight_decay is None:
            raise ValueError("FusedAdamW needs a weight_decay (0 for none)")

    def _apply_weight_decay(self, variables):
        """Nothing: update_step decays each variable."""

    def _epsilon(self, beta_2_power, dtype):
        # m_hat / (sqrt(v_hat) + eps) = lr_t m / (sqrt(v) + eps sqrt(1 - b2^t)) with the kernel's lr_t.
        return tf.cast(self.epsilon, dtype) * tf.sqrt(1 - beta_2_power)

    def update_step(self, gradient, variable, learning_rate):
        if self._use_weight_decay(variable):
            dtype = variable.dtype
            factor = 1 - tf.cast(learning_rate, dtype) * tf.cast(self.weight_decay, dtype)
            with tf.control_dependencies([gradient]):  # behind FusedAdam's gradient barrier
                variable.assign(variable * factor)
        super().update_step(gradient, variable, learning_rate)


@keras.saving.register_keras_serializable(package="cvm")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Sample4Geo's per-step rate: transformers' get_cosine_schedule_with_warmup (decay "cosine") or
    get_constant_schedule_with_warmup (decay "constant"), as a function of the optimizer's step count.

    Step t (the update's 0-based index: Keras' `iterations`, torch's LambdaLR count) runs at
    peak_lr * t / W while t < W (W = warmup_epochs * steps_per_epoch, fractional as Sample4Geo's), then at
    peak_lr, or peak_lr * 0.5 (1 + cos(pi (t - W) / (T - W))) reaching 0 at T = epochs * steps_per_epoch. The
    first update (t = 0) runs at rate 0 when W > 0, as theirs. steps_per_epoch may be a zero-argument callable,
    read at the first call: a run knows it once its pipeline exists, after the optimizer was made.
    """

    def __init__(self, peak_lr: float, warmup_epochs: float = 0.0, epochs: int = 1,
                 steps_per_epoch: Union[int, Callable[[], int]] = 1, decay: str = "cosine"):
        if decay not in ("constant", "cosine"):
            raise ValueError(f"decay must be constant or cosine, got {decay!r}")
        self.peak_lr, self.warmup_epochs, self.epochs = float(peak_lr), float(warmup_epochs), int(epochs)
        self.decay = decay
        self._steps_per_epoch = steps_per_epoch

    @property
    def steps_per_epoch(self) -> int:
        if callable(self._steps_per_epoch):
            self._steps_per_epoch = self._steps_per_epoch()
        return int(self._steps_per_epoch)

    def __call__(self, step):
        n = self.steps_per_epoch
        warmup, total = self.warmup_epochs * n, self.epochs * n
        step = ops.cast(step, "float32")
        factor = step / max(1.0, warmup)
        if self.decay == "cosine":
            progress = (step - warmup) / max(1.0, total - warmup)
            after = ops.maximum(0.0, 0.5 * (1.0 + ops.cos(math.pi * progress)))
        else:
            after = ops.ones_like(step)
        return self.peak_lr * ops.where(step < warmup, factor, after)

    def get_config(self) -> dict:
        return {"peak_lr": self.peak_lr, "warmup_epochs": self.warmup_epochs, "epochs": self.epochs,
                "steps_per_epoch": self.steps_per_epoch, "decay": self.decay}


def make_optimizer(config, steps_per_epoch: Union[int, Callable[[], int], None] = None) -> FusedAdam:
    """The optimizer of a TrainConfig: FusedAdam (--optimizer adam) or FusedAdamW (--weight_decay), at --lr or,
    with --lr_schedule cosine or --warmup_epochs, its WarmupSchedule; clipping by --clip_grad_value.

    With the defaults this is FusedAdam(--lr), the classic methods' optimizer as before.
    """
    learning_rate = config.lr
    if config.lr_schedule != "constant" or config.warmup_epochs > 0:
        if steps_per_epoch is None:
            raise ValueError(f"--lr_schedule {config.lr_schedule} / --warmup_epochs need the steps of an epoch")
        learning_rate = WarmupSchedule(config.lr, config.warmup_epochs, config.epochs, steps_per_epoch,
                                       decay=config.lr_schedule)
    options = {} if config.clip_grad_value is None else {"clipvalue": float(config.clip_grad_value)}
    if config.optimizer == "adamw":
        return FusedAdamW(learning_rate, weight_decay=config.weight_decay, **options)
    return FusedAdam(learning_rate, **options)


def _clip_by_value(gradient, value):
    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(tf.clip_by_value(gradient.values, -value, value), gradient.indices,
                                gradient.dense_shape)
    return ops.clip(gradient, -value, value)


def _handle(variable):
    value = variable.value if isinstance(variable, keras.Variable) else variable
    return value.handle

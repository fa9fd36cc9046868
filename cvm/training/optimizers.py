"""Adam as the originals ran it: TensorFlow's fused kernel and TF1's epsilon.

Keras' Adam updates each variable with about ten element-wise ops; on CVM-Net's 134M-parameter FC
that alone cost ~2 s per step on a 2-core CPU, 10x TF1's fused `ApplyAdam` (bench/train_step.py).
`FusedAdam` computes the same update (Kingma & Ba 2015, Alg. 1 with the "epsilon hat" form:
lr_t = lr sqrt(1 - b2^t) / (1 - b1^t); var -= lr_t m / (sqrt(v) + eps)) in one kernel per variable.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="cvm")
class FusedAdam(keras.optimizers.Adam):
    """keras.optimizers.Adam whose update runs TF's fused ResourceApplyAdam kernel.

    epsilon defaults to 1e-8, tf.compat.v1.train.AdamOptimizer's (Keras uses 1e-7). Falls back to
    Keras' update for amsgrad or other backends.
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

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or keras.backend.backend() != "tensorflow" or not hasattr(variable, "handle"):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        momentum, velocity = self._momentums[index], self._velocities[index]
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=_handle(momentum), v=_handle(velocity),
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype), use_locking=False)


def _handle(variable):
    value = variable.value if isinstance(variable, keras.Variable) else variable
    return value.handle

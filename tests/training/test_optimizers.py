"""FusedAdam: the TF1 Adam update (checked against NumPy), and updates that wait for every gradient."""

import keras
import numpy as np
import tensorflow as tf

from cvm.training.optimizers import FusedAdam


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


def test_every_update_is_gated_on_every_gradient():
    """In CVM-Net's traced training step each ResourceApplyAdam waits, through control dependencies, for
    every gradient. Keras' own IdentityN over the gradients does not hold once grappler prunes it: the
    FC's update then overlapped the backward reads of its kernel and copied the 134M-parameter variable
    first (copy-on-write): ResourceApplyAdam 1.5 s a step instead of 0.3 s, the step 1.05x the TF1
    original instead of 1.2x (bench/train_step.py, the TF profiler; 2-core AMD EPYC)."""
    from cvm.losses import WeightedSoftMarginTripletLoss
    from cvm.models import build_model
    from cvm.training.retrieval import RetrievalTrainer

    keras.utils.set_random_seed(0)
    encoder = build_model("cvm_net_i", backbone_width=0.0625, freeze_blocks=3, keep_prob=0.8, clusters=4,
                          output_dim=8)
    trainer = RetrievalTrainer(encoder, WeightedSoftMarginTripletLoss())
    trainer.compile(optimizer=FusedAdam(1e-5))
    trainer.optimizer.build(encoder.trainable_variables)
    batch = ({"ground": tf.zeros((4, 32, 128, 3)), "aerial": tf.zeros((4, 64, 64, 3))}, {})
    graph = tf.function(trainer.train_step).get_concrete_function(batch).graph
    ops = graph.get_operations()
    updates = [op for op in ops if op.type == "ResourceApplyAdam"]
    n = len(encoder.trainable_variables)
    assert len(updates) == n
    for update in updates:
        # an Identity of one gradient whose control inputs are the others (its own is its data input)
        gates = [op for op in _ancestors(update) if op.type == "Identity"
                 and len({*op.control_inputs, op.inputs[0].op}) >= n]
        assert gates, f"{update.name} is not gated on all {n} gradients"

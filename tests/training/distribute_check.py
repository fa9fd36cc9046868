"""Run as a script (logical devices must be set before TensorFlow starts): one training step of the
retrieval trainer on 2 logical CPUs with MirroredStrategy vs one device on the same 2B samples.
Prints a JSON line with the two losses and the largest weight difference after the step."""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from cvm.losses import WeightedSoftMarginTripletLoss  # noqa: E402
from cvm.models import build_model  # noqa: E402
from cvm.training.retrieval import RetrievalTrainer  # noqa: E402

B = 4  # per replica; the global batch is 2B
rng = np.random.default_rng(0)
features = {"ground": rng.normal(0, 50, (2 * B, 32, 128, 3)).astype(np.float32),
            "aerial": rng.normal(0, 50, (2 * B, 64, 64, 3)).astype(np.float32)}
# Locations with some pairs closer than 25 m, so the CVACT mask and the location gather matter.
meta = {"location": np.stack([np.arange(2 * B) * 15.0, np.zeros(2 * B)], 1)}


def make(strategy, weights=None, optimizer=None):
    with strategy.scope():
        encoder = build_model("cvm_net_i", backbone_width=0.125, clusters=4, output_dim=16, keep_prob=1.0,
                              freeze_blocks=0, init="he")
        encoder({"ground": features["ground"][:1], "aerial": features["aerial"][:1]})
        if weights is not None:
            encoder.set_weights(weights)
        trainer = RetrievalTrainer(encoder, WeightedSoftMarginTripletLoss(mask_radius_m=25.0))
        trainer.compile(optimizer=optimizer or keras.optimizers.SGD(1.0))
        trainer.optimizer.build(encoder.trainable_variables)
    return trainer


single = make(tf.distribute.get_strategy())
start = [w.copy() for w in single.encoder.get_weights()]
loss_single = float(tf.function(single.train_step)((features, meta))["loss"])

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
mirrored = make(strategy, start)
dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors((features, meta)))


@tf.function
def step(batch):
    out = strategy.run(mirrored.train_step, args=(batch,))
    return strategy.reduce(tf.distribute.ReduceOp.MEAN, out["loss"], axis=None)


loss_mirrored = float(step(next(iter(dataset))))
after_single, after_mirrored = single.encoder.get_weights(), mirrored.encoder.get_weights()
weight_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(after_single, after_mirrored))
update = max(float(np.max(np.abs(a - b))) for a, b in zip(after_single, start))
# The fused Adam kernel updates mirrored variables too (one step, both replicas in sync).
from cvm.training.optimizers import FusedAdam  # noqa: E402

with strategy.scope():
    adam = FusedAdam(1e-3)
fused = make(strategy, start, optimizer=adam)


@tf.function
def adam_step(batch):
    out = strategy.run(fused.train_step, args=(batch,))
    return strategy.reduce(tf.distribute.ReduceOp.MEAN, out["loss"], axis=None)


adam_step(next(iter(dataset)))
replica_values = [v.value.values for v in fused.encoder.trainable_variables]
adam_sync = max(float(np.max(np.abs(a.numpy() - b.numpy()))) for a, b in replica_values)
adam_update = max(float(np.max(np.abs(w - s))) for w, s in zip(fused.encoder.get_weights(), start))
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "loss_single": loss_single,
                  "loss_mirrored": loss_mirrored, "weight_diff": weight_diff, "update": update,
                  "adam_sync": adam_sync, "adam_update": adam_update}))
sys.stdout.flush()

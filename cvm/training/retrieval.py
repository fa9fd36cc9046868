"""The two-tower retrieval trainer: descriptors of both views, gathered across replicas, in-batch loss.

`RetrievalTrainer.train_step` is a Keras train step that works under any tf.distribute strategy:
each replica embeds its share of the batch, the descriptors (and locations, for CVACT's UTM mask)
are all-gathered so that the in-batch loss sees the *global* batch (2 replicas of batch B train like
one replica of batch 2B), and the loss is divided by the number of replicas because the optimizer
sums the replicas' gradients (Keras' convention).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from cvm.losses import WeightedSoftMarginTripletLoss


def _gather(ctx, tensor):
    return tensor if ctx is None or ctx.num_replicas_in_sync == 1 else ctx.all_gather(tensor, axis=0)


class RetrievalTrainer(keras.Model):
    """Trains an encoder mapping {"ground", "aerial"} -> {"ground": [B, D], "aerial": [B, D]}.

    Args:
      encoder: a retrieval model from `cvm.models.build_model`.
      loss: the in-batch loss, called as loss(ground, aerial, locations) on the global batch.
      image_spec: if given, batches arrive as uint8 images and are normalised (cast, mean) inside
        the step, on the device (`Pipeline(normalize=False)`); else they arrive preprocessed.
    """

    def __init__(self, encoder: keras.Model, loss: WeightedSoftMarginTripletLoss, image_spec=None, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.image_spec = image_spec
        self.retrieval_loss = loss
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def call(self, inputs, training=False):
        return self.encoder(inputs, training=training)

    @property
    def metrics(self):
        return [self.loss_tracker]

    def global_loss(self, descriptors, meta):
        """The loss of the global batch from this replica's descriptors (float32)."""
        ctx = tf.distribute.get_replica_context()
        ground = _gather(ctx, tf.cast(descriptors["ground"], tf.float32))
        aerial = _gather(ctx, tf.cast(descriptors["aerial"], tf.float32))
        locations = None
        if self.retrieval_loss.mask_radius_m is not None:
            locations = _gather(ctx, tf.cast(meta["location"], tf.float64))
        return self.retrieval_loss(ground, aerial, locations)

    def prepare(self, features):
        if self.image_spec is None:
            return features
        from cvm.data.pipeline import normalise_batch

        return {k: normalise_batch(v, self.image_spec) for k, v in features.items()}

    def train_step(self, data):
        features, meta = data
        features = self.prepare(features)
        ctx = tf.distribute.get_replica_context()
        replicas = 1 if ctx is None else ctx.num_replicas_in_sync
        with tf.GradientTape() as tape:
            descriptors = self.encoder(features, training=True)
            loss = self.global_loss(descriptors, meta)
            # Every replica holds the same global loss; the optimizer sums the replicas' gradients.
            scaled = self.optimizer.scale_loss(loss / replicas)
        variables = self.encoder.trainable_variables
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply(grads, variables)
        self.loss_tracker.update_state(loss)
        return {"loss": loss}

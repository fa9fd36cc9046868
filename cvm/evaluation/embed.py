"""Descriptors of a whole split: the eval pipeline through the encoder, in order, on the device."""

from __future__ import annotations

import weakref

import numpy as np
import tensorflow as tf

from cvm import faultinject


_STEPS = weakref.WeakKeyDictionary()  # encoder -> {spec: compiled step}: traced once, not per validation


def _embed_step(encoder, normalize):
    steps = _STEPS.setdefault(encoder, {})
    if normalize not in steps:

        @tf.function(reduce_retracing=True)
        def step(features):
            if normalize is not None:  # uint8 batches: preprocess on the device
                from cvm.data.pipeline import normalise_batch

                features = {k: normalise_batch(v, normalize) for k, v in features.items()}
            out = encoder(features, training=False)
            return tf.cast(out["ground"], tf.float32), tf.cast(out["aerial"], tf.float32)

        steps[normalize] = step
    return steps[normalize]


def embed_split(encoder, pipeline, batch_size: int, progress: bool = False) -> dict:
    """{"ground": [N, D] float32, "aerial": [N, D] float32, "index": [N] int64} for the split.

    Pairs whose images could not be read are absent from both sides (`index` lists the pairs kept,
    in split order). Dropout is off. Descriptors come back to the host in float32; the evaluator
    streams them, so only the [N, D] arrays (not N x N) ever live in memory.
    """
    step = _embed_step(encoder, None if getattr(pipeline, "normalize", True) else pipeline.spec)
    grounds, aerials, indices = [], [], []
    dataset = pipeline.eval(batch_size)
    bar = None
    if progress:
        from keras.utils import Progbar

        bar = Progbar(len(pipeline.split), unit_name="pair")
    for features, meta in dataset:
        ground, aerial = step(features)
        grounds.append(ground.numpy())
        aerials.append(aerial.numpy())
        indices.append(meta["index"].numpy())
        if len(indices) == 1:
            faultinject.kill_point("validation")  # testing aid (CVM_KILL_AT): mid-validation
        if bar is not None:
            bar.add(int(meta["index"].shape[0]))
    if not grounds:
        return {"ground": np.zeros((0, 0), np.float32), "aerial": np.zeros((0, 0), np.float32),
                "index": np.zeros((0,), np.int64)}
    return {"ground": np.concatenate(grounds), "aerial": np.concatenate(aerials),
            "index": np.concatenate(indices)}

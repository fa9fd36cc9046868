"""tf.distribute strategy from the --strategy flag (TensorFlow's own engine)."""

from __future__ import annotations

import json
import os

import tensorflow as tf

from cvm.errors import CvmError

STRATEGIES = ("default", "mirrored", "multi_worker")


def make_strategy(name: str = "default", devices=None) -> tf.distribute.Strategy:
    """The strategy for `--strategy`.

    default: one device (the first GPU if any, else the CPU); mirrored: all local GPUs (or the given
    devices, e.g. two logical CPUs in tests); multi_worker: MultiWorkerMirroredStrategy configured by
    the TF_CONFIG environment variable (one process per worker).
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise CvmError("--strategy multi_worker needs the TF_CONFIG environment variable "
                           '(e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                           '"task": {"type": "worker", "index": 0}}), one process per worker')
        try:
            json.loads(os.environ["TF_CONFIG"])
        except ValueError as exc:
            raise CvmError(f"TF_CONFIG is not valid JSON: {exc}") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise CvmError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes checkpoints, summaries and results (worker 0)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "cluster_spec", lambda: None)():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0
                                             and "chief" not in resolver.cluster_spec().as_dict())

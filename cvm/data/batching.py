"""The batching engine every pipeline shares: epoch order, resume, and samples decoded by a thread pool.

A training epoch visits the split in the order `np.random.default_rng([seed, epoch]).permutation(N)`
and keeps only full batches; evaluation visits every sample once in split order, the last batch
partial. A sample that fails to load (its `load_sample` returns None) is left out and the batch is
filled from the next ones, so which samples form a batch depends only on the seed, the epoch and
which files are unreadable, never on the number of threads or their timing.

Why a thread pool rather than a parallel `tf.data` map over `tf.numpy_function`: the decode
(OpenCV) releases the GIL, so plain Python threads keep every core busy, while tf.data's per-element
py_func calls, the filter and the element-wise batch copy cost about a quarter of the throughput on
a 2-core machine (`bench/pipeline.py`: 0.73x of a bare OpenCV loop per core, against 1.0x for the
threads). Whole batches cross into TensorFlow through one `from_generator` call each.
"""

from __future__ import annotations

import abc
import collections
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Dict, Iterable, Iterator, Optional, Tuple

import numpy as np

from cvm.errors import CvmError

if TYPE_CHECKING:
    import tensorflow as tf


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def loaded_batches(load: Callable[[int, int], Optional[dict]], items: Iterable[Tuple[int, int]], batch_size: int,
                   drop_remainder: bool, workers: int, skip_batches: int = 0) -> Iterator[dict]:
    """Batches {name: stacked array, "index": int64 [B]} of `load(epoch, index)` over `items` (epoch, index).

    Samples load `workers` at a time, in order, with a bounded look-ahead (the memory of a few
    batches); a None result drops the sample. A batch never spans two epochs: a change of epoch
    ends the current one (dropped if `drop_remainder`, as a partial batch). The first `skip_batches`
    batches are formed but not yielded (resuming mid-epoch gives exactly the batches that followed).
    """
    batch_size = int(batch_size)
    window = max(2 * batch_size, 4 * workers)
    pending: collections.deque = collections.deque()
    samples, epoch_of_batch, skip = [], None, int(skip_batches)

    def emit():
        nonlocal samples, skip
        batch = {key: np.stack([s[key] for s in samples]) for key in samples[0]}
        samples = []
        if skip:
            skip -= 1
            return None
        return batch

    with ThreadPoolExecutor(max_workers=max(1, int(workers)), thread_name_prefix="cvm_load") as pool:
        try:
            it = iter(items)
            exhausted = False
            while True:
                while not exhausted and len(pending) < window:
                    try:
                        epoch, index = next(it)
                    except StopIteration:
                        exhausted = True
                        break
                    pending.append((epoch, index, pool.submit(load, epoch, index)))
                if not pending:
                    break
                epoch, index, future = pending.popleft()
                if samples and epoch != epoch_of_batch:
                    if drop_remainder:
                        samples = []
                    else:
                        batch = emit()
                        if batch is not None:
                            yield batch
                epoch_of_batch = epoch
                sample = future.result()
                if sample is None:
                    continue
                sample = dict(sample, index=np.int64(index))
                samples.append(sample)
                if len(samples) == batch_size:
                    batch = emit()
                    if batch is not None:
                        yield batch
            if samples and not drop_remainder:
                batch = emit()
                if batch is not None:
                    yield batch
        finally:
            for _, _, future in pending:  # an abandoned iterator (e.g. `.take(n)`) stops loading at once
                future.cancel()


class EpochPipeline(abc.ABC):
    """Base of the pipelines: the epoch schedule and the tf.data wrapping of loaded batches.

    A subclass gives `self.split` (len() and, for errors, `.name` / `.dataset`), and implements
    `sample_spec()` ({name: (shape, NumPy dtype) of one sample}), `load_sample(index, epoch, train)` (a dict
    of NumPy arrays matching it, or None to skip the sample) and `finish_batch(batch)` (a TF function
    turning a batch dict, which also holds "index", into the (features, meta) element).

    Args:
      seed: the seed of the epoch orders (and, in subclasses, of augmentation draws).
      num_parallel_calls: decoding threads (default: the usable cores; measured best on 2 cores, where
        more threads only add switching).
    """

    def __init__(self, split, spec, seed: int = 0, faults=None, faults_path: Optional[str] = None,
                 num_parallel_calls: Optional[int] = None, items: str = "pairs"):
        """What every pipeline holds: its split (never empty), image spec, fault report, seed and threads."""
        if len(split) == 0:
            from cvm.errors import CvmError

            raise CvmError(f"{split.dataset} split {split.name!r} has no {items} (root: {split.root})")
        if faults is None:
            from cvm.data.pipeline import FaultReport

            faults = FaultReport(faults_path)
        self.split = split
        self.spec = spec
        self.faults = faults
        self.seed = int(seed)
        self.num_parallel_calls = int(num_parallel_calls or usable_cores())
        # A batch sampler (cvm.data.sampling.NeighbourSampler) orders training epochs instead of the shuffle.
        self.sampler = None

    # --- the schedule -------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> np.ndarray:
        """The sample order of a training epoch (a pure function of seed and epoch, and of the sampler's table)."""
        if self.sampler is not None:
            return self.sampler.epoch_order(epoch)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(len(self.split)).astype(np.int64)

    def steps_per_epoch(self, batch_size: int) -> int:
        """Full batches per training epoch when no sample is skipped."""
        return len(self.split) // int(batch_size)

    def check_batch_size(self, batch_size: int) -> int:
        batch_size = int(batch_size)
        if batch_size > len(self.split):
            raise CvmError(f"--batch_size {batch_size} is larger than the {self.split.dataset} {self.split.name} "
                           f"split ({len(self.split)} samples)")
        return batch_size

    def train_items(self, start_epoch: int = 0, epochs: Optional[int] = None) -> Iterator[Tuple[int, int]]:
        """(epoch, index) of every training sample of epochs start_epoch .. epochs-1 (forever if None)."""
        epoch = int(start_epoch)
        while epochs is None or epoch < int(epochs):
            for index in self.epoch_order(epoch):
                yield epoch, int(index)
            epoch += 1

    # --- hooks ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def sample_spec(self) -> Dict[str, Tuple[tuple, type]]:
        """{name: (shape, NumPy dtype)} of one loaded sample ("index" is added by the engine)."""

    @abc.abstractmethod
    def load_sample(self, index: int, epoch: int, train: bool) -> Optional[dict]:
        """The sample's arrays as `sample_spec` says, or None to leave it out (it is reported by the loader)."""

    @abc.abstractmethod
    def finish_batch(self, batch: dict):
        """A TF function of a batch dict (with "index") -> the (features, meta) element."""

    # --- datasets -------------------------------------------------------------------------------
    def _dataset(self, make_items: Callable[[], Iterable], batch_size: int, train: bool, skip_batches: int = 0):
        import tensorflow as tf  # here, so that modules defining pipelines import without TensorFlow

        spec = self.sample_spec()
        batch_dim = int(batch_size) if train else None  # full training batches: a static shape for XLA
        signature = {k: tf.TensorSpec((batch_dim, *shape), tf.as_dtype(dtype)) for k, (shape, dtype) in spec.items()}
        signature["index"] = tf.TensorSpec((batch_dim,), tf.int64)
        workers = self.num_parallel_calls

        def load(epoch, index):
            return self.load_sample(index, epoch, train)

        def generate():
            yield from loaded_batches(load, make_items(), batch_size, drop_remainder=train, workers=workers,
                                      skip_batches=skip_batches)

        ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
        return ds.map(self.finish_batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def train(self, batch_size: int, start_epoch: int = 0, epochs: Optional[int] = None,
              skip_batches: int = 0) -> "tf.data.Dataset":
        """Full shuffled batches for epochs start_epoch .. epochs-1 (forever if epochs is None).

        `skip_batches` drops that many batches of `start_epoch` first: resuming mid-epoch.
        """
        batch_size = self.check_batch_size(batch_size)
        return self._dataset(lambda: self.train_items(start_epoch, epochs), batch_size, train=True,
                             skip_batches=skip_batches)

    def eval(self, batch_size: int) -> "tf.data.Dataset":
        """Every sample once, in split order; the last batch may be partial."""
        n = len(self.split)
        return self._dataset(lambda: ((0, i) for i in range(n)), int(batch_size), train=False)

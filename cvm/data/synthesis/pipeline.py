"""tf.data train / eval datasets of a synthesis split (the shared epoch engine: `cvm.data.batching`)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from cvm.data.batching import EpochPipeline
from cvm.data.synthesis.loader import SynthesisLoader
from cvm.data.synthesis.presets import SynthesisSpec
from cvm.data.synthesis.records import SynthesisSplit
from cvm.errors import CvmError


class SynthesisPipeline(EpochPipeline):
    """tf.data train / eval datasets of a synthesis split (the shared engine: `cvm.data.batching`).

    Args:
      split: a SynthesisSplit (`load_synthesis_split`).
      spec: sizes and preprocessing (`SYNTHESIS_PRESETS`).
      seed: seed of the epoch orders and the crop / flip draws.
      faults / faults_path: where skipped samples are reported (a FaultReport, or a file for a new one).
      num_parallel_calls: loading threads (default: the usable cores, as the retrieval pipeline).

    Example:
      split = load_synthesis_split("synthetic", "train", direction="g2a", synthetic_pairs=20)
      for images, meta in SynthesisPipeline(split, SYNTHESIS_PRESETS["pano2aerial_small"]).train(4, epochs=1):
          ...
    """

    def __init__(self, split: SynthesisSplit, spec: SynthesisSpec, seed: int = 0, faults: Optional[FaultReport] = None,
                 faults_path: Optional[str] = None, num_parallel_calls: Optional[int] = None):
        super().__init__(split, spec, seed, faults, faults_path, num_parallel_calls, items="samples")
        self.loader = SynthesisLoader(split, spec, seed, self.faults)
        self._names = None

    def sample_files(self, index: int) -> tuple:
        """The files sample `index` is read from (cvm.data.pipeline.require_usable)."""
        sample = self.split[int(index)]
        return tuple(p for p in (sample.input_path, sample.target_path, sample.target_seg_path) if p)

    def sample_spec(self) -> dict:
        return {"input": (self.loader.input_shape, np.float32), "target": (self.loader.target_shape, np.float32),
                "target_seg": (self.loader.target_shape, np.float32)}

    def load_sample(self, index: int, epoch: int, train: bool) -> Optional[dict]:
        x, y, s, ok = self.loader.load(index, epoch, train)
        return {"input": x, "target": y, "target_seg": s} if ok else None

    def finish_batch(self, batch: dict):
        import tensorflow as tf

        if self._names is None:
            with tf.init_scope():  # an eager tensor that every traced map captures
                self._names = tf.constant(self.split.out_names, tf.string)
        images = {"input": batch["input"], "target": batch["target"], "target_seg": batch["target_seg"]}
        return images, {"index": batch["index"], "out_name": tf.gather(self._names, batch["index"])}


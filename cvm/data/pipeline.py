"""tf.data pipelines: records -> decoded, augmented, normalised batches.

Decoding, resizing and augmentation run in OpenCV (exactly the originals' conventions) on a pool of
threads (`cvm.data.batching`, shared by every pipeline); the cast to float32 and the mean subtraction
run as TF ops on whole batches.

Elements are `(features, meta)` tuples:
  features = {"ground": float32 [B, Hg, Wg, 3], "aerial": float32 [B, Ha, Wa, 3]} (the model input;
              with normalize=False uint8 images, normalised inside the compiled training step, which
              moves 4x fewer bytes and takes the float conversion off the input threads)
  meta     = {"index": int64 [B] (position in the split), "yaw": float32 [B] (panorama azimuth
              shift in degrees, 0 unless drawn), "location": float64 [B, 2] (if the split has one)}

Training: each epoch visits the split in the order `np.random.default_rng([seed, epoch])
.permutation(N)`, drops the tail to keep batches full, and draws each sample's augmentation from
`default_rng([seed, epoch, index])`, so a run is reproducible regardless of parallelism and can
be resumed at any (epoch, batch). Evaluation: every sample once, in split order, last batch partial.

Unreadable samples (missing, zero-byte, truncated or corrupt files, any decode error) are skipped,
counted and written to a `FaultReport` (faults.txt beside the run); they never stop an epoch.
In evaluation a skipped pair disappears from both sides; `meta["index"]` says which pairs remain.
"""

from __future__ import annotations

import os
import threading
from typing import Optional

import numpy as np
import tensorflow as tf
from absl import logging

from cvm.data import augment as augment_lib
from cvm.data import images
from cvm.data.batching import EpochPipeline
from cvm.data.records import Split, unreadable_reason
from cvm.errors import CvmError


class FaultReport:
    """Thread-safe record of skipped samples; appends one line per new fault to `path` if given.

    A file already named in `path` (by an earlier process of the same run: a resumed or rerun one) is
    not written again, so the file names every fault exactly once.
    """

    def __init__(self, path: Optional[str] = None):
        self.path = path
        self._lock = threading.Lock()
        self._faults = {}  # file -> [reason, occurrences]
        self._written = set()
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
            try:
                with open(path) as f:
                    self._written = {line.split("\t", 1)[0] for line in f if line.strip()}
            except (FileNotFoundError, UnicodeDecodeError):
                pass

    def record(self, file: str, reason: str) -> None:
        with self._lock:
            entry = self._faults.get(file)
            if entry is not None:
                entry[1] += 1
                return
            self._faults[file] = [reason, 1]
            logging.warning("skipping %s: %s", file, reason)
            if self.path and file not in self._written:
                self._written.add(file)
                with open(self.path, "a") as f:
                    f.write(f"{file}\t{reason}\n")

    def __len__(self) -> int:
        return len(self._faults)

    @property
    def skipped(self) -> int:
        """Total number of skipped loads (a bad file counts once per epoch it was met)."""
        with self._lock:
            return sum(count for _, count in self._faults.values())

    def items(self):
        """[(file, reason)] in the order first met."""
        with self._lock:
            return [(f, r) for f, (r, _) in self._faults.items()]


# The fault report's wording of records.unreadable_reason.
_FAULTS = {"missing": "missing", "empty": "zero-byte file", "truncated": "truncated image",
           "corrupt": "unreadable image (not a decodable JPEG/PNG)"}


def describe_failure(path: str) -> str:
    """Why `read_bgr` returned None for this file, in words for the report."""
    if path.startswith("synthetic://"):
        return "could not be rendered"
    reason = unreadable_reason(path)
    return _FAULTS.get(reason, reason)


def describe_split(split, role: str = "") -> str:
    """'the cvusa 'train' split (root /data/CVUSA)' (role: 'training', 'validation', ... before 'split')."""
    root = getattr(split, "root", None)
    return f"the {split.dataset} {split.name!r} {role + ' ' if role else ''}split" + (f" (root {root})" if root else "")


def first_reasons(faults: Optional[FaultReport], count: int = 3) -> str:
    """'FILE: REASON; ...' of the first faults recorded, for an error message."""
    items = faults.items()[:count] if faults is not None else []
    return "; ".join(f"{file}: {reason}" for file, reason in items) or "none recorded"


def no_steps_error(split, faults: Optional[FaultReport], epoch: int, role: str = "training") -> CvmError:
    """The error of an epoch that ran no step because every sample it drew was dropped."""
    where = f" (all of them in {faults.path})" if faults is not None and faults.path else ""
    return CvmError(f"epoch {epoch} ran no training step: every sample of {describe_split(split, role)} was "
                    f"dropped; first reasons: {first_reasons(faults)}{where}. Fix or restore those files "
                    "(`cvm data check` lists them), or point --root at a complete copy")


def require_usable(pipeline, need: int, role: str = "training") -> None:
    """CvmError unless at least `need` samples of `pipeline.split` have all their files.

    A cheap look before any step: it stats the files `pipeline.sample_files(i)` names (pseudo-paths of
    in-memory datasets count as present) and stops at the `need`-th complete sample, so a split
    whose files are all absent (a wrong --root, a missing folder) fails at once, naming the split and
    the first absent files, instead of running epochs of no step. Unreadable files that do exist are
    found while loading (`no_steps_error`).
    """
    split = pipeline.split
    need = max(1, int(need))
    usable, lacking, examples = 0, 0, []
    for index in range(len(split)):
        absent = [p for p in pipeline.sample_files(index) if p and "://" not in p and not os.path.isfile(p)]
        if not absent:
            usable += 1
            if usable >= need:
                return
            continue
        lacking += 1
        if len(examples) < 3:
            examples.append(f"{absent[0]}: {describe_failure(absent[0])}")
    reasons = "; ".join(examples) or "none"
    if usable == 0:
        problem = f"has no usable sample: all {len(split)} lack a file"
    else:
        problem = (f"has {usable} complete sample(s) of {len(split)}, fewer than the batch size {need}, so an "
                   f"epoch would run no step; {lacking} lack a file")
    raise CvmError(f"{describe_split(split, role)} {problem}; first reasons: {reasons}. Fix or restore those "
                   "files (`cvm data check` lists them), or point --root at a complete copy")


class PairLoader:
    """Reads, prepares and augments one pair in NumPy/OpenCV; the body of the tf.data map."""

    def __init__(self, split: Split, spec: images.ImageSpec, augment: Optional[augment_lib.AugmentSpec] = None,
                 seed: int = 0, faults: Optional[FaultReport] = None, cache: bool = False):
        if spec.ground_size is None:
            raise CvmError("the pipeline needs a fixed ground_size (height, width) to batch images")
        self.split = split
        self.spec = spec
        self.augment = augment if augment is not None and augment.active else None
        self.seed = int(seed)
        self.faults = faults if faults is not None else FaultReport()
        self._cache = {} if cache else None
        self._cache_lock = threading.Lock()

    @property
    def ground_shape(self) -> tuple:
        h, w = self.spec.ground_size
        if self.augment is not None and self.augment.fov_deg < 360.0:
            w = max(1, int(round(w * self.augment.fov_deg / 360.0)))
        return (int(h), int(w), 3)

    @property
    def aerial_shape(self) -> tuple:
        return (int(self.spec.aerial_size[0]), int(self.spec.aerial_size[1]), 3)

    def _read(self, index: int):
        if self._cache is not None:
            with self._cache_lock:
                hit = self._cache.get(index)
            if hit is not None:
                return hit
        ground = self.split.read_ground(index)
        if ground is None:
            self.faults.record(self.split[index].ground_path, describe_failure(self.split[index].ground_path))
            return None
        aerial = self.split.read_aerial(index)
        if aerial is None:
            self.faults.record(self.split[index].aerial_path, describe_failure(self.split[index].aerial_path))
            return None
        # Crop the ground rows before caching: CVACT's full panoramas are 4x the kept part.
        ground = images.crop_rows(ground, self.split.ground_rows)
        if self._cache is not None:
            with self._cache_lock:
                self._cache[index] = (ground, aerial)
        return ground, aerial

    def load(self, index: int, epoch: int, train: bool):
        """(ground uint8, aerial uint8, yaw float32, ok bool); ok False means skip this sample."""
        index = int(index)
        try:
            pair = self._read(index)
            if pair is None:
                return self._failed()
            ground, aerial = pair
            ground = images.resize(ground, self.spec.ground_size, self.spec.interpolation)
            yaw = 0.0
            if self.augment is None:
                aerial = images.prepare_aerial(aerial, self.spec)
            else:
                # Train draws depend on the epoch; evaluation draws (fixed FoV / azimuth test sets)
                # only on the index, so every model sees the same test set for a given seed.
                key = [self.seed, int(epoch), index] if train else [self.seed, 2**31, index]
                rng = np.random.default_rng(key)
                ground, aerial, yaw = augment_lib.apply(
                    self.augment, ground, aerial, rng,
                    resize_aerial=lambda a: images.prepare_aerial(a, self.spec),
                    aerial_is_polar=self.spec.aerial_polar)
            if ground.shape != self.ground_shape or aerial.shape != self.aerial_shape:
                raise ValueError(f"prepared shapes {ground.shape}/{aerial.shape}, expected "
                                 f"{self.ground_shape}/{self.aerial_shape}")
            return ground, aerial, np.float32(yaw), True
        except Exception as exc:  # a bad sample must never stop an epoch
            pair = self.split[index]
            self.faults.record(f"{pair.ground_path} | {pair.aerial_path}", f"{type(exc).__name__}: {exc}")
            return self._failed()

    def _failed(self):
        return (np.zeros(self.ground_shape, np.uint8), np.zeros(self.aerial_shape, np.uint8),
                np.float32(0.0), False)


def normalise_batch(images_uint8: tf.Tensor, spec: images.ImageSpec) -> tf.Tensor:
    """TF twin of images.normalise: float32, channel order, mean subtraction, scale."""
    x = tf.cast(images_uint8, tf.float32)
    if spec.channel_order == "rgb":
        x = tf.reverse(x, axis=[-1])
    if spec.mean is not None:
        x = x - tf.constant(spec.mean, tf.float32)
    if spec.scale != 1.0:
        x = x * tf.constant(spec.scale, tf.float32)
    return x


class Pipeline(EpochPipeline):
    """Builds the train and eval datasets of one split.

    Args:
      split: the records (any adapter, or the in-memory synthetic world).
      spec: image sizes and normalisation (`cvm.data.images.PRESETS`).
      augment: training augmentation; for evaluation only `azimuth_shift` and `fov_deg` apply
        (a fixed, seeded test set for orientation-unknown / limited-FoV evaluation).
      seed: the seed of shuffles and augmentation draws.
      faults: where skipped samples are reported (a FaultReport; `faults_path` makes one).
      cache: keep decoded images in memory after the first epoch (decode is the dominant cost).
      num_parallel_calls: decoding threads (default: the usable cores; `cvm.data.batching`).
      normalize: emit float32 images with the spec's mean subtracted (True) or the uint8 images
        (False: the consumer applies `normalise_batch`, as the trainer does on the device).
    """

    def __init__(self, split: Split, spec: images.ImageSpec, augment: Optional[augment_lib.AugmentSpec] = None,
                 seed: int = 0, faults: Optional[FaultReport] = None, faults_path: Optional[str] = None,
                 cache: bool = False, num_parallel_calls: Optional[int] = None, normalize: bool = True):
        super().__init__(split, spec, seed, faults, faults_path, num_parallel_calls)
        self.augment = augment
        self.loader = PairLoader(split, spec, augment, seed, self.faults, cache)
        self.normalize = bool(normalize)
        locations = split.locations()
        self._locations = None if locations is None else tf.constant(locations, tf.float64)

    def sample_files(self, index: int) -> tuple:
        """The files sample `index` is read from (`require_usable`)."""
        pair = self.split[int(index)]
        return (pair.ground_path, pair.aerial_path)

    def sample_spec(self) -> dict:
        return {"ground": (self.loader.ground_shape, np.uint8), "aerial": (self.loader.aerial_shape, np.uint8),
                "yaw": ((), np.float32)}

    def load_sample(self, index: int, epoch: int, train: bool) -> Optional[dict]:
        ground, aerial, yaw, ok = self.loader.load(index, epoch, train)
        return {"ground": ground, "aerial": aerial, "yaw": yaw} if ok else None

    def finish_batch(self, batch: dict):
        features = {"ground": batch["ground"], "aerial": batch["aerial"]}
        if self.normalize:
            features = {k: normalise_batch(v, self.spec) for k, v in features.items()}
        meta = {"index": batch["index"], "yaw": batch["yaw"]}
        if self._locations is not None:
            meta["location"] = tf.gather(self._locations, batch["index"])
        return features, meta


def train_dataset(split: Split, spec: images.ImageSpec, batch_size: int, augment=None, seed: int = 0,
                  **kwargs) -> tf.data.Dataset:
    """Shorthand for Pipeline(split, spec, augment, seed, ...).train(batch_size)."""
    epochs = kwargs.pop("epochs", None)
    return Pipeline(split, spec, augment, seed, **kwargs).train(batch_size, epochs=epochs)


def eval_dataset(split: Split, spec: images.ImageSpec, batch_size: int, augment=None, seed: int = 0,
                 **kwargs) -> tf.data.Dataset:
    """Shorthand for Pipeline(split, spec, augment, seed, ...).eval(batch_size)."""
    return Pipeline(split, spec, augment, seed, **kwargs).eval(batch_size)

"""Regmi & Shah (ICCV 2019) image stages: the two-stream baseline and joint feature learning (3 views).

Joint feature learning (https://arxiv.org/abs/1904.11045, Sec. 3.2; `joint_feature_learning/src/
train.py`) trains three encoders at once: ground panorama, real aerial and the aerial image that
the X-Fork GAN synthesized from the panorama. Its loss is

    (w_ga L(ground, aerial) + w_sa L(synthesized, aerial)) / (w_ga + w_sa),   w_ga = 10, w_sa = 1,

each L the weighted soft-margin triplet loss (seeds.md §1.5). The synthesized aerial of a pair is
read from a folder by the real aerial's file name (as `cvm synthesize` writes it) and gets the same
augmentation as the real aerial: the same rotation (as the original) and, by default, the same
zoom-crop (a fix: the original rotated the synthesized image but never cropped it, so the two
aerial views of a pair disagreed in scale ~32% of the time; `synthesized_zoom=False` keeps that).

`JointRun` is `cvm.training.loop.Run` with the Regmi model built for the configured image sizes
(the FC layers depend on them), the three-view data and the joint loss: checkpoints, exact resume,
validation and best-model selection are Run's. Without a synthesized folder it trains the
two-stream baseline (`regmi_two_stream`) with the plain loss.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import tensorflow as tf

from cvm.data import augment as augment_lib
from cvm.data import images
from cvm.data.pipeline import Pipeline, describe_failure, normalise_batch
from cvm.data.records import read_bgr
from cvm.errors import CvmError
from cvm.training.config import TrainConfig
from cvm.training.loop import Run, build_loss, load_splits
from cvm.training.retrieval import RetrievalTrainer, _gather

IMAGE_METHODS = ("regmi_two_stream", "regmi_joint")


def build_regmi_model(config: TrainConfig):
    """The Regmi two-stream or joint model of `config`, its FC layers sized for the configured images."""
    from cvm.training.loop import build_encoder

    if config.method not in IMAGE_METHODS:
        raise CvmError(f"--method must be one of {', '.join(IMAGE_METHODS)} for this stage, got {config.method!r}")
    return build_encoder(config)


def synthesized_path(folder: str, aerial_path: str) -> str:
    """Where the synthesized aerial of a pair lives: the folder plus the real aerial's file name."""
    return os.path.join(folder, os.path.basename(aerial_path))


class SynthesizedViewPipeline(Pipeline):
    """`Pipeline` whose samples also carry the synthesized aerial, augmented like the real aerial.

    features = {"ground", "aerial", "synthesized"} (uint8 with normalize=False, else float32);
    meta as `Pipeline`. The real pair is prepared by the parent's loader exactly as the two-view
    pipeline does (same draws); the synthesized image replays those draws: the zoom-crop keeps the
    same fraction of its side (when `synthesized_zoom`), then it is resized to the aerial size
    (INTER_AREA, a no-op at the paper's 512) and rotated by the same quarter turns. A missing or
    unreadable synthesized image skips the pair (reported in the fault report).

    Args:
      synthesized_dir: folder holding one synthesized aerial per pair, named as the aerial file.
      synthesized_zoom: apply the real aerial's zoom-crop too (True, the fix) or not (the original).
      other arguments: as `Pipeline`; only the CVM-Net recipe (zoom-crop, aerial-only rotation) or
        no augmentation are supported.
    """

    def __init__(self, split, spec, synthesized_dir: str, augment: Optional[augment_lib.AugmentSpec] = None,
                 seed: int = 0, synthesized_zoom: bool = True, **kwargs):
        if augment is not None and (augment.rotation == "joint" or augment.joint_flip > 0
                                    or augment.azimuth_shift or augment.fov_deg < 360.0):
            raise CvmError("joint feature learning supports --augment=cvm_net (zoom-crop and aerial rotation, as "
                           "the original) or none, with a full panorama (--fov_deg=360, --noazimuth_shift)")
        if not os.path.isdir(synthesized_dir):
            raise CvmError(f"synthesized aerial folder {synthesized_dir} not found: run `cvm synthesize ... "
                           f"--out {synthesized_dir}` (or the pipeline's synthesis stage) first")
        super().__init__(split, spec, augment, seed, **kwargs)
        self.synthesized_dir = synthesized_dir
        self.synthesized_zoom = bool(synthesized_zoom)
        self._sides = {}

    def synthesized_file(self, index: int) -> str:
        return synthesized_path(self.synthesized_dir, self.split[int(index)].aerial_path)

    def sample_files(self, index: int) -> tuple:
        return (*super().sample_files(index), self.synthesized_file(index))

    def aerial_side(self, index: int) -> int:
        """Side of the full-resolution real aerial (the zoom draw's range depends on it), remembered per pair."""
        side = self._sides.get(index)
        if side is None:
            path = self.split[index].aerial_path
            try:  # the file header only: the image was just decoded by the pair loader
                from PIL import Image

                with Image.open(path) as image:
                    side = int(image.size[1])
            except Exception:  # in-memory (synthetic) splits, or a format PIL cannot read
                side = int(self.loader._read(index)[1].shape[0])
            self._sides[index] = side
        return side

    def draws(self, index: int, epoch: int, train: bool, aerial_side: int):
        """(kept fraction of the side or None, quarter turns): the draws `augment.apply` makes for this sample."""
        augment = self.loader.augment
        if augment is None:
            return None, 0
        key = [self.seed, int(epoch), int(index)] if train else [self.seed, 2**31, int(index)]
        rng = np.random.default_rng(key)
        fraction = None
        if augment.zoom_crop:  # the same draw as augment.zoom_crop, in the same order
            c = int(rng.integers(1, aerial_side - 2, endpoint=True))
            if c > augment.zoom_min * aerial_side / 750.0:
                fraction = c / aerial_side
        k = augment_lib.draw_quarter_turns(rng, augment.double_zero) if augment.rotation == "cvm_net" else 0
        return fraction, k

    def load_three(self, index, epoch, train: bool):
        """(ground, aerial, synthesized uint8, yaw, ok)."""
        index = int(index)
        ground, aerial, yaw, ok = self.loader.load(index, epoch, train)
        a_shape = self.loader.aerial_shape
        failed = (ground, aerial, np.zeros(a_shape, np.uint8), yaw, False)
        if not ok:
            return failed
        path = self.synthesized_file(index)
        try:
            synthesized = read_bgr(path)
            if synthesized is None:
                self.faults.record(path, describe_failure(path))
                return failed
            fraction, k = self.draws(index, epoch, train, self.aerial_side(index))
            if fraction is not None and self.synthesized_zoom:
                side = synthesized.shape[0]
                crop = max(1, int(round(fraction * side)))
                start = (side - crop) // 2
                synthesized = synthesized[start:start + crop, start:start + crop]
            synthesized = images.resize_area(synthesized, self.spec.aerial_size)
            if k:
                synthesized = augment_lib.rotate_aerial(synthesized, k, self.loader.augment.rotation_impl)
            if synthesized.shape != a_shape:
                raise ValueError(f"synthesized aerial prepared to {synthesized.shape}, expected {a_shape}")
            return ground, aerial, np.ascontiguousarray(synthesized), yaw, True
        except Exception as exc:  # a bad sample must never stop an epoch
            self.faults.record(path, f"{type(exc).__name__}: {exc}")
            return failed

    def sample_spec(self) -> dict:
        return {**super().sample_spec(), "synthesized": (self.loader.aerial_shape, np.uint8)}

    def load_sample(self, index: int, epoch: int, train: bool) -> Optional[dict]:
        ground, aerial, synthesized, yaw, ok = self.load_three(index, epoch, train)
        return {"ground": ground, "aerial": aerial, "synthesized": synthesized, "yaw": yaw} if ok else None

    def finish_batch(self, batch: dict):
        features = {k: batch[k] for k in ("ground", "aerial", "synthesized")}
        if self.normalize:
            features = {k: normalise_batch(v, self.spec) for k, v in features.items()}
        return features, {"index": batch["index"], "yaw": batch["yaw"]}


class JointTrainer(RetrievalTrainer):
    """Train step of joint feature learning: (w_ga L(ground, aerial) + w_sa L(synthesized, aerial)) / (w_ga + w_sa).

    Regmi & Shah, ICCV 2019 (https://arxiv.org/abs/1904.11045), `joint_feature_learning/src/train.py`:
    loss = (10 * loss1 + loss2) / 11. Batches without a "synthesized" view train the plain loss.
    """

    def __init__(self, encoder, loss, image_spec=None, ground_weight: float = 10.0,
                 synthesized_weight: float = 1.0, **kwargs):
        super().__init__(encoder, loss, image_spec=image_spec, **kwargs)
        if ground_weight < 0 or synthesized_weight < 0 or ground_weight + synthesized_weight <= 0:
            raise CvmError(f"joint loss weights must be >= 0 with a positive sum, got {ground_weight} and "
                           f"{synthesized_weight}")
        self.ground_weight = float(ground_weight)
        self.synthesized_weight = float(synthesized_weight)

    def global_loss(self, descriptors, meta):
        loss = super().global_loss(descriptors, meta)
        if "synthesized" not in descriptors:
            return loss
        ctx = tf.distribute.get_replica_context()
        synthesized = _gather(ctx, tf.cast(descriptors["synthesized"], tf.float32))
        aerial = _gather(ctx, tf.cast(descriptors["aerial"], tf.float32))
        locations = None
        if self.retrieval_loss.mask_radius_m is not None:
            locations = _gather(ctx, tf.cast(meta["location"], tf.float64))
        # The original's compute_loss(gan_sat_global, sat_global): the synthesized aerial is matched to
        # the real aerial of the same pair against the others of the batch (the loss is symmetric).
        loss_sa = self.retrieval_loss(synthesized, aerial, locations)
        total = self.ground_weight + self.synthesized_weight
        return (self.ground_weight * loss + self.synthesized_weight * loss_sa) / total


class JointRun(Run):
    """A Regmi image stage in a model_dir: two-stream (no synthesized folder) or joint feature learning.

    Args:
      config: the stage's TrainConfig (method regmi_two_stream or regmi_joint; sizes from the preset or
        --ground_size / --aerial_size, which the FC layers are built for).
      synthesized_dir: folder of the synthesized aerials of the *training* split (joint only).
      ground_weight, synthesized_weight: the joint loss weights (10 and 1 as the original).
      synthesized_zoom: give the synthesized aerial the real one's zoom-crop (True, the fix) or only
        its rotation (False, the original).

    `JointRun(config, synthesized_dir=...).train()` trains or resumes; the joint settings are saved to
    model_dir/joint.json beside config.json. The last epoch's model is kept as final/model.keras
    (`final_model_path`: best/ when validated, else that one).
    """

    keep_final = True

    def __init__(self, config: TrainConfig, synthesized_dir: Optional[str] = None, ground_weight: float = 10.0,
                 synthesized_weight: float = 1.0, synthesized_zoom: bool = True,
                 strategy: Optional[tf.distribute.Strategy] = None, progress: bool = True):
        config.validate()
        if config.method == "regmi_joint" and not synthesized_dir:
            raise CvmError("regmi_joint trains on three views: pass the folder of synthesized training aerials")
        if config.method == "regmi_two_stream" and synthesized_dir:
            raise CvmError("regmi_two_stream has no synthesized-aerial stream: use --method=regmi_joint")
        joint = {"synthesized_dir": synthesized_dir, "ground_weight": float(ground_weight),
                 "synthesized_weight": float(synthesized_weight), "synthesized_zoom": bool(synthesized_zoom)}
        self._open_model_dir(config, strategy, progress, extra={"joint": joint})
        spec = config.image_spec()
        with self.strategy.scope():
            self.encoder = build_regmi_model(config)
            self.trainer = JointTrainer(self.encoder, build_loss(config), image_spec=spec,
                                        ground_weight=ground_weight, synthesized_weight=synthesized_weight)
            self._compile()

        self.train_split, self.val_split = load_splits(config)
        faults = os.path.join(self.model_dir, "faults.txt") if self.chief else None
        common = dict(faults_path=faults, cache=config.cache, normalize=False)
        if synthesized_dir:
            self.pipeline = SynthesizedViewPipeline(self.train_split, spec, synthesized_dir, config.augment_spec(),
                                                    config.seed, synthesized_zoom=synthesized_zoom, **common)
        else:
            self.pipeline = Pipeline(self.train_split, spec, config.augment_spec(), config.seed, **common)
        self.val_pipeline = None
        if self.val_split is not None:
            # Selection compares ground and real aerial only (as the original's top-1%).
            self.val_pipeline = Pipeline(self.val_split, spec, config.eval_augment_spec(), seed=2019 + config.seed,
                                         faults=self.pipeline.faults, cache=config.cache, normalize=False)
        self._check_data()
        self._count_steps()
        self._step_fn = self._make_step_fn()

"""The retrieval trainer of a model_dir: `Run`, the retrieval step and recall validation on the epoch loop
every trainer shares (cvm.training.epochs.EpochRun: epochs, checkpoints, resumption, keep-best).

model_dir layout (design.md): config.json and flags.cfg (the resolved settings), checkpoints/
(every epoch and every --checkpoint_every_steps steps; the newest few kept), best/ (the encoder
with the best validation recall, as a .keras file, and its metrics), tensorboard/, results/,
faults.txt (samples skipped because their images could not be read), jit_choice.json (XLA or not, when
--jit_compile was left to a measurement: cvm.training.jit_choice).

Resumption is exact: a checkpoint stores every model variable (dropout seed states included), the
optimizer state and the position (epoch, step in epoch); the data order and augmentation of an
epoch are pure functions of (seed, epoch), so the resumed run skips the batches already seen and
continues with the same batches, the same dropout masks and the same updates.
"""

from __future__ import annotations

import os
from typing import Optional

import keras
import tensorflow as tf
from absl import logging

from cvm.atomic import replacing
from cvm.data import holdout, load_split
from cvm.data.pipeline import Pipeline, require_usable
from cvm.errors import CvmError
from cvm.training.config import TrainConfig
from cvm.training.distribute import is_chief, make_strategy
from cvm.training.epochs import EpochRun
from cvm.training.optimizers import make_optimizer
from cvm.training.retrieval import RetrievalTrainer


def build_encoder(config: TrainConfig):
    """The retrieval model of `config` (weights random or as --weights says)."""
    from cvm.models import build_model, builder_options

    # The options the method's model takes (the CLI refuses a model flag it does not take:
    # TrainConfig.unused_fields); models whose weights depend on the input size are built for it.
    options = config.model_kwargs()
    spec = config.image_spec()
    accepted = builder_options(config.method)
    ground_size = spec.ground_size
    if ground_size is not None and config.fov_deg < 360.0:  # the model sees the FoV crop (augment.fov_crop)
        ground_size = (ground_size[0], max(1, int(round(ground_size[1] * config.fov_deg / 360.0))))
    options.update({k: v for k, v in (("ground_size", ground_size), ("aerial_size", spec.aerial_size))
                    if k in accepted})
    return build_model(config.method, **options)


def build_loss(config: TrainConfig, encoder=None, location_kind: Optional[str] = None):
    """The in-batch loss: the weighted soft-margin triplet, or the one a correlation model needs (DSM's).

    location_kind: the training split's (records.LOCATION_KINDS), for the false-negative mask; None: VIGOR's
    lat/lon for --dataset vigor, else planar metres.
    """
    from cvm.losses import WeightedSoftMarginTripletLoss

    if location_kind is None:
        location_kind = "latlon" if config.dataset == "vigor" else "metres"
    if getattr(encoder, "infonce", False):  # Sample4Geo: symmetric InfoNCE on the model's own logit scale
        from cvm.losses import SymmetricInfoNCE

        return SymmetricInfoNCE(label_smoothing=config.infonce_smoothing, mask_radius_m=config.mask_radius_m,
                                location_kind="latlon" if location_kind == "latlon" else "metres",
                                logit_scale=encoder.logit_scale)
    if config.mask_radius_m is not None and location_kind == "latlon":
        raise CvmError(f"--mask_radius_m={config.mask_radius_m}: the triplet loss's mask takes planar metres (UTM), "
                       f"and the {config.dataset} training split has lat/lon coordinates; drop --mask_radius_m (the "
                       "InfoNCE of --method sample4geo masks by great-circle distance)")
    settings = dict(alpha=config.alpha, include_diagonal=config.include_diagonal,
                    mask_radius_m=config.mask_radius_m, mask_mode=config.mask_mode)
    if getattr(encoder, "correlation", False):
        return encoder.retrieval_loss(**settings)
    return WeightedSoftMarginTripletLoss(**settings)


def load_splits(config: TrainConfig):
    """(train split, validation split or None) as the config says."""
    spec = config.image_spec()
    common = dict(image_spec=spec, synthetic_pairs=config.synthetic_pairs, synthetic_seed=config.synthetic_seed,
                  **config.split_options())
    train = load_split(config.dataset, config.train_split, config.root, **common)
    if config.holdout_fraction > 0:
        return holdout(train, config.holdout_fraction, config.seed)
    if not config.val_split:
        return train, None
    return train, load_split(config.dataset, config.val_split, config.root, **common)


def set_precision(policy: str) -> None:
    keras.mixed_precision.set_global_policy(policy)


class Run(EpochRun):
    """One retrieval training run in a model_dir; `Run(config).train()` trains or resumes it (cvm.training.epochs)."""

    jit_compile: Optional[bool] = None  # the step train() runs: XLA or not (config's, or measured: jit_choice)
    RESUMABLE_FIELDS = frozenset({"epochs", "checkpoint_every_steps", "keep_checkpoints", "eval_every_epochs",
                                  "eval_batch_size", "strategy", "jit_compile", "cache", "root", "model_dir",
                                  "kill_after_steps", "deterministic"})
    PROGRESS_METRICS = ("loss", "lr")
    keep_final = False  # also save the last epoch's model as final/model.keras (the Regmi stages)
    sampler = None  # --sampler=neighbours: the NeighbourSampler ordering training epochs (_make_sampler)

    def __init__(self, config: TrainConfig, strategy: Optional[tf.distribute.Strategy] = None,
                 progress: bool = True):
        self._open_model_dir(config, strategy, progress)
        self.train_split, self.val_split = load_splits(config)
        kind = self.train_split.location_kind
        if config.mask_radius_m is not None and kind is None:
            from cvm.data.pipeline import describe_split

            raise CvmError(f"--mask_radius_m={config.mask_radius_m} needs coordinates, and "
                           f"{describe_split(self.train_split, 'training')} has none; drop --mask_radius_m")
        with self.strategy.scope():
            self.encoder = build_encoder(config)  # registered models create their variables when built
            self.trainer = RetrievalTrainer(self.encoder, build_loss(config, self.encoder, kind),
                                            image_spec=config.image_spec())
            self._compile()
        faults = os.path.join(self.model_dir, "faults.txt") if self.chief else None
        # uint8 batches; the trainer normalises them on the device (see Pipeline(normalize=False)).
        self.pipeline = Pipeline(self.train_split, config.image_spec(), config.augment_spec(), config.seed,
                                 faults_path=faults, cache=config.cache, normalize=False)
        self.val_pipeline = None
        if self.val_split is not None:
            self.val_pipeline = Pipeline(self.val_split, config.image_spec(), config.eval_augment_spec(),
                                         seed=2019 + config.seed, faults=self.pipeline.faults, cache=config.cache,
                                         normalize=False)
        self._check_data()
        self._count_steps()
        self.sampler = self._make_sampler()
        self.pipeline.sampler = self.sampler
        self._step_fn = self._make_step_fn()

    # --- set-up helpers -------------------------------------------------------------------------
    def _open_model_dir(self, config: TrainConfig, strategy, progress: bool, extra: Optional[dict] = None) -> None:
        """Validate, make the strategy, then what every trainer of a model_dir does first
        (EpochRun._prepare_model_dir); the batch must split evenly over the replicas."""
        config.validate()
        self.strategy = strategy or make_strategy(config.strategy)
        self._prepare_model_dir(config, progress, chief=is_chief(self.strategy), extra=extra)
        replicas = self.strategy.num_replicas_in_sync
        if config.batch_size % replicas:
            raise CvmError(f"--batch_size {config.batch_size} must be divisible by the {replicas} replicas")

    def _compile(self) -> None:
        """The optimizer of --optimizer / --lr / --lr_schedule / --clip_grad_value (optimizers.make_optimizer:
        FusedAdam(--lr) by default) on self.trainer, built for the encoder's variables (inside the strategy scope).

        A schedule reads self.steps_per_epoch at its first evaluation (the first traced step, or the first
        lr logged): the trainers compile before their pipeline exists (_count_steps).
        """
        optimizer = make_optimizer(self.config, steps_per_epoch=lambda: self.steps_per_epoch)
        self.trainer.compile(optimizer=optimizer, jit_compile=False)
        self.optimizer = self.trainer.optimizer
        self.optimizer.build(self.encoder.trainable_variables)

    def _check_data(self) -> None:
        """Fail now, naming the split and the first absent files, if the training split has too few
        complete samples for one batch or the validation split has none (cvm.data.pipeline.require_usable)."""
        require_usable(self.pipeline, min(self.config.batch_size, len(self.train_split)), "training")
        if self.val_pipeline is not None:
            require_usable(self.val_pipeline, 1, "validation")

    def _make_sampler(self):
        """Sample4Geo's neighbour batches (cvm.data.sampling.NeighbourSampler) for --sampler=neighbours, else None."""
        config = self.config
        if config.sampler != "neighbours":
            return None
        from cvm.data.pipeline import describe_split
        from cvm.data.sampling import NeighbourSampler

        split = self.train_split
        locations = None
        if config.sampler_gps:
            locations = split.locations()
            if locations is None:
                hint = (" (CVUSA: put the release's split_locations/all.csv under --root)"
                        if split.dataset == "cvusa" else "")
                raise CvmError(f"--sampler_gps needs coordinates, and {describe_split(split, 'training')} has none"
                               f"{hint}; use --nosampler_gps (shuffled anchors until the first similarity table)")
        embed = None
        if config.sampler_refresh_epochs:
            embed = self._embed_training_split
        return NeighbourSampler(len(split), config.batch_size, seed=config.seed, pool=config.neighbour_pool,
                                select=config.neighbour_select, refresh_epochs=config.sampler_refresh_epochs,
                                locations=locations, location_kind=split.location_kind,
                                aerial_keys=[pair.aerial_path for pair in split], embed=embed,
                                folder=os.path.join(self.model_dir, "sampler"), write=self.chief)

    def _embed_training_split(self) -> tuple:
        """(ground, aerial) descriptors of every training pair in split order, without augmentation."""
        from cvm.evaluation.embed import embed_split

        if not hasattr(self, "_plain_train_pipeline"):
            self._plain_train_pipeline = Pipeline(self.train_split, self.config.image_spec(), None, self.config.seed,
                                                  faults=self.pipeline.faults, cache=self.config.cache,
                                                  normalize=False)
            # The same decoded images as the training pipeline's cache (not a second copy).
            self._plain_train_pipeline.loader._cache = self.pipeline.loader._cache
            self._plain_train_pipeline.loader._cache_lock = self.pipeline.loader._cache_lock
        if self.progress:
            print("similarity neighbours: embedding the training split")
        out = embed_split(self.encoder, self._plain_train_pipeline, self.config.eval_batch_size, progress=self.progress)
        return out["ground"], out["aerial"]

    def _make_step_fn(self, jit_compile: Optional[bool] = None):
        """The distributed training step, XLA-compiled or not (default: config.jit_compile).

        None while config.jit_compile is None and no value is given: train() resolves it first
        (_resolve_jit_compile) and makes the step then.
        """
        if jit_compile is None:
            jit_compile = self.config.jit_compile
        if jit_compile is None:
            return None
        trainer, strategy = self.trainer, self.strategy
        step = trainer.train_step
        if jit_compile:
            step = tf.function(step, jit_compile=True, reduce_retracing=True)

        @tf.function(reduce_retracing=True)
        def distributed_step(batch):
            out = strategy.run(step, args=(batch,))
            return strategy.reduce(tf.distribute.ReduceOp.MEAN, out["loss"], axis=None)

        return distributed_step

    def _resolve_jit_compile(self, epoch: int) -> bool:
        """XLA or TF's kernels for a run without --jit_compile / --nojit_compile; sets self._step_fn.

        A resumed run reads MODEL_DIR/jit_choice.json. Otherwise both steps are timed on the first batch
        of `epoch` (cvm.training.jit_choice.choose_jit_compile: the training state is restored after)
        and the chief writes jit_choice.json. Under a multi-worker strategy nothing is measured (workers
        could choose differently): TF's kernels.
        """
        from cvm.training import jit_choice

        workers = jit_choice.worker_count(self.strategy)
        if workers > 1:
            logging.warning("jit_compile: not measured with %d workers (they could choose differently): TF "
                            "kernels; --jit_compile forces XLA", workers)
            if self.progress:
                print(f"TF kernels, not XLA: the choice is not measured with {workers} workers (they could "
                      "disagree); --jit_compile forces XLA")
            self._step_fn, self.jit_compile = self._make_step_fn(False), False
            return False
        recorded = jit_choice.read(self.model_dir)
        if recorded is not None:
            value = recorded["jit_compile"]
            self._step_fn, self.jit_compile = self._make_step_fn(value), value
            line = (f"{'XLA' if value else 'TF kernels'}, as measured at the start of this run "
                    f"({jit_choice.FILE_NAME})")
            logging.info("jit_compile=%s: %s", value, line)
            if self.progress:
                print(line)
            return value
        plain, xla = self._make_step_fn(False), self._make_step_fn(True)
        config = self.config
        ds = self.pipeline.train(config.batch_size, start_epoch=epoch, epochs=epoch + 1).take(1)
        try:
            batch = next(iter(self.strategy.experimental_distribute_dataset(ds)))
        except StopIteration:  # no usable batch: the epoch reports why (no_steps_error); nothing to time
            self._step_fn, self.jit_compile = plain, False
            return False
        variables = jit_choice.state_variables(self.encoder, self.trainer, self.optimizer)
        choice = jit_choice.choose_jit_compile(plain, xla, batch, variables)
        del batch
        self._step_fn = xla if choice.jit_compile else plain  # traced (and compiled) already
        self.jit_compile = choice.jit_compile
        devices = [d.name for d in tf.config.list_logical_devices() if d.device_type != "CPU"]
        if self.chief:
            jit_choice.write(self.model_dir, jit_choice.record(choice, devices))
        logging.info("jit_compile=%s: %s (%s)", choice.jit_compile, choice.summary(), jit_choice.FILE_NAME)
        if self.progress:
            print(f"{choice.summary()} ({jit_choice.FILE_NAME})")
        return choice.jit_compile

    # --- the epoch loop's hooks (cvm.training.epochs) ----------------------------------------------
    @property
    def eval_every_epochs(self) -> int:
        return self.config.eval_every_epochs

    @property
    def best_metric(self) -> str:
        return self.config.best_metric

    def checkpointed(self) -> tuple:
        return self.encoder, self.optimizer

    def best_models(self) -> dict:
        return {"model.keras": self.encoder}

    def poison_target(self):
        # The last layer's variable: a NaN there reaches the loss on every CPU. A NaN in the first conv does
        # not always: TF's fused conv + bias + ReLU kernels in a traced step may return 0 for NaN (seen on an
        # AMD EPYC family 26), while the eager model propagates it.
        return self.encoder.trainable_variables[-1]

    def before_training(self, state: dict) -> None:
        if self._step_fn is None:  # --jit_compile unset: measured on this machine (or read back on resume)
            self._resolve_jit_compile(state["epoch"])
        elif self.config.jit_compile is not None:
            self.jit_compile = self.config.jit_compile

    def before_epoch(self, epoch: int) -> None:
        if self.sampler is None:
            return
        self.sampler.prepare(epoch)
        if self.progress:
            print(f"epoch {epoch + 1} batches: {self.sampler.source(epoch)}")

    def epoch_batches(self, epoch: int, skip: int, remaining: int):
        return self.strategy.experimental_distribute_dataset(super().epoch_batches(epoch, skip, remaining))

    def step(self, batch) -> dict:
        return {"loss": self._step_fn(batch)}

    def non_finite(self, losses: dict, bad: list, where: str) -> str:
        return f"the loss became {float(losses['loss'])} {where}: lower --lr, or use --precision float32"

    def log_step(self, losses: dict, epoch: int, state: dict, bar) -> None:
        loss = float(losses["loss"])
        lr = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))
        if self.chief:
            with self._writer("train").as_default(step=state["global_step"]):
                tf.summary.scalar("loss", loss)
                tf.summary.scalar("learning_rate", lr)
        if bar is not None:
            bar.update(state["step"], [("loss", loss), ("lr", lr)])

    def train(self) -> dict:
        state = super().train()
        if self.keep_final and self.chief:  # the last epoch's model too (the only one when there is no validation)
            with replacing(os.path.join(self.model_dir, "final", "model.keras")) as tmp:
                self.encoder.save(tmp)
        return state

    def final_model_path(self) -> str:
        """The model a later stage uses: best/model.keras when validated, else the last epoch's model."""
        best = os.path.join(self.model_dir, "best", "model.keras")
        return best if os.path.isfile(best) else os.path.join(self.model_dir, "final", "model.keras")

    # --- validation -----------------------------------------------------------------------------
    def validate(self, epoch: int) -> dict:
        from cvm.evaluation.run import evaluate_encoder

        results = evaluate_encoder(self.encoder, self.val_pipeline, self.config.eval_batch_size,
                                   method=self.config.method, checkpoint=f"epoch {epoch}",
                                   out_dir=os.path.join(self.model_dir, "results", "validation")
                                   if self.chief else None,
                                   name=f"epoch{epoch:03d}", progress=False,
                                   orientation=self.config.orientation_protocol())
        metrics = dict(results["metrics"]["ground_to_aerial"])
        flat = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if self.chief:
            with self._writer("val").as_default(step=epoch):
                for key, value in flat.items():
                    tf.summary.scalar(key, value)
                grid = results.get("grid_png")
                if grid and os.path.isfile(grid):
                    image = tf.io.decode_png(tf.io.read_file(grid), channels=3)
                    tf.summary.image("retrieval_grid", image[None], step=epoch)
            if self.progress:
                shown = ", ".join(f"{k} {100 * v:.2f}%" for k, v in flat.items() if k.startswith("r@"))
                print(f"validation after epoch {epoch}: {shown} (N = {results['n_queries']})")
        return flat


def train(config: TrainConfig, strategy=None, progress: bool = True) -> dict:
    """Train (or resume) the run described by `config`; returns the final loop state."""
    return Run(config, strategy=strategy, progress=progress).train()

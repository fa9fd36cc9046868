"""The retrieval training loop: epochs of compiled steps, checkpoints, resumption, validation.

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

import json
import os
import signal
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from cvm import faultinject
from cvm.data import holdout, load_split
from cvm.data.pipeline import Pipeline, no_steps_error, require_usable
from cvm.errors import CvmError
from cvm.training.checkpoints import CheckpointManager, check_finite, write_error
from cvm.training.config import TrainConfig
from cvm.training.distribute import is_chief, make_strategy
from cvm.training.optimizers import FusedAdam
from cvm.training.retrieval import RetrievalTrainer


def build_encoder(config: TrainConfig):
    """The retrieval model of `config` (weights random or as --weights says)."""
    from cvm.models import build_model, builder_options

    # The options the method's model takes (the CLI refuses a model flag it does not take:
    # TrainConfig.unused_fields); models whose weights depend on the input size are built for it.
    options = config.model_kwargs()
    spec = config.image_spec()
    accepted = builder_options(config.method)
    options.update({k: v for k, v in (("ground_size", spec.ground_size), ("aerial_size", spec.aerial_size))
                    if k in accepted})
    return build_model(config.method, **options)


def build_loss(config: TrainConfig):
    from cvm.losses import WeightedSoftMarginTripletLoss

    return WeightedSoftMarginTripletLoss(alpha=config.alpha, include_diagonal=config.include_diagonal,
                                         mask_radius_m=config.mask_radius_m, mask_mode=config.mask_mode)


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


class Run:
    """One training run in a model_dir; `Run(config).train()` trains or resumes it."""

    jit_compile: Optional[bool] = None  # the step train() runs: XLA or not (config's, or measured: jit_choice)

    def __init__(self, config: TrainConfig, strategy: Optional[tf.distribute.Strategy] = None,
                 progress: bool = True):
        self._open_model_dir(config, strategy, progress)
        with self.strategy.scope():
            self.encoder = build_encoder(config)  # registered models create their variables when built
            self.trainer = RetrievalTrainer(self.encoder, build_loss(config), image_spec=config.image_spec())
            self.trainer.compile(optimizer=FusedAdam(config.lr), jit_compile=False)
            self.optimizer = self.trainer.optimizer
            self.optimizer.build(self.encoder.trainable_variables)
        self.checkpoints = CheckpointManager(os.path.join(self.model_dir, "checkpoints"), config.keep_checkpoints)

        self.train_split, self.val_split = load_splits(config)
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
        self.steps_per_epoch = self.pipeline.steps_per_epoch(config.batch_size)
        if config.steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, int(config.steps_per_epoch))
        self._step_fn = self._make_step_fn()
        self._writers = {}

    # --- set-up helpers -------------------------------------------------------------------------
    def _open_model_dir(self, config: TrainConfig, strategy, progress: bool, extra: Optional[dict] = None) -> None:
        """What every trainer of a model_dir does first: validate, refuse a run with other settings, save
        config.json (and `extra` as <name>.json), set the precision policy and the seeds."""
        config.validate()
        self.config = config
        self.strategy = strategy or make_strategy(config.strategy)
        self.chief = is_chief(self.strategy)
        self.progress = progress and self.chief
        self.model_dir = config.model_dir
        os.makedirs(self.model_dir, exist_ok=True)
        self._check_previous_config()
        if self.chief:
            config.save(self.model_dir)
            for name, values in (extra or {}).items():
                with open(os.path.join(self.model_dir, f"{name}.json"), "w") as f:
                    json.dump(values, f, indent=1)
        set_precision(config.precision)
        keras.utils.set_random_seed(config.seed)
        if config.deterministic:
            tf.config.experimental.enable_op_determinism()
        replicas = self.strategy.num_replicas_in_sync
        if config.batch_size % replicas:
            raise CvmError(f"--batch_size {config.batch_size} must be divisible by the {replicas} replicas")

    def _check_data(self) -> None:
        """Fail now, naming the split and the first absent files, if the training split has too few
        complete samples for one batch or the validation split has none (cvm.data.pipeline.require_usable)."""
        require_usable(self.pipeline, min(self.config.batch_size, len(self.train_split)), "training")
        if self.val_pipeline is not None:
            require_usable(self.val_pipeline, 1, "validation")

    def _check_previous_config(self) -> None:
        path = os.path.join(self.model_dir, "config.json")
        if not os.path.isfile(path):
            return
        previous = TrainConfig.load(self.model_dir)
        ignore = {"epochs", "checkpoint_every_steps", "keep_checkpoints", "eval_every_epochs", "eval_batch_size",
                  "strategy", "jit_compile", "cache", "root", "model_dir", "kill_after_steps", "deterministic"}
        changed = [f"{k}: {getattr(previous, k)!r} -> {getattr(self.config, k)!r}"
                   for k in vars(self.config) if k not in ignore and getattr(previous, k) != getattr(self.config, k)]
        if changed and CheckpointManager(os.path.join(self.model_dir, "checkpoints")).latest():
            raise CvmError(f"{self.model_dir} holds a run with other settings ({'; '.join(changed)}); "
                           "use a new --model_dir, or the same flags to resume it (its flags.cfg)")

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

    def _writer(self, name: str):
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(os.path.join(self.model_dir, "tensorboard", name))
        return self._writers[name]

    # --- state ----------------------------------------------------------------------------------
    def restore_latest(self) -> dict:
        state = {"epoch": 0, "step": 0, "global_step": 0, "best": None, "history": []}
        # The newest checkpoint that reads and matches; a damaged one is skipped, saying so.
        latest, restored = self.checkpoints.restore_newest(self.encoder, self.optimizer)
        if latest:
            state.update(restored)
            logging.info("resumed from %s (epoch %d, step %d)", latest, state["epoch"], state["step"])
            if self.progress:
                print(f"resuming {self.model_dir} at epoch {state['epoch'] + 1}, step {state['step']} "
                      f"({os.path.basename(latest)})")
        return state

    def save(self, state: dict) -> None:
        if self.chief:
            self.checkpoints.save(state, self.encoder, self.optimizer)

    # --- the loop -------------------------------------------------------------------------------
    def train(self) -> dict:
        config = self.config
        state = self.restore_latest()
        if state["epoch"] >= config.epochs:
            if self.progress:
                print(f"{self.model_dir} has finished its {config.epochs} epochs; nothing to do")
            return state
        if self._step_fn is None:  # --jit_compile unset: measured on this machine (or read back on resume)
            self._resolve_jit_compile(state["epoch"])
        elif config.jit_compile is not None:
            self.jit_compile = config.jit_compile
        for epoch in range(state["epoch"], config.epochs):
            skip = state["step"] if epoch == state["epoch"] else 0
            self._train_epoch(epoch, skip, state)
            state.update(epoch=epoch + 1, step=0)
            if self.val_pipeline is not None and ((epoch + 1) % config.eval_every_epochs == 0
                                                  or epoch + 1 == config.epochs):
                metrics = self.validate(epoch + 1)
                state["history"].append({"epoch": epoch + 1, **metrics})
                score = metrics.get(config.best_metric)
                if score is not None and (state["best"] is None or score > state["best"]["score"]):
                    state["best"] = {"epoch": epoch + 1, "metric": config.best_metric, "score": score}
                    self.save_best(metrics, epoch + 1)
            self.save(state)
        if self.progress:
            print(f"done: {config.epochs} epochs in {self.model_dir}")
        return state

    def _train_epoch(self, epoch: int, skip: int, state: dict) -> None:
        config = self.config
        remaining = self.steps_per_epoch - skip
        if remaining <= 0:
            return
        ds = self.pipeline.train(config.batch_size, start_epoch=epoch, epochs=epoch + 1, skip_batches=skip)
        ds = self.strategy.experimental_distribute_dataset(ds.take(remaining))
        bar = keras.utils.Progbar(self.steps_per_epoch, stateful_metrics=["loss", "lr"]) if self.progress else None
        if bar is not None:
            print(f"epoch {epoch + 1}/{config.epochs}")
            if skip:
                bar.update(skip)
        start, done = time.perf_counter(), 0
        lr = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))
        every = max(1, int(config.log_every_steps))
        pending = []  # (step, loss) since the last log point: a non-finite loss is named at its own step
        for batch in ds:
            if faultinject.nan_due(state["global_step"]):  # testing aid (CVM_NAN_AT_STEP)
                faultinject.poison(self.encoder.trainable_variables[0])
            faultinject.enter_step(state, self.model_dir)
            loss = self._step_fn(batch)  # stays on the device between log points
            state["step"] += 1
            state["global_step"] += 1
            done += 1
            pending.append((state["step"], loss))
            saving = bool(config.checkpoint_every_steps) and state["global_step"] % config.checkpoint_every_steps == 0
            if state["step"] % every == 0 or state["step"] == self.steps_per_epoch or saving:
                self._check_losses(pending, epoch)
                pending = []
                self._log(float(loss), lr, epoch, state, bar)
            if saving:
                self.save(state)
            if config.kill_after_steps and state["global_step"] >= config.kill_after_steps:
                os.kill(os.getpid(), signal.SIGKILL)  # simulate `kill -9` (tests of resumption)
        self._check_losses(pending, epoch)  # an epoch cut short by skipped samples: before validation
        if not done and not skip:  # every sample was dropped: never report an epoch of no step as done
            raise no_steps_error(self.pipeline.split, getattr(self.pipeline, "faults", None), epoch + 1)
        if self.chief and done:
            with self._writer("train").as_default(step=state["global_step"]):
                tf.summary.scalar("pairs_per_second", done * config.batch_size / (time.perf_counter() - start))

    def _check_losses(self, pending: list, epoch: int) -> None:
        """CvmError at the first non-finite loss of `pending` [(step in epoch, loss tensor)], naming its step."""
        for step, loss in pending:
            value = float(loss)
            if not np.isfinite(value):
                latest = self.checkpoints.latest()
                raise CvmError(f"the loss became {value} at epoch {epoch + 1}, step {step}: lower --lr, or use "
                               "--precision float32; nothing after that step was saved, the last checkpoint is "
                               f"{latest or 'none (none was written yet)'}")

    def _log(self, loss: float, lr: float, epoch: int, state: dict, bar) -> None:
        if not np.isfinite(loss):
            raise CvmError(f"the loss became {loss} at epoch {epoch + 1}, step {state['step']}: lower --lr, "
                           "or use --precision float32; the last checkpoint is in "
                           f"{self.checkpoints.directory}")
        if self.chief:
            with self._writer("train").as_default(step=state["global_step"]):
                tf.summary.scalar("loss", loss)
                tf.summary.scalar("learning_rate", lr)
        if bar is not None:
            bar.update(state["step"], [("loss", loss), ("lr", lr)])

    # --- validation -----------------------------------------------------------------------------
    def validate(self, epoch: int) -> dict:
        from cvm.evaluation.run import evaluate_encoder

        results = evaluate_encoder(self.encoder, self.val_pipeline, self.config.eval_batch_size,
                                   method=self.config.method, checkpoint=f"epoch {epoch}",
                                   out_dir=os.path.join(self.model_dir, "results", "validation")
                                   if self.chief else None,
                                   name=f"epoch{epoch:03d}", progress=False)
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

    def save_best(self, metrics: dict, epoch: int) -> None:
        if not self.chief:
            return
        best_dir = os.path.join(self.model_dir, "best")
        check_finite([(v.path, np.asarray(v.numpy())) for v in self.encoder.variables],
                     f"{best_dir} not updated after epoch {epoch}")
        tmp = os.path.join(best_dir, "model.tmp.keras")
        try:
            os.makedirs(best_dir, exist_ok=True)
            self.encoder.save(tmp)
            faultinject.kill_point("best.model")
            os.replace(tmp, os.path.join(best_dir, "model.keras"))
            faultinject.kill_point("best.metrics")
            write_json_atomic(os.path.join(best_dir, "metrics.json"), {"epoch": epoch, **metrics})
        except OSError as exc:
            raise write_error(os.path.join(best_dir, "model.keras"), exc, self.checkpoints.latest()) from None


def write_json_atomic(path: str, values: dict) -> None:
    """json.dump to a temporary name, then rename: a killed run never leaves half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(values, f, indent=1)
    os.replace(tmp, path)


def train(config: TrainConfig, strategy=None, progress: bool = True) -> dict:
    """Train (or resume) the run described by `config`; returns the final loop state."""
    return Run(config, strategy=strategy, progress=progress).train()

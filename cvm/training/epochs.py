"""The epoch loop every trainer of a model_dir runs: resume, epochs of steps, checkpoints, validation, best/.

`EpochRun` is the shared shell; a trainer says what one step is and how a model is judged:

  step(batch) -> {name: loss}    one update (the retrieval step, the GAN's D and G steps)
  validate(epoch) -> metrics     after each validated epoch; `best_metric` of it selects best/
  checkpointed() -> (models, optimizers)   what a checkpoint holds
  best_models() -> {file name: keras model}   what best/ holds
  poison_target(), log_step(), non_finite()   the testing aid's variable, what is logged, the NaN message
and optionally epoch_batches / after_step / before_training / before_epoch. `cvm.training.loop.Run` (retrieval, and
through it JointRun and FusionRun) and `cvm.training.gan.SynthesisRun` are its subclasses.

The loop's contract (design.md's model_dir): a checkpoint at the end of every epoch and every
--checkpoint_every_steps global steps holds every variable and the position (epoch, step in epoch,
global step, best, history); the data order of an epoch is a pure function of (seed, epoch), so a resume
skips the batches already seen and gives the same weights as an uninterrupted run. A non-finite loss
stops the run at the step it happened with nothing saved after it; an epoch in which every sample was
dropped is an error, never an epoch done. The fault-injection points (cvm.faultinject) sit where the
soak tests kill: inside a step, in best/ between the model's write and its rename, and before
best/metrics.json.
"""

from __future__ import annotations

import abc
import os
import signal
import time
from typing import Iterable, Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from cvm import faultinject
from cvm.atomic import replacing, write_json
from cvm.data.pipeline import no_steps_error
from cvm.errors import CvmError
from cvm.training.checkpoints import CheckpointManager, check_finite, write_error


class EpochRun(abc.ABC):
    """One training run in a model_dir; `train()` trains it or resumes it from its newest good checkpoint.

    A subclass's __init__ calls `_prepare_model_dir` first (config, checkpoints, seeds), then sets
    `pipeline` (an EpochPipeline), `val_pipeline` (or None) and `steps_per_epoch` (`_count_steps`),
    and implements the hooks of the module docstring.
    """

    # Config fields a resume may change; any other difference from the saved config.json is refused once
    # a checkpoint exists.
    RESUMABLE_FIELDS: frozenset = frozenset()
    # Metrics shown on the progress bar as they are (not averaged).
    PROGRESS_METRICS: tuple = ("loss",)
    higher_is_better = True  # of best_metric
    chief = True  # this process writes the model_dir (a multi-worker run's other workers do not)

    # --- set-up ---------------------------------------------------------------------------------
    def _prepare_model_dir(self, config, progress: bool, chief: bool = True, extra: Optional[dict] = None) -> None:
        """What every trainer does first (config already validated): refuse a run with other settings, save
        config.json (and `extra` as <name>.json), set the precision policy and the seeds; self.checkpoints."""
        self.config = config
        self.chief = chief
        self.progress = progress and chief
        self.model_dir = config.model_dir
        self._writers = {}
        self.checkpoints = CheckpointManager(os.path.join(self.model_dir, "checkpoints"), config.keep_checkpoints)
        os.makedirs(self.model_dir, exist_ok=True)
        self._check_previous_config()
        if chief:
            config.save(self.model_dir)
            for name, values in (extra or {}).items():
                write_json(os.path.join(self.model_dir, f"{name}.json"), values)
        keras.mixed_precision.set_global_policy(config.precision)
        keras.utils.set_random_seed(config.seed)
        if config.deterministic:
            tf.config.experimental.enable_op_determinism()

    def previous_config(self):
        """The config saved in model_dir/config.json, or None when it is a run of another kind."""
        return type(self.config).load(self.model_dir)

    def _check_previous_config(self) -> None:
        if not os.path.isfile(os.path.join(self.model_dir, "config.json")):
            return
        previous = self.previous_config()

        def has_checkpoint():
            return CheckpointManager(os.path.join(self.model_dir, "checkpoints")).latest()

        if previous is None:
            if has_checkpoint():
                raise CvmError(f"{self.model_dir} holds a run of another kind; use a new --model_dir")
            return
        changed = [f"{k}: {getattr(previous, k)!r} -> {getattr(self.config, k)!r}" for k in vars(self.config)
                   if k not in self.RESUMABLE_FIELDS and getattr(previous, k) != getattr(self.config, k)]
        if changed and has_checkpoint():
            raise CvmError(f"{self.model_dir} holds a run with other settings ({'; '.join(changed)}); "
                           "use a new --model_dir, or the same flags to resume it (its flags.cfg)")

    def _count_steps(self) -> int:
        """Full batches of the training pipeline per epoch, at most --steps_per_epoch."""
        steps = self.pipeline.steps_per_epoch(self.config.batch_size)
        if self.config.steps_per_epoch:
            steps = min(steps, int(self.config.steps_per_epoch))
        self.steps_per_epoch = steps
        return steps

    def _writer(self, name: str):
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(os.path.join(self.model_dir, "tensorboard", name))
        return self._writers[name]

    # --- hooks ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def checkpointed(self) -> tuple:
        """(models, optimizers): what a checkpoint saves and a resume restores (objects with .variables)."""

    @abc.abstractmethod
    def step(self, batch) -> dict:
        """One training step on one batch of `epoch_batches`: {name: scalar loss tensor}."""

    @abc.abstractmethod
    def poison_target(self):
        """The variable CVM_NAN_AT_STEP sets to NaN (cvm.faultinject)."""

    @abc.abstractmethod
    def non_finite(self, losses: dict, bad: list, where: str) -> str:
        """The first clause of the error for a non-finite loss `where` ("at epoch E, step S")."""

    @abc.abstractmethod
    def log_step(self, losses: dict, epoch: int, state: dict, bar) -> None:
        """Write the losses of a log point (all finite) to TensorBoard and the progress bar."""

    @abc.abstractmethod
    def validate(self, epoch: int) -> dict:
        """Validate after `epoch`: {metric: value}, best_metric among them."""

    @abc.abstractmethod
    def best_models(self) -> dict:
        """{file name under best/: keras model} saved when validation improves best_metric."""

    @property
    @abc.abstractmethod
    def best_metric(self) -> str:
        """The validation metric whose improvement saves best/."""

    @property
    def eval_every_epochs(self) -> int:
        return 1

    def before_training(self, state: dict) -> None:
        """Runs once before the first epoch of train() that has work to do (after its before_epoch)."""

    def before_epoch(self, epoch: int) -> None:
        """Runs before the batches of epoch `epoch` are asked for (a resumed epoch too): e.g. a batch sampler's
        neighbour table."""

    def epoch_batches(self, epoch: int, skip: int, remaining: int) -> Iterable:
        """The batches of epoch `epoch` after the first `skip`: `remaining` of them."""
        ds = self.pipeline.train(self.config.batch_size, start_epoch=epoch, epochs=epoch + 1, skip_batches=skip)
        return ds.take(remaining)

    def after_step(self, batch, state: dict) -> None:
        """Runs after every step (before a checkpoint falls due)."""

    # --- state ----------------------------------------------------------------------------------
    def restore_latest(self) -> dict:
        state = {"epoch": 0, "step": 0, "global_step": 0, "best": None, "history": []}
        # The newest checkpoint that reads and matches; a damaged one is skipped, saying so.
        latest, restored = self.checkpoints.restore_newest(*self.checkpointed())
        if latest:
            state.update(restored)
            logging.info("resumed from %s (epoch %d, step %d)", latest, state["epoch"], state["step"])
            if self.progress:
                print(f"resuming {self.model_dir} at epoch {state['epoch'] + 1}, step {state['step']} "
                      f"({os.path.basename(latest)})")
        return state

    def save(self, state: dict) -> None:
        if self.chief:
            self.checkpoints.save(state, *self.checkpointed())

    def save_best(self, metrics: dict, epoch: int) -> None:
        """best/<file> for each of best_models() and best/metrics.json, each replaced atomically."""
        if not self.chief:
            return
        best_dir = os.path.join(self.model_dir, "best")
        models = self.best_models()
        check_finite([(v.path, np.asarray(v.numpy())) for model in models.values() for v in model.variables],
                     f"{best_dir} not updated after epoch {epoch}")
        target = best_dir
        try:
            for name, model in models.items():
                target = os.path.join(best_dir, name)
                with replacing(target, after_write=lambda: faultinject.kill_point("best.model")) as tmp:
                    model.save(tmp)
            faultinject.kill_point("best.metrics")
            target = os.path.join(best_dir, "metrics.json")
            write_json(target, {"epoch": epoch, **metrics})
        except OSError as exc:
            raise write_error(target, exc, self.checkpoints.latest()) from None

    def _keep_best(self, metrics: dict, epoch: int, state: dict) -> None:
        score = metrics.get(self.best_metric)
        if score is None:
            return
        best = state["best"]
        better = best is None or (score > best["score"] if self.higher_is_better else score < best["score"])
        if better:
            state["best"] = {"epoch": epoch, "metric": self.best_metric, "score": score}
            self.save_best(metrics, epoch)

    # --- the loop -------------------------------------------------------------------------------
    def train(self) -> dict:
        config = self.config
        state = self.restore_latest()
        if state["epoch"] >= config.epochs:
            if self.progress:
                print(f"{self.model_dir} has finished its {config.epochs} epochs; nothing to do")
            return state
        first = state["epoch"]
        self.before_epoch(first)
        self.before_training(state)
        for epoch in range(first, config.epochs):
            if epoch != first:
                self.before_epoch(epoch)
            skip = state["step"] if epoch == first else 0
            self.train_epoch(epoch, skip, state)
            state.update(epoch=epoch + 1, step=0)
            if self.val_pipeline is not None and ((epoch + 1) % self.eval_every_epochs == 0
                                                  or epoch + 1 == config.epochs):
                metrics = self.validate(epoch + 1)
                state["history"].append({"epoch": epoch + 1, **metrics})
                self._keep_best(metrics, epoch + 1, state)
            self.save(state)
        if self.progress:
            print(f"done: {config.epochs} epochs in {self.model_dir}")
        return state

    def train_epoch(self, epoch: int, skip: int, state: dict) -> None:
        config = self.config
        remaining = self.steps_per_epoch - skip
        if remaining <= 0:
            return
        batches = self.epoch_batches(epoch, skip, remaining)
        bar = keras.utils.Progbar(self.steps_per_epoch, stateful_metrics=list(self.PROGRESS_METRICS)) \
            if self.progress else None
        if bar is not None:
            print(f"epoch {epoch + 1}/{config.epochs}")
            if skip:
                bar.update(skip)
        start, done = time.perf_counter(), 0
        every = max(1, int(config.log_every_steps))
        pending = []  # (step, losses) since the last log point: a non-finite loss is named at its own step
        for batch in batches:
            if faultinject.nan_due(state["global_step"]):  # testing aid (CVM_NAN_AT_STEP)
                faultinject.poison(self.poison_target())
            faultinject.enter_step(state, self.model_dir)
            losses = self.step(batch)  # stays on the device between log points
            state["step"] += 1
            state["global_step"] += 1
            done += 1
            pending.append((state["step"], losses))
            saving = bool(config.checkpoint_every_steps) and state["global_step"] % config.checkpoint_every_steps == 0
            if state["step"] % every == 0 or state["step"] == self.steps_per_epoch or saving:
                self._check_losses(pending, epoch)
                pending = []
                self.log_step(losses, epoch, state, bar)
            self.after_step(batch, state)
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
        """CvmError at the first step of `pending` [(step in epoch, losses)] with a non-finite loss, naming it."""
        for step, losses in pending:
            bad = [k for k, v in losses.items() if not np.isfinite(float(v))]
            if bad:
                latest = self.checkpoints.latest()
                raise CvmError(f"{self.non_finite(losses, bad, f'at epoch {epoch + 1}, step {step}')}; nothing after "
                               f"that step was saved, the last checkpoint is {latest or 'none (none was written yet)'}")

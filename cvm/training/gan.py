"""The GAN trainer of the cross-view synthesis models (X-Fork, X-Seq, X-Pix2pix, the ICCV19 CVUSA fork).

One training step per batch, in the order of the Torch scripts (seeds.md §3.1, §4):

* X-Fork / X-Pix2pix / CVUSA fork: G forward (training mode, once); D step on real and detached fake
  (BCE(real, 0.9) + BCE(fake, 0), un-halved); G step with the *updated* D on the same fake:
  BCE(D(fake), 0.9) + lambda_l1 * L1(image) [+ lambda_seg * L1(segmentation)]. The segmentation head
  gets only its L1 gradient (the D judges the image head alone). (train_pix2pix.lua took the GAN
  term's value from the D step's fake pass, i.e. D before its update, while back-propagating through
  the updated D; here X-Pix2pix re-runs the updated D as train_fork.lua does: one consistent gradient.)
* X-Seq: G1 forward (A -> fake B), G2 forward (fake B -> fake Bs); D2 step on (fake B, Bs) vs
  (fake B, fake Bs); G2 step (GAN2 + lambda_seg * L1(Bs)); D1 step; G1 step whose gradient adds
  lambda_grads * dLoss_G2 / d fake B (the gradient G2's loss sends back to its input, computed with G2
  before its update, `grads_seq` of train_seq.lua).

Conditional discriminators see concat(input, image) along channels; the unconditional ICCV19 D sees
the image only. Adam (lr 2e-4, beta1 0.5, epsilon 1e-8 as Torch's optim.adam) per network; under
mixed_float16 each optimizer is a LossScaleOptimizer; the losses stay float32.

`SynthesisRun(config).train()` trains or resumes a model_dir exactly like the retrieval `Run`: the
config (config.json, flags.cfg), checkpoints/ (every network, every optimizer, the loop position;
resumption skips the batches already seen and gives identical weights), tensorboard/ (losses, and
input / generated / target / segmentation images every --image_every_steps), best/ (lowest
validation L1 when a --val_split is given), faults.txt.
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

from cvm.data.outputs import output_path
from cvm.data.pipeline import describe_split, first_reasons, no_steps_error, require_usable
from cvm import faultinject
from cvm.errors import CvmError
from cvm.losses.gan import discriminator_loss, generator_gan_loss, l1_loss
from cvm.training.checkpoints import CheckpointManager, check_finite, write_error
from cvm.training.synthesis_config import SynthesisConfig


class VariableGroup:
    """Several models (or optimizers) seen as one `.variables` list, in a fixed order, for CheckpointManager."""

    def __init__(self, items):
        self.items = list(items)

    @property
    def variables(self):
        return [v for item in self.items for v in item.variables]


def make_optimizer(lr: float, beta1: float, precision: str):
    optimizer = keras.optimizers.Adam(lr, beta_1=beta1, beta_2=0.999, epsilon=1e-8)
    if precision == "mixed_float16":  # float16 gradients underflow without loss scaling
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _unscale(optimizer, gradient):
    """A gradient of `optimizer.scale_loss(loss)` back in the loss' own scale."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return gradient / tf.cast(optimizer.dynamic_scale, gradient.dtype)
    return gradient


class GANSteps:
    """The per-batch update of one synthesis method (see the module docstring).

    Args:
      method: a synthesis method (`cvm.models.synthesis.SYNTHESIS_METHODS`).
      networks: `build_synthesis_networks(...)` output.
      lambda_l1: weight of the image L1 (100).
      lambda_seg: weight of the segmentation L1 (X-Fork 100, ICCV19 pano->aerial 1, aerial->pano 10;
        X-Seq: G2's L1).
      lambda_grads: X-Seq weight of G2's input gradient fed into G1 (0.1).
      real_label: the BCE target of real samples (0.9: one-sided label smoothing).
      lr, beta1, precision: Adam settings and the Keras dtype policy name.
      optimizer_factory: optional `() -> keras optimizer` used instead of Adam for every network.

    Example:
      steps = GANSteps("xfork", build_synthesis_networks("xfork", (64, 64), (64, 64), ngf=8, ndf=8))
      losses = steps.step({"input": x, "target": y, "target_seg": s})   # float32 scalars
    """

    def __init__(self, method: str, networks: dict, lambda_l1: float = 100.0, lambda_seg: float = 100.0,
                 lambda_grads: float = 0.1, real_label: float = 0.9, lr: float = 2e-4, beta1: float = 0.5,
                 precision: str = "float32", jit_compile: bool = False, optimizer_factory=None):
        self.method = method
        self.spec = networks["spec"]
        self.generators = networks["generators"]
        self.discriminators = networks["discriminators"]
        self.lambda_l1 = float(lambda_l1)
        self.lambda_seg = float(lambda_seg)
        self.lambda_grads = float(lambda_grads)
        self.real_label = float(real_label)
        self.optimizers = {}
        for role, net in list(self.discriminators.items()) + list(self.generators.items()):
            optimizer = optimizer_factory() if optimizer_factory else make_optimizer(lr, beta1, precision)
            optimizer.build(net.trainable_variables)
            self.optimizers[role] = optimizer
        self.models = VariableGroup(list(self.generators.values()) + list(self.discriminators.values()))
        self.optimizer_group = VariableGroup([self.optimizers[r] for r in sorted(self.optimizers)])
        body = self._seq_step if self.spec.get("sequential") else self._fork_step
        self.step = tf.function(body, jit_compile=jit_compile, reduce_retracing=True)

    @property
    def generator(self):
        """The network whose image head is the synthesized view (g, or X-Seq's g1)."""
        return self.generators.get("g") or self.generators["g1"]

    def _judged(self, condition, image):
        """What the D sees: concat(condition, image) (conditional) or the image alone."""
        if not self.spec["conditional"]:
            return image
        return tf.concat([tf.cast(condition, image.dtype), image], axis=-1)

    def _update_discriminator(self, role, real, generated):
        d, optimizer = self.discriminators[role], self.optimizers[role]
        with tf.GradientTape() as tape:
            loss = discriminator_loss(d(real, training=True), d(generated, training=True), self.real_label, 0.0)
            scaled = optimizer.scale_loss(loss)
        optimizer.apply(tape.gradient(scaled, d.trainable_variables), d.trainable_variables)
        return loss

    def _fork_step(self, images):
        x, y, y_seg = images["input"], images["target"], images["target_seg"]
        g, d, optimizer = self.generators["g"], self.discriminators["d"], self.optimizers["g"]
        out = {}
        with tf.GradientTape() as tape:
            generated = g(x, training=True)  # once per batch, as createRealFake()
            image = generated["image"]
            with tape.stop_recording():
                out["d_loss"] = self._update_discriminator("d", self._judged(x, y),
                                                           self._judged(x, tf.stop_gradient(image)))
            out["g_gan"] = generator_gan_loss(d(self._judged(x, image), training=True), self.real_label)
            out["l1"] = l1_loss(image, y)
            loss = out["g_gan"] + self.lambda_l1 * out["l1"]
            if "segmentation" in generated:
                out["l1_seg"] = l1_loss(generated["segmentation"], y_seg)
                loss = loss + self.lambda_seg * out["l1_seg"]
            out["g_loss"] = loss
            scaled = optimizer.scale_loss(loss)
        optimizer.apply(tape.gradient(scaled, g.trainable_variables), g.trainable_variables)
        return out

    def _seq_step(self, images):
        x, y, y_seg = images["input"], images["target"], images["target_seg"]
        g1, g2 = self.generators["g1"], self.generators["g2"]
        d1, d2 = self.discriminators["d1"], self.discriminators["d2"]
        opt_g1, opt_g2 = self.optimizers["g1"], self.optimizers["g2"]
        out = {}
        tape1 = tf.GradientTape()
        with tape1:
            gen_b = g1(x, training=True)["image"]
        gen_b_in = tf.stop_gradient(gen_b)
        tape2 = tf.GradientTape()
        with tape2:
            tape2.watch(gen_b_in)
            gen_bs = g2(gen_b_in, training=True)["segmentation"]
        # (1) D2: "real" is (generated B, real Bs), fake is (generated B, generated Bs), as train_seq.lua.
        out["d2_loss"] = self._update_discriminator("d2", tf.concat([gen_b_in, y_seg], -1),
                                                    tf.concat([gen_b_in, tf.stop_gradient(gen_bs)], -1))
        # (2) G2 with the updated D2; D2's condition channels send no gradient (narrow() in the Lua).
        with tape2:
            logits = d2(tf.concat([tf.cast(tf.stop_gradient(gen_b_in), gen_bs.dtype), gen_bs], -1), training=True)
            out["g2_gan"] = generator_gan_loss(logits, self.real_label)
            out["l1_seg"] = l1_loss(gen_bs, y_seg)
            loss2 = out["g2_gan"] + self.lambda_seg * out["l1_seg"]
            scaled2 = opt_g2.scale_loss(loss2)
        grads = tape2.gradient(scaled2, g2.trainable_variables + [gen_b_in])
        grads_seq = _unscale(opt_g2, grads[-1])  # d loss2 / d fake B, before G2's update
        opt_g2.apply(grads[:-1], g2.trainable_variables)
        # (3) D1 on (A, B) vs (A, fake B).
        out["d_loss"] = self._update_discriminator("d1", self._judged(x, y), self._judged(x, gen_b_in))
        # (4) G1: GAN + lambda * L1 + lambda_grads * grads_seq (added to dLoss/d fake B).
        with tape1:
            out["g_gan"] = generator_gan_loss(d1(self._judged(x, gen_b), training=True), self.real_label)
            out["l1"] = l1_loss(gen_b, y)
            out["g_loss"] = out["g_gan"] + self.lambda_l1 * out["l1"]
            feedback = tf.reduce_sum(tf.stop_gradient(grads_seq) * tf.cast(gen_b, tf.float32))
            scaled1 = opt_g1.scale_loss(out["g_loss"] + self.lambda_grads * feedback)
        opt_g1.apply(tape1.gradient(scaled1, g1.trainable_variables), g1.trainable_variables)
        return out

    def generate(self, inputs, training=False):
        """{"image": ..., "segmentation": ...} of one batch (X-Seq: G2 applied to G1's image); training=True
        runs the layers as in training (and updates the BN moving statistics: see
        cvm.models.synthesis.generation.Generation, which does not)."""
        from cvm.models.synthesis.generation import generate

        return generate(self.generators, inputs, inference_mode=not training)


def build_steps(config: SynthesisConfig) -> GANSteps:
    """Networks and optimizers of a resolved config (the global dtype policy must be set first)."""
    from cvm.models.synthesis import build_synthesis_networks

    spec = config.data_spec()
    networks = build_synthesis_networks(config.method, input_size=spec.input_size, target_size=spec.target_size,
                                        input_channels=spec.input_channels, ngf=config.ngf, ndf=config.ndf,
                                        n_layers=config.d_layers, dropout=config.dropout, edge_bias=config.edge_bias,
                                        fork_relu=True if config.fix_fork_relu else None)
    return GANSteps(config.method, networks, lambda_l1=config.lambda_l1, lambda_seg=config.lambda_seg,
                    lambda_grads=config.lambda_grads, real_label=config.label_smoothing, lr=config.lr,
                    beta1=config.beta1, precision=config.precision, jit_compile=config.jit_compile)


def _render_options(config: SynthesisConfig, dataset: str) -> dict:
    """The synthetic world renders at twice the model's sizes (not its 128x512 / 256 defaults): small
    test models then spend their time training, not rendering pixels they scale away."""
    if dataset != "synthetic":
        return {}
    spec = config.data_spec()
    ground, aerial = (spec.target_size, spec.input_size) if config.direction == "a2g" else \
        (spec.input_size, spec.target_size)
    height = min(128, 2 * ground[0])
    return {"ground_size": (height, 4 * height), "aerial_size": min(256, 2 * max(aerial))}


def load_split(config: SynthesisConfig, split: str, segmaps: bool = True, dataset: Optional[str] = None,
               root: Optional[str] = None, split_file: Optional[str] = None):
    """The synthesis split `split` of the run's dataset (or of `dataset` / `root`), in the run's direction.

    segmaps: read the target segmentation maps (only methods with a segmentation output do). CVUSA:
    training (segmaps) reads the run's --split_file / --aerial_seg_dir; generation (no segmaps) reads
    `split_file` if given, else the official CSVs, as test_xfork_pano2aerial.lua does.
    """
    from cvm.data.synthesis import WITHOUT_SEGMAPS, load_synthesis_split

    dataset = dataset or config.dataset
    training = segmaps  # a training / validation read (generation asks for no maps)
    segmaps = segmaps and dataset not in WITHOUT_SEGMAPS and config.uses_segmaps()
    root = root or (config.root if dataset == config.dataset else None)
    options = _render_options(config, dataset)
    if dataset == "cvusa":
        if training and dataset == config.dataset:
            split_file = split_file or config.split_file
            if segmaps and config.direction == "g2a":
                options["aerial_seg_dir"] = config.aerial_seg_dir
        options["split_file"] = split_file
    return load_synthesis_split(dataset, split, root, config.direction, synthetic_pairs=config.synthetic_pairs,
                                synthetic_seed=config.synthetic_seed, segmaps=segmaps, **options)


def to_display(images) -> tf.Tensor:
    """[-1, 1] BGR (first three channels) -> [0, 1] RGB for TensorBoard."""
    x = tf.cast(images[..., :3], tf.float32)
    return tf.clip_by_value((x[..., ::-1] + 1.0) / 2.0, 0.0, 1.0)


class SynthesisRun:
    """One GAN training run in a model_dir; `SynthesisRun(config).train()` trains or resumes it."""

    def __init__(self, config: SynthesisConfig, progress: bool = True):
        from cvm.data.synthesis import SynthesisPipeline

        config.validate()
        self.config = config = config.resolved()
        self.progress = progress
        self.model_dir = config.model_dir
        os.makedirs(self.model_dir, exist_ok=True)
        self._check_previous_config()
        config.save(self.model_dir)
        keras.mixed_precision.set_global_policy(config.precision)
        keras.utils.set_random_seed(config.seed)
        if config.deterministic:
            tf.config.experimental.enable_op_determinism()
        self.spec = config.data_spec()
        self.train_split = load_split(config, config.train_split)
        self.pipeline = SynthesisPipeline(self.train_split, self.spec, seed=config.seed,
                                          faults_path=os.path.join(self.model_dir, "faults.txt"))
        self.val_pipeline = None
        if config.val_split:
            self.val_pipeline = SynthesisPipeline(load_split(config, config.val_split), self.spec, seed=config.seed,
                                                  faults=self.pipeline.faults)
        self.steps_per_epoch = self.pipeline.steps_per_epoch(config.batch_size)
        if config.steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, int(config.steps_per_epoch))
        if self.steps_per_epoch < 1:
            raise CvmError(f"--batch_size {config.batch_size} is larger than the training split "
                           f"({len(self.train_split)} samples)")
        # A split with no complete sample (a wrong --root, maps that do not exist) fails now, by name.
        require_usable(self.pipeline, config.batch_size, "training")
        if self.val_pipeline is not None:
            require_usable(self.val_pipeline, 1, "validation")
        self.steps = build_steps(config)
        self._warn_one_value_batch_norms()
        self.checkpoints = CheckpointManager(os.path.join(self.model_dir, "checkpoints"), config.keep_checkpoints)
        self._writers = {}

    def _warn_one_value_batch_norms(self) -> None:
        """Batches of one through a 1x1 bottleneck (X-Fork's batch 1, train_fork.lua): say that G cannot learn."""
        from cvm.models.synthesis.generation import one_value_batch_norms

        single = one_value_batch_norms(self.steps.generators, self.config.batch_size)
        if not single:
            return
        role, name = single[0]
        message = (f"warning: --batch_size 1 through a 1x1 bottleneck: BatchNorm {role}/{name} sees one value per channel, "
                   "outputs its beta (0, and the ReLU after it passes no gradient at 0), so every decoder layer sees "
                   "0 and the generator gets no gradient: its weights stay at their initial values (the same "
                   "arithmetic as the original's batch 1). Use --batch_size 2 or more for a generator that learns.")
        logging.warning(message)
        if self.progress:
            print(message)

    def _check_previous_config(self) -> None:
        path = os.path.join(self.model_dir, "config.json")
        if not os.path.isfile(path):
            return
        try:
            previous = SynthesisConfig.load(self.model_dir).resolved()
        except CvmError:
            previous = None
        has_checkpoint = CheckpointManager(os.path.join(self.model_dir, "checkpoints")).latest()
        if previous is None:
            if has_checkpoint:
                raise CvmError(f"{self.model_dir} holds a run of another kind; use a new --model_dir")
            return
        ignore = {"epochs", "checkpoint_every_steps", "keep_checkpoints", "log_every_steps", "image_every_steps",
                  "eval_batch_size", "strategy", "jit_compile", "root", "model_dir", "kill_after_steps",
                  "deterministic", "val_split", "inference_mode"}
        changed = [f"{k}: {getattr(previous, k)!r} -> {getattr(self.config, k)!r}"
                   for k in vars(self.config) if k not in ignore and getattr(previous, k) != getattr(self.config, k)]
        if changed and has_checkpoint:
            raise CvmError(f"{self.model_dir} holds a run with other settings ({'; '.join(changed)}); "
                           "use a new --model_dir, or the same flags to resume it (its flags.cfg)")

    def _writer(self, name: str):
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(os.path.join(self.model_dir, "tensorboard", name))
        return self._writers[name]

    def restore_latest(self) -> dict:
        state = {"epoch": 0, "step": 0, "global_step": 0, "best": None, "history": []}
        # The newest checkpoint that reads and matches; a damaged one is skipped, saying so.
        latest, restored = self.checkpoints.restore_newest(self.steps.models, self.steps.optimizer_group)
        if latest:
            state.update(restored)
            logging.info("resumed from %s (epoch %d, step %d)", latest, state["epoch"], state["step"])
            if self.progress:
                print(f"resuming {self.model_dir} at epoch {state['epoch'] + 1}, step {state['step']} "
                      f"({os.path.basename(latest)})")
        return state

    def save(self, state: dict) -> None:
        self.checkpoints.save(state, self.steps.models, self.steps.optimizer_group)

    def train(self) -> dict:
        config = self.config
        state = self.restore_latest()
        if state["epoch"] >= config.epochs:
            if self.progress:
                print(f"{self.model_dir} has finished its {config.epochs} epochs; nothing to do")
            return state
        for epoch in range(state["epoch"], config.epochs):
            skip = state["step"] if epoch == state["epoch"] else 0
            self._train_epoch(epoch, skip, state)
            state.update(epoch=epoch + 1, step=0)
            if self.val_pipeline is not None:
                metrics = self.validate(epoch + 1)
                state["history"].append({"epoch": epoch + 1, **metrics})
                if state["best"] is None or metrics["l1"] < state["best"]["score"]:
                    state["best"] = {"epoch": epoch + 1, "metric": "l1", "score": metrics["l1"]}
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
        bar = keras.utils.Progbar(self.steps_per_epoch, stateful_metrics=["d_loss", "g_loss", "l1"]) \
            if self.progress else None
        if bar is not None:
            print(f"epoch {epoch + 1}/{config.epochs}")
            if skip:
                bar.update(skip)
        start, done = time.perf_counter(), 0
        every = max(1, int(config.log_every_steps))
        pending = []  # (step, losses) since the last log point: a non-finite loss is named at its own step
        for images, _ in ds.take(remaining):
            if faultinject.nan_due(state["global_step"]):  # testing aid (CVM_NAN_AT_STEP)
                faultinject.poison(self.steps.generator.trainable_variables[0])
            faultinject.enter_step(state, self.model_dir)
            losses = self.steps.step(images)
            state["step"] += 1
            state["global_step"] += 1
            done += 1
            pending.append((state["step"], losses))
            saving = bool(config.checkpoint_every_steps) and state["global_step"] % config.checkpoint_every_steps == 0
            if state["step"] % every == 0 or state["step"] == self.steps_per_epoch or saving:
                self._check_losses(pending, epoch)
                pending = []
                self._log(losses, epoch, state, bar)
            if config.image_every_steps and state["global_step"] % config.image_every_steps == 0:
                self._log_images(images, state["global_step"])
            if saving:
                self.save(state)
            if config.kill_after_steps and state["global_step"] >= config.kill_after_steps:
                os.kill(os.getpid(), signal.SIGKILL)  # simulate `kill -9` (tests of resumption)
        self._check_losses(pending, epoch)  # an epoch cut short by skipped samples: before validation
        if not done and not skip:  # every sample was dropped: never report an epoch of no step as done
            raise no_steps_error(self.train_split, self.pipeline.faults, epoch + 1)
        if done:
            with self._writer("train").as_default(step=state["global_step"]):
                tf.summary.scalar("pairs_per_second", done * config.batch_size / (time.perf_counter() - start))

    def _check_losses(self, pending: list, epoch: int) -> None:
        """CvmError at the first step of `pending` [(step in epoch, losses)] with a non-finite loss, naming it."""
        for step, losses in pending:
            bad = [k for k, v in losses.items() if not np.isfinite(float(v))]
            if bad:
                latest = self.checkpoints.latest()
                raise CvmError(f"{', '.join(bad)} became non-finite at epoch {epoch + 1}, step {step}: lower --lr or "
                               "use --precision float32; nothing after that step was saved, the last checkpoint is "
                               f"{latest or 'none (none was written yet)'}")

    def _log(self, losses: dict, epoch: int, state: dict, bar) -> None:
        values = {k: float(v) for k, v in losses.items()}
        bad = [k for k, v in values.items() if not np.isfinite(v)]
        if bad:
            raise CvmError(f"{', '.join(bad)} became non-finite at epoch {epoch + 1}, step {state['step']}: lower "
                           f"--lr or use --precision float32; the last checkpoint is in {self.checkpoints.directory}")
        with self._writer("train").as_default(step=state["global_step"]):
            for key, value in values.items():
                tf.summary.scalar(key, value)
        if bar is not None:
            bar.update(state["step"], [(k, values[k]) for k in ("d_loss", "g_loss", "l1") if k in values])

    def _generation(self, batch_size: Optional[int] = None):
        """The run's test-time mode (--inference_mode; the original's by default) for its generators."""
        from cvm.models.synthesis.generation import Generation

        return Generation(self.steps.generators, self.config.inference_mode, batch_size)

    def _log_images(self, images: dict, step: int) -> None:
        """Input, generated (in the run's test-time mode), target and the segmentation maps of the current batch."""
        with self._generation() as generation:
            generated = generation(images["input"])
        shown = {"input": images["input"], "generated": generated["image"], "target": images["target"]}
        if "segmentation" in generated:
            shown["generated_segmentation"] = generated["segmentation"]
            shown["target_segmentation"] = images["target_seg"]
        with self._writer("train").as_default(step=step):
            for name, value in shown.items():
                tf.summary.image(name, to_display(value), max_outputs=4)

    def validate(self, epoch: int) -> dict:
        """Mean L1 of the generated image (and segmentation) on the validation split, generated in the run's
        test-time mode (--inference_mode: moving statistics; else the batch's, dropout on, as the CVPR 2018
        test scripts), leaving the moving statistics as training left them."""
        total, seg_total, count = 0.0, 0.0, 0
        with self._generation(self.config.eval_batch_size) as generation:
            for images, _ in self.val_pipeline.eval(self.config.eval_batch_size):
                out = generation(images["input"])
                n = int(images["input"].shape[0])
                total += float(l1_loss(out["image"], images["target"])) * n
                if "segmentation" in out:
                    seg_total += float(l1_loss(out["segmentation"], images["target_seg"])) * n
                count += n
                faultinject.kill_point("validation")  # testing aid (CVM_KILL_AT): mid-validation
        if not count:  # an L1 of 0 would be "best"
            raise CvmError(f"{describe_split(self.val_pipeline.split, 'validation')} has no usable sample: every "
                           f"one was dropped; first reasons: {first_reasons(self.val_pipeline.faults)}")
        metrics = {"l1": total / max(count, 1)}
        if seg_total:
            metrics["l1_seg"] = seg_total / max(count, 1)
        with self._writer("val").as_default(step=epoch):
            for key, value in metrics.items():
                tf.summary.scalar(key, value)
        if self.progress:
            print(f"validation after epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics

    def save_best(self, metrics: dict, epoch: int) -> None:
        best_dir = os.path.join(self.model_dir, "best")
        check_finite([(v.path, np.asarray(v.numpy())) for net in self.steps.generators.values() for v in net.variables],
                     f"{best_dir} not updated after epoch {epoch}")
        target = best_dir
        try:
            os.makedirs(best_dir, exist_ok=True)
            for role, net in self.steps.generators.items():
                target = os.path.join(best_dir, f"generator_{role}.keras")
                tmp = os.path.join(best_dir, f"generator_{role}.tmp.keras")
                net.save(tmp)
                faultinject.kill_point("best.model")
                os.replace(tmp, target)
            faultinject.kill_point("best.metrics")
            target = os.path.join(best_dir, "metrics.json")
            with open(target + ".tmp", "w") as f:
                json.dump({"epoch": epoch, **metrics}, f, indent=1)
            os.replace(target + ".tmp", target)
        except OSError as exc:
            raise write_error(target, exc, self.checkpoints.latest()) from None


def train(config: SynthesisConfig, progress: bool = True) -> dict:
    """Train (or resume) the synthesis run described by `config`; returns the final loop state."""
    return SynthesisRun(config, progress=progress).train()


# --- inference: `cvm synthesize` ------------------------------------------------------------------

def load_generators(model_dir: str, checkpoint: str = "latest"):
    """(config, {role: generator}, description of the weights) of a trained run, for inference.

    checkpoint: "latest" (newest checkpoints/ckpt-*.npz), "best" (best/generator_*.keras, written when the
    run validated), or a path to a ckpt-*.npz file.
    """
    from cvm.models.synthesis import build_synthesis_networks

    config = SynthesisConfig.load(model_dir).resolved()
    if checkpoint == "best":
        best_dir = os.path.join(model_dir, "best")
        roles = ("g1", "g2") if config.method == "xseq" else ("g",)
        paths = {r: os.path.join(best_dir, f"generator_{r}.keras") for r in roles}
        missing = [p for p in paths.values() if not os.path.isfile(p)]
        if missing:
            raise CvmError(f"{missing[0]} not found: the run kept no best model (it had no --val_split); use "
                           "--checkpoint latest or a checkpoint path")
        with open(os.path.join(best_dir, "metrics.json")) as f:
            epoch = json.load(f).get("epoch")
        return config, {r: keras.saving.load_model(p) for r, p in paths.items()}, f"best (epoch {epoch})"
    if checkpoint != "latest":
        path = checkpoint
        if not os.path.isfile(path):
            raise CvmError(f"--checkpoint {path}: no such file (give best, latest or a checkpoints/ckpt-*.npz path)")
    spec = config.data_spec()
    networks = build_synthesis_networks(config.method, input_size=spec.input_size, target_size=spec.target_size,
                                        input_channels=spec.input_channels, ngf=config.ngf, ndf=config.ndf,
                                        n_layers=config.d_layers, dropout=config.dropout, edge_bias=config.edge_bias,
                                        fork_relu=True if config.fix_fork_relu else None)
    group = VariableGroup(list(networks["generators"].values()) + list(networks["discriminators"].values()))
    if checkpoint == "latest":  # the newest one that reads and matches (a damaged one is skipped, saying so)
        path, state = CheckpointManager(os.path.join(model_dir, "checkpoints")).restore_newest(group)
        if path is None:
            raise CvmError(f"{model_dir}/checkpoints holds no checkpoint yet: train first (cvm train --model_dir "
                           f"{model_dir} ...)")
    else:
        state = CheckpointManager.restore(path, group)
    return config, networks["generators"], f"{os.path.basename(path)} (step {state.get('global_step')})"


def _readable(path: str) -> bool:
    import cv2

    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return False
    # A reduced decode reads the whole file (a truncated one fails) at a fraction of the cost.
    return cv2.imread(path, cv2.IMREAD_REDUCED_GRAYSCALE_8) is not None


def _write_image(path: str, image_uint8: np.ndarray) -> None:
    """Atomic write (temp file, then rename): a killed run never leaves a half-written image."""
    import cv2

    ext = os.path.splitext(path)[1] or ".png"
    ok, data = cv2.imencode(ext, image_uint8)
    if not ok:
        raise CvmError(f"cannot encode an image as {ext!r} for {path}")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data.tobytes())
    os.replace(tmp, path)


def synthesize(model_dir: str, out_dir: str, split: str = "val", dataset: Optional[str] = None,
               root: Optional[str] = None, batch_size: Optional[int] = None, checkpoint: str = "latest",
               metrics: bool = False, progress: bool = True, inference_mode: Optional[bool] = None,
               split_file: Optional[str] = None) -> dict:
    """Write one generated image per sample of a split, named by the sample's out_name (resumable).

    inference_mode: None: the run's (--inference_mode at training; by default the original test
    script's: batch statistics and dropout for xfork / xseq / xpix2pix, whose scripts never call
    netG:evaluate(); BN moving statistics and no dropout for the ICCV19 forks, whose scripts do). In
    batch-statistics mode an image depends on its batch: a short last batch is filled with earlier
    samples (cvm.models.synthesis.generation.Generation).
    split_file: CVUSA: the list whose rows are synthesized (default the official CSVs, as
    test_xfork_pano2aerial.lua). Every sample is written, including the last of an odd-length list
    (which test_xfork_pano2aerial.lua skipped with batch 2). Outputs that exist and decode are kept, so
    a rerun writes only the missing ones. Returns a summary dict (and the metrics with `metrics=True`).
    """
    from cvm.data.synthesis import SynthesisPipeline, to_uint8_bgr
    from cvm.models.synthesis.generation import Generation

    config, generators, described = load_generators(model_dir, checkpoint)
    dataset = dataset or config.dataset
    inference_mode = config.inference_mode if inference_mode is None else bool(inference_mode)
    batch_size = batch_size or config.eval_batch_size
    generation = Generation(generators, inference_mode, batch_size, what=f"{model_dir}'s generator ({described})")
    samples = load_split(config, split, segmaps=False, dataset=dataset, root=root, split_file=split_file)
    names = samples.out_names
    if len(set(names)) != len(names):
        raise CvmError(f"{dataset} {split}: several samples share an output name; cannot write one file each")
    # Names come from the split's rows: one that would land outside out_dir is refused before any work.
    targets = {name: output_path(out_dir, name, row=f"{dataset} {split} row {i + 1} (id {samples[i].id!r})")
               for i, name in enumerate(names)}
    os.makedirs(out_dir, exist_ok=True)
    pending = [i for i, name in enumerate(names) if not _readable(targets[name])]
    summary = {"model_dir": model_dir, "checkpoint": described, "dataset": dataset, "split": split,
               "out_dir": out_dir, "samples": len(names), "existing": len(names) - len(pending), "written": 0,
               "mode": "inference" if inference_mode else "batch statistics"}
    if pending:
        results_dir = os.path.join(model_dir, "results")
        os.makedirs(results_dir, exist_ok=True)
        pipeline = SynthesisPipeline(samples.subset(pending), config.data_spec(), seed=config.seed,
                                     faults_path=os.path.join(results_dir, f"synthesize_{dataset}_{split}_faults.txt"))
        bar = keras.utils.Progbar(len(pending)) if progress else None
        if progress:
            print(f"synthesizing {len(pending)} of {len(names)} images into {out_dir} ({described}, "
                  f"{summary['mode']})")
        with generation:
            for images, meta in pipeline.eval(batch_size):
                generated = to_uint8_bgr(keras.ops.convert_to_numpy(generation(images["input"], segmentation=False)["image"]))
                for image, name in zip(generated, meta["out_name"].numpy()):
                    _write_image(targets[name.decode()], image)
                summary["written"] += len(generated)
                faultinject.kill_point("synthesize", {"global_step": summary["written"]}, "synthesize")
                if bar is not None:
                    bar.add(len(generated))
        summary["skipped_unreadable"] = pipeline.faults.skipped
        if not summary["written"]:
            raise CvmError(f"no image written: no sample of {describe_split(samples)} could be read; first reasons: "
                           f"{first_reasons(pipeline.faults)}")
    if metrics:
        from cvm.evaluation.synthesis import evaluate_synthesis

        real = load_split(config, split, segmaps=False, dataset=dataset, root=root, split_file=split_file)
        out_path = os.path.join(model_dir, "results", f"synthesis_{dataset}_{split}.json")
        summary["metrics"] = evaluate_synthesis(out_dir, real, out_path=out_path, progress=progress)
        summary["metrics_path"] = out_path
    return summary

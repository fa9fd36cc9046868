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

`SynthesisRun(config).train()` trains or resumes a model_dir with the epoch loop of every trainer
(`cvm.training.epochs.EpochRun`, as the retrieval `Run`): the config (config.json, flags.cfg),
checkpoints/ (every network, every optimizer, the loop position; resumption skips the batches already
seen and gives identical weights), tensorboard/ (losses, and input / generated / target / segmentation
images every --image_every_steps), best/ (generator_<role>.keras and metrics.json: lowest validation
L1 when a --val_split is given), faults.txt. Using a trained run (`cvm synthesize`) is
`cvm.synthesis.inference`.
"""

from __future__ import annotations

import os
from typing import Optional

import keras
import tensorflow as tf
from absl import logging

from cvm import faultinject
from cvm.data.pipeline import describe_split, first_reasons, require_usable
from cvm.errors import CvmError
from cvm.losses.gan import discriminator_loss, generator_gan_loss, l1_loss
from cvm.training.epochs import EpochRun
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
      method: a synthesis method (`cvm.synthesis.methods.SYNTHESIS_METHODS`).
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
        body = self._seq_step if self.spec["sequential"] else self._fork_step
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


def build_networks(config: SynthesisConfig) -> dict:
    """The (untrained) networks of a resolved config: `build_synthesis_networks` output."""
    from cvm.models.synthesis import build_synthesis_networks

    spec = config.data_spec()
    return build_synthesis_networks(config.method, input_size=spec.input_size, target_size=spec.target_size,
                                    input_channels=spec.input_channels, ngf=config.ngf, ndf=config.ndf,
                                    n_layers=config.d_layers, dropout=config.dropout, edge_bias=config.edge_bias,
                                    fork_relu=True if config.fix_fork_relu else None)


def build_steps(config: SynthesisConfig) -> GANSteps:
    """Networks and optimizers of a resolved config (the global dtype policy must be set first)."""
    return GANSteps(config.method, build_networks(config), lambda_l1=config.lambda_l1, lambda_seg=config.lambda_seg,
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


class SynthesisRun(EpochRun):
    """One GAN training run in a model_dir; `SynthesisRun(config).train()` trains or resumes it (cvm.training.epochs)."""

    RESUMABLE_FIELDS = frozenset({"epochs", "checkpoint_every_steps", "keep_checkpoints", "log_every_steps",
                                  "image_every_steps", "eval_batch_size", "strategy", "jit_compile", "root",
                                  "model_dir", "kill_after_steps", "deterministic", "val_split", "inference_mode"})
    PROGRESS_METRICS = ("d_loss", "g_loss", "l1")
    best_metric = "l1"  # the validation L1 of the generated image: lower is better
    higher_is_better = False

    def __init__(self, config: SynthesisConfig, progress: bool = True):
        from cvm.data.synthesis import SynthesisPipeline

        config.validate()
        config = config.resolved()
        self._prepare_model_dir(config, progress)
        self.spec = config.data_spec()
        self.train_split = load_split(config, config.train_split)
        self.pipeline = SynthesisPipeline(self.train_split, self.spec, seed=config.seed,
                                          faults_path=os.path.join(self.model_dir, "faults.txt"))
        self.val_pipeline = None
        if config.val_split:
            self.val_pipeline = SynthesisPipeline(load_split(config, config.val_split), self.spec, seed=config.seed,
                                                  faults=self.pipeline.faults)
        if self._count_steps() < 1:
            raise CvmError(f"--batch_size {config.batch_size} is larger than the training split "
                           f"({len(self.train_split)} samples)")
        # A split with no complete sample (a wrong --root, maps that do not exist) fails now, by name.
        require_usable(self.pipeline, config.batch_size, "training")
        if self.val_pipeline is not None:
            require_usable(self.val_pipeline, 1, "validation")
        self.steps = build_steps(config)
        self._warn_one_value_batch_norms()

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

    def previous_config(self):
        try:
            return SynthesisConfig.load(self.model_dir).resolved()
        except CvmError:  # a retrieval run's config.json (or one that no longer reads)
            return None

    # --- the epoch loop's hooks (cvm.training.epochs) ----------------------------------------------
    def checkpointed(self) -> tuple:
        return self.steps.models, self.steps.optimizer_group

    def best_models(self) -> dict:
        return {f"generator_{role}.keras": net for role, net in self.steps.generators.items()}

    def poison_target(self):
        return self.steps.generator.trainable_variables[0]

    def step(self, batch) -> dict:
        images, _ = batch
        return self.steps.step(images)

    def non_finite(self, losses: dict, bad: list, where: str) -> str:
        return f"{', '.join(bad)} became non-finite {where}: lower --lr or use --precision float32"

    def log_step(self, losses: dict, epoch: int, state: dict, bar) -> None:
        values = {k: float(v) for k, v in losses.items()}
        with self._writer("train").as_default(step=state["global_step"]):
            for key, value in values.items():
                tf.summary.scalar(key, value)
        if bar is not None:
            bar.update(state["step"], [(k, values[k]) for k in self.PROGRESS_METRICS if k in values])

    def after_step(self, batch, state: dict) -> None:
        every = self.config.image_every_steps
        if every and state["global_step"] % every == 0:
            self._log_images(batch[0], state["global_step"])

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


def train(config: SynthesisConfig, progress: bool = True) -> dict:
    """Train (or resume) the synthesis run described by `config`; returns the final loop state."""
    return SynthesisRun(config, progress=progress).train()

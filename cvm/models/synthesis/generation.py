"""How a synthesis generator runs at test time: inference mode, or the CVPR 2018 scripts' batch statistics.

Two modes, both in the originals:
  * inference mode (`inference_mode=True`): BatchNorm normalises with its moving statistics, dropout is
    off: `netG:evaluate()`, which the ICCV 2019 test scripts (test_xfork_pano2aerial.lua,
    test_xfork_aerial2pano.lua) call;
  * batch statistics (`inference_mode=False`): BatchNorm normalises with the statistics of the batch
    being generated and dropout stays on, as the layers run in training. test_fork.lua, test_seq.lua and
    test_pix2pix.lua (Regmi & Borji, CVPR 2018) never call evaluate(), so their published images were
    made this way. An image then depends on the other members of its batch (and on dropout's draw).

`Generation` runs a run's generator(s) in one mode. In batch-statistics mode it leaves the BN moving
statistics as it found them (Keras updates them in training mode), used as a context manager it also
restores dropout's seed states on exit (a validation pass must not change the run's weights or its
later dropout draws; inside the block every batch draws afresh), and it fills a short last batch with
samples it generated before, so that every image's statistics come from a batch of the same size (the
originals ran floor(N / batch) full batches and skipped the rest).

The 1x1 bottleneck of the 256x256 generators (X-Fork, X-Seq, X-Pix2pix) trained with batches of one
(X-Fork's default, train_fork.lua batchSize = 1): the BatchNorm after the last encoder conv then sees one
value per channel, its batch variance is 0 and its output is its beta at every step, whatever the input
(the same arithmetic holds in Torch's nn). Beta starts at 0 and the ReLU after it passes no gradient at 0,
so every decoder layer sees 0, each decoder BN a constant, and the generator gets no gradient at all
(SynthesisRun warns); the moving variances of those BNs decay as momentum^steps towards 0. Inference
mode would then divide by sqrt(epsilon) (x316) where training never scaled at all:
`collapsed_batch_norms` finds such layers and `Generation` refuses inference mode with them, and
SynthesisConfig refuses --inference_mode with --batch_size 1 for a 1x1 bottleneck up front. In
batch-statistics mode a batch of one makes that layer output its beta again (every image the same up
to dropout), so `Generation` refuses a batch size of 1 there.
"""

from __future__ import annotations

import contextlib
from typing import Mapping, Optional

import keras
import numpy as np

from cvm.errors import CvmError
from cvm.models.synthesis.generators import BN_EPSILON

# A BatchNorm whose moving variance is below this in every channel has collapsed: its inference-mode
# scale 1/sqrt(var + eps) is within 0.5 % of 1/sqrt(eps), whatever the data.
COLLAPSED_VARIANCE = 1e-2 * BN_EPSILON


def batch_norms(model) -> list:
    """The BatchNormalization layers of a model, in build order."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


def collapsed_batch_norms(generators: Mapping[str, keras.Model], threshold: float = COLLAPSED_VARIANCE) -> list:
    """(generator role, layer name, largest moving variance) of every BatchNorm whose moving variance is
    below `threshold` in every channel."""
    found = []
    for role, model in generators.items():
        for bn in batch_norms(model):
            largest = float(np.max(keras.ops.convert_to_numpy(bn.moving_variance)))
            if largest < threshold:
                found.append((role, bn.name, largest))
    return found


def one_value_batch_norms(generators: Mapping[str, keras.Model], batch_size: int) -> list:
    """(role, layer name) of the BatchNorms that see a single value per channel in a batch of `batch_size`:
    the last encoder BN of a generator with a 1x1 bottleneck, with batches of one."""
    found = []
    if int(batch_size) != 1:
        return found
    for role, model in generators.items():
        if tuple(getattr(model, "bottleneck_size", ())) == (1, 1):
            last = model.encoder[-1][1] if getattr(model, "encoder", None) else None
            if last is not None:
                found.append((role, last.name))
    return found


@contextlib.contextmanager
def preserved_state(models, seeds: bool = True):
    """Restore the BN moving statistics of `models` on exit, and with `seeds` every other non-trainable
    variable too (dropout's seed states: the draws after the block are those there would have been)."""
    if seeds:
        variables = [v for m in models for v in m.non_trainable_variables]
    else:
        variables = [v for m in models for bn in batch_norms(m) for v in (bn.moving_mean, bn.moving_variance)]
    saved = [(v, keras.ops.convert_to_numpy(v)) for v in variables]
    try:
        yield
    finally:
        for variable, value in saved:
            variable.assign(value)


def generate(generators: Mapping[str, keras.Model], inputs, inference_mode: bool, segmentation: bool = True) -> dict:
    """{"image": ..., ["segmentation": ...]} of one batch (X-Seq: G2 applied to G1's image, unless not
    `segmentation`).

    inference_mode False runs the layers as in training (batch statistics, dropout): wrap the calls in
    `preserved_state` to keep the moving statistics (`Generation` does).
    """
    training = not inference_mode
    first = generators.get("g") or generators["g1"]
    out = dict(first(inputs, training=training))
    if "g2" in generators and segmentation:
        out["segmentation"] = generators["g2"](out["image"], training=training)["segmentation"]
    return out


class Generation:
    """Runs a run's generator(s) in one test-time mode, batch by batch.

    Args:
      generators: {role: generator} ("g", or X-Seq's "g1" and "g2").
      inference_mode: True: moving statistics, no dropout; False: batch statistics, dropout on.
      batch_size: the batch size the caller generates with; in batch-statistics mode a shorter batch is
        filled up to it with samples of earlier batches (their outputs are dropped).

    Raises:
      CvmError: inference mode with a collapsed BatchNorm; batch statistics with a batch size of 1 and
        a 1x1 bottleneck.

    Example:
      run = Generation(generators, inference_mode=False, batch_size=8)
      with run:                                  # restores the BN moving statistics afterwards
          for images, meta in pipeline.eval(8):
              out = run(images["input"])         # {"image": [B, H, W, 3], ...}
    """

    def __init__(self, generators: Mapping[str, keras.Model], inference_mode: bool, batch_size: Optional[int] = None,
                 what: str = "the generator"):
        self.generators = dict(generators)
        self.inference_mode = bool(inference_mode)
        self.batch_size = None if batch_size is None else int(batch_size)
        self._filler = None
        self._stack = None
        if self.inference_mode:
            collapsed = collapsed_batch_norms(self.generators)
            if collapsed:
                role, name, largest = collapsed[0]
                raise CvmError(
                    f"--inference_mode: {what}'s BatchNorm {role}/{name} has a moving variance below "
                    f"{COLLAPSED_VARIANCE:g} in every channel (largest {largest:.3g}); it was trained on one value "
                    "per channel (a 1x1 bottleneck with batches of one: batch variance 0 at every step), so "
                    f"inference mode would divide by sqrt({BN_EPSILON:g}) where training never scaled. Generate "
                    "with the batch statistics of the original test scripts (drop --inference_mode), or retrain "
                    "with --batch_size 2 or more")
        elif self.batch_size is not None:
            single = one_value_batch_norms(self.generators, self.batch_size)
            if single:
                role, name = single[0]
                raise CvmError(
                    f"--batch_size 1 with batch statistics: {what}'s 1x1 bottleneck BatchNorm {role}/{name} sees "
                    "one value per channel and outputs its beta for every input, so every image would be the same "
                    "up to dropout; use --batch_size 2 or more (the original test scripts ran 10) or --inference_mode")

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        if not self.inference_mode:
            self._stack.enter_context(preserved_state(self.generators.values()))
        return self

    def __exit__(self, *exc):
        stack, self._stack = self._stack, None
        return stack.__exit__(*exc) if stack is not None else False

    def __call__(self, inputs, segmentation: bool = True) -> dict:
        """The outputs for one batch; segmentation=False skips X-Seq's G2 (only the image is wanted)."""
        if self.inference_mode:
            return generate(self.generators, inputs, True, segmentation)
        if self._stack is None:  # one call: keep the moving statistics, let dropout draw afresh
            with preserved_state(self.generators.values(), seeds=False):
                return generate(self.generators, inputs, False, segmentation)
        n = int(inputs.shape[0])
        want = self.batch_size or n
        if n < want and self._filler is not None:
            fill = keras.ops.convert_to_tensor(self._filler[:want - n], dtype=inputs.dtype)
            out = generate(self.generators, keras.ops.concatenate([inputs, fill], axis=0), False, segmentation)
            return {k: v[:n] for k, v in out.items()}
        if self._filler is None or len(self._filler) < want:
            previous = [] if self._filler is None else [self._filler]
            self._filler = np.concatenate(previous + [keras.ops.convert_to_numpy(inputs)], axis=0)[:want]
        return generate(self.generators, inputs, False, segmentation)

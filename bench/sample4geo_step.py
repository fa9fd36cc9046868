"""Benchmark: pairs/s of one Sample4Geo training step, ours (Keras 3 / TF) against the authors' PyTorch recipe.

Ours: `cvm.models.sample4geo.Sample4Geo` (one shared ConvNeXt) + `cvm.losses.infonce.SymmetricInfoNCE` (label
smoothing 0.1, learnable logit scale) + `keras.optimizers.AdamW`, gradients clipped by value (100) as
Sample4Geo's `clip_grad_value_`; one step is a `tf.function` (`ours`) or the same with jit_compile (`ours_xla`).
Baseline (`torch`): timm's ConvNeXt of the same depths and widths, wrapped as Sample4Geo's `TimmModel` (a
`logit_scale` parameter), their InfoNCE (F.normalize, exp(scale) logits, CrossEntropyLoss(label_smoothing=0.1)
both ways), torch.optim.AdamW and clip_grad_value_(100) - restated here, the authors' code is not imported.
Both start from the same random weights (copied timm -> Keras through the checkpoint converter) and the same
batch (random ImageNet-normalised images, kept in memory: the step is measured, not the input pipeline); the
first step's losses are printed side by side as a check that the two compute the same thing. fp32.

Protocol: each variant warmed up (`--warmup` steps, including tracing / compilation), then `--repeats` rounds
of `--steps` steps per variant, interleaved, rotating the order. Reported: median pairs/s, ratio to torch.
Target (issue 13): ours >= 1.0x torch on this CPU with the same backbone.

  python bench/sample4geo_step.py [--depths 1,1,3,1] [--width 0.25] [--batch 8] [--ground 70,384]
      [--aerial 128,128] [--steps 3] [--repeats 3] [--variants ours,ours_xla,torch]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

LR, WEIGHT_DECAY, CLIP_VALUE, LABEL_SMOOTHING = 1e-3, 0.01, 100.0, 0.1


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:
        return platform.processor() or "unknown CPU"


def make_torch(depths, dims, seed):
    import torch
    from tests.timm_import import randomised_timm_convnext

    class TimmModel(torch.nn.Module):  # Sample4Geo's wrapper: the timm model plus a logit_scale parameter
        def __init__(self):
            super().__init__()
            self.model = randomised_timm_convnext(depths, dims, seed)
            self.logit_scale = torch.nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

        def forward(self, img1, img2):
            return self.model(img1), self.model(img2)

    model = TimmModel().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    ce = torch.nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
    F = torch.nn.functional

    def step(ground, aerial):
        f1, f2 = model(ground, aerial)
        f1, f2 = F.normalize(f1, dim=-1), F.normalize(f2, dim=-1)
        logits = model.logit_scale.exp() * f1 @ f2.T
        labels = torch.arange(len(logits))
        loss = (ce(logits, labels) + ce(logits.T, labels)) / 2
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), CLIP_VALUE)
        optimizer.step()
        optimizer.zero_grad()
        return float(loss.detach())

    return model, step


def make_ours(torch_model, depths, dims, jit):
    import tensorflow as tf
    import keras
    from cvm.export.torch_sample4geo import load_sample4geo_state
    from cvm.losses.infonce import SymmetricInfoNCE
    from cvm.models.sample4geo import Sample4Geo

    model = Sample4Geo(backbone="convnext_tiny", backbone_width=dims[0] / 96, backbone_depths=depths)
    load_sample4geo_state(model, {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}, "timm")
    loss_fn = SymmetricInfoNCE(label_smoothing=LABEL_SMOOTHING)
    optimizer = keras.optimizers.AdamW(learning_rate=LR, weight_decay=WEIGHT_DECAY)
    variables = model.trainable_variables
    optimizer.build(variables)

    @tf.function(jit_compile=jit)
    def step(ground, aerial):
        with tf.GradientTape() as tape:
            out = model({"ground": ground, "aerial": aerial}, training=True)
            loss = loss_fn(out["ground"], out["aerial"], logit_scale=model.logit_scale)
        grads = [tf.clip_by_value(g, -CLIP_VALUE, CLIP_VALUE) for g in tape.gradient(loss, variables)]
        optimizer.apply(grads, variables)
        return loss

    return lambda g, a: float(step(g, a))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", default="1,1,3,1")
    parser.add_argument("--width", type=float, default=0.25, help="multiplier of ConvNeXt-Tiny's widths")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--ground", default="70,384")
    parser.add_argument("--aerial", default="128,128")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="ours,ours_xla,torch")
    args = parser.parse_args(argv)
    depths = tuple(int(d) for d in args.depths.split(","))
    dims = tuple(max(1, int(round(c * args.width))) for c in (96, 192, 384, 768))
    ground_hw = tuple(int(s) for s in args.ground.split(","))
    aerial_hw = tuple(int(s) for s in args.aerial.split(","))
    variants = args.variants.split(",")

    import tensorflow as tf
    import torch

    rng = np.random.default_rng(0)
    ground = rng.standard_normal((args.batch, *ground_hw, 3)).astype("float32")
    aerial = rng.standard_normal((args.batch, *aerial_hw, 3)).astype("float32")
    torch_model, torch_step = make_torch(depths, dims, seed=0)
    steps = {}
    inputs = {}
    first_loss = {}
    for name in variants:  # ours first: each copies the timm weights before the torch step changes them
        if name.startswith("ours"):
            steps[name] = make_ours(torch_model, depths, dims, jit=name == "ours_xla")
            inputs[name] = (tf.constant(ground), tf.constant(aerial))
    if "torch" in variants:
        steps["torch"] = torch_step
        inputs["torch"] = (torch.from_numpy(ground).permute(0, 3, 1, 2).contiguous(),
                           torch.from_numpy(aerial).permute(0, 3, 1, 2).contiguous())
    for name in variants:
        start = time.perf_counter()
        first_loss[name] = steps[name](*inputs[name])
        for _ in range(args.warmup - 1):
            steps[name](*inputs[name])
        print(f"warm-up {name}: {time.perf_counter() - start:.1f} s", flush=True)
    rates = {name: [] for name in variants}
    for r in range(args.repeats):
        for name in variants[r % len(variants):] + variants[:r % len(variants)]:
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[name](*inputs[name])
            rates[name].append(args.batch * args.steps / (time.perf_counter() - start))

    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores); torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), TF {tf.__version__}")
    print(f"ConvNeXt depths {depths} widths {dims}; batch {args.batch} pairs, ground {ground_hw}, aerial {aerial_hw}, "
          "fp32")
    print("first-step loss: " + ", ".join(f"{n} {first_loss[n]:.5f}" for n in variants))
    baseline = statistics.median(rates["torch"]) if "torch" in rates else None
    print(f"{'variant':<10}{'pairs/s':>10}{'min':>8}{'max':>8}{'vs torch':>10}")
    for name in variants:
        median = statistics.median(rates[name])
        ratio = f"{median / baseline:.2f}x" if baseline else "-"
        print(f"{name:<10}{median:>10.2f}{min(rates[name]):>8.2f}{max(rates[name]):>8.2f}{ratio:>10}")
    if baseline and "ours" in rates:
        ratio = statistics.median(rates["ours"]) / baseline
        print(f"\nours / torch = {ratio:.2f} (target >= 1.0): {'met' if ratio >= 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()

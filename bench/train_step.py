"""Benchmark: pairs/s of one CVM-Net-I training step, ours (Keras 3) against the original TF1 graph.

Ours: `build_model("cvm_net_i")` at full size (VGG16 towers, conv1-3 frozen, keep_prob 0.8, NetVLAD
K=64, shared FC 32768 -> 4096) in `RetrievalTrainer` with the weighted soft-margin triplet loss and
Adam(1e-5) as `cvm train` builds it (`cvm.training.optimizers.FusedAdam`); one step is `tf.function(trainer.train_step)` (`ours`), the same with jit_compile=True
(`ours_xla`), or `ours` built under the mixed_float16 / mixed_bfloat16 policy (slow on a CPU).
Baseline: the authors' CVM-Net-I graph (david-husx/crossview_localisation, restated in
`bench/tf1_cvm_net.py`) run by a tf.compat.v1 Session, fed numpy arrays through feed_dict as train.py
did (`tf1`); `tf1_const` bakes the same arrays into the graph as constants. Our inputs are random
constant tensors kept on the device: the step is measured, not the input pipeline.

Protocol: every variant is built and warmed up (`--warmup` steps, which include tracing / XLA
compilation), then `--repeats` rounds each time `--steps` steps of every variant, the variants
interleaved (in a rotated order each round) so that machine noise hits them alike. Reported: median
pairs/s over the rounds and its ratio to `tf1`, and the median process CPU seconds per step with the
CPU-time ratio (tf1 / variant; less sensitive to other jobs on a shared machine).
Target: ours (TF's kernels, no XLA) >= 1.0x tf1 on every CPU of the project's 2-core kind (issue 11;
XLA is chosen per machine by `cvm train`, so the kernels are the floor), at batch 8, ground 64x256,
aerial 128x128, float32; the original runs 1.8 to 8.3 pairs/s depending on the CPU (README). Both use
TensorFlow's default thread pools.

  python bench/train_step.py [--batch 8] [--ground 64,256] [--aerial 128,128] [--steps 5] [--repeats 3]
      [--variants ours,ours_xla,tf1]  # also: tf1_const, ours_mixed_float16, ours_mixed_bfloat16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

VARIANTS = ("ours", "ours_xla", "tf1", "tf1_const", "ours_mixed_float16", "ours_mixed_bfloat16")
MODEL_OPTIONS = dict(backbone_width=1.0, freeze_blocks=3, keep_prob=0.8, clusters=64, output_dim=4096,
                     init="original")


def make_inputs(batch, ground_hw, aerial_hw, seed=0):
    """Random BGR-minus-mean-like images: (ground [B, Hg, Wg, 3], aerial [B, Ha, Wa, 3]) float32."""
    rng = np.random.default_rng(seed)
    ground = rng.uniform(-120, 120, (batch, *ground_hw, 3)).astype("float32")
    aerial = rng.uniform(-120, 120, (batch, *aerial_hw, 3)).astype("float32")
    return ground, aerial


def ours_trainer():
    """A compiled RetrievalTrainer around a full-size CVM-Net-I, built under the global dtype policy."""
    from cvm.losses import WeightedSoftMarginTripletLoss
    from cvm.models import build_model
    from cvm.training.retrieval import RetrievalTrainer

    encoder = build_model("cvm_net_i", **MODEL_OPTIONS)
    trainer = RetrievalTrainer(encoder, WeightedSoftMarginTripletLoss())
    from cvm.training.optimizers import FusedAdam

    trainer.compile(optimizer=FusedAdam(1e-5))  # wraps in LossScaleOptimizer under mixed_float16
    trainer.optimizer.build(encoder.trainable_variables)
    return trainer


def ours_step(trainer, ground, aerial, jit_compile=False):
    """A no-argument callable running one training step to completion."""
    import tensorflow as tf

    step = tf.function(trainer.train_step, jit_compile=jit_compile)
    data = ({"ground": tf.constant(ground), "aerial": tf.constant(aerial)}, {})

    def run():
        return float(step(data)["loss"].numpy())  # .numpy() waits for the step, as sess.run does

    return run


def tf1_step(batch, ground, aerial, ground_hw, aerial_hw, feed=True):
    """One train.py step of the original graph: sess.run([train, loss], feed_dict) (or constant inputs)."""
    import tensorflow as tf

    from tf1_cvm_net import build_train_graph

    graph, ops = build_train_graph(batch, ground_hw, aerial_hw, inputs=None if feed else (ground, aerial))
    session = tf.compat.v1.Session(graph=graph)
    session.run(ops["init"])
    feed_dict = {ops["keep_prob"]: 0.8, ops["learning_rate"]: 1e-5}
    if feed:
        feed_dict.update({ops["sat_x"]: aerial, ops["grd_x"]: ground})
    fetches = [ops["train"], ops["loss"]]

    def run():
        return float(session.run(fetches, feed_dict=feed_dict)[1])

    return run


def build_variant(name, args, ground, aerial, cache):
    """The step callable of a variant; `cache` shares the float32 trainer between ours and ours_xla."""
    if name in ("tf1", "tf1_const"):
        return tf1_step(args.batch, ground, aerial, args.ground, args.aerial, feed=name == "tf1")
    if name in ("ours", "ours_xla"):
        if "float32" not in cache:
            cache["float32"] = ours_trainer()
        return ours_step(cache["float32"], ground, aerial, jit_compile=name == "ours_xla")
    import keras

    policy = name[len("ours_"):]
    keras.mixed_precision.set_global_policy(policy)
    try:
        trainer = ours_trainer()
        run = ours_step(trainer, ground, aerial)
        run()  # trace under the policy
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return run


def timed(run, steps):
    """(wall seconds, process CPU seconds) of `steps` steps."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        run()
    return time.perf_counter() - wall, time.process_time() - cpu


def parse_pair(text):
    h, w = (int(v) for v in text.split(","))
    return h, w


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--ground", type=parse_pair, default=(64, 256), help="H,W of the ground images")
    parser.add_argument("--aerial", type=parse_pair, default=(128, 128), help="H,W of the aerial images")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (the median is reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variants", default="ours,ours_xla,tf1",
                        help=f"comma list of {', '.join(VARIANTS)}")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for tf1_cvm_net

    import tensorflow as tf

    ground, aerial = make_inputs(args.batch, args.ground, args.aerial)
    print(f"batch {args.batch}, ground {args.ground}, aerial {args.aerial}, {args.steps} steps x "
          f"{args.repeats} rounds, TF {tf.__version__}, {os.cpu_count()} CPUs, "
          f"GPUs: {len(tf.config.list_physical_devices('GPU'))}", flush=True)

    steps, cache = {}, {}
    for name in variants:
        start = time.perf_counter()
        steps[name] = build_variant(name, args, ground, aerial, cache)
        for _ in range(args.warmup):
            loss = steps[name]()
        print(f"  {name}: built + {args.warmup} warm-up steps in {time.perf_counter() - start:.1f} s "
              f"(loss {loss:.4f})", flush=True)

    rates = {name: [] for name in variants}
    cpu = {name: [] for name in variants}  # process CPU seconds per step: steadier on a shared machine
    for r in range(args.repeats):
        order = variants[r % len(variants):] + variants[: r % len(variants)]  # rotate the order
        for name in order:
            wall, cpu_s = timed(steps[name], args.steps)
            rates[name].append(args.batch * args.steps / wall)
            cpu[name].append(cpu_s / args.steps)
        print(f"  round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:.2f}" for n in variants), flush=True)

    baseline = statistics.median(rates["tf1"]) if "tf1" in rates else None
    cpu_base = statistics.median(cpu["tf1"]) if "tf1" in cpu else None
    print(f"\n{'variant':<22}{'pairs/s':>10}{'min':>8}{'max':>8}{'vs tf1':>9}{'cpu s/step':>12}{'cpu vs tf1':>12}")
    for name in variants:
        median, cpu_med = statistics.median(rates[name]), statistics.median(cpu[name])
        ratio = f"{median / baseline:.2f}x" if baseline else "-"
        cpu_ratio = f"{cpu_base / cpu_med:.2f}x" if cpu_base else "-"  # > 1: less CPU than the original
        print(f"{name:<22}{median:>10.2f}{min(rates[name]):>8.2f}{max(rates[name]):>8.2f}{ratio:>9}"
              f"{cpu_med:>12.2f}{cpu_ratio:>12}")
    if baseline and "ours" in rates:
        ratio = statistics.median(rates["ours"]) / baseline
        print(f"\nours / tf1 = {ratio:.2f} (target >= 1.0): {'met' if ratio >= 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()

"""Benchmark: tf.data pipeline pairs/s against a bare OpenCV decode + resize loop, per core.

Both read the same files of a CVUSA-layout folder (written from the synthetic world unless --root
is given) and do the same decode + INTER_AREA resize; the pipeline adds batching, the float cast,
the mean subtraction, and (with --augment) the CVM-Net zoom-crop/rotation. The bare loop runs on one
core; the pipeline uses all cores, and its rate is divided by the number of cores. Pipelines are
timed in the steady state a training run sees: `--epochs` training epochs, the clock started at the
first batch (the one-off start of the iterator is not an epoch's cost). Also timed: the previous
engine (a parallel tf.data map over tf.numpy_function, restated below) on the same files. The
figure to read is the ratio in the last line (target >= 0.9).

  python bench/pipeline.py [--root DIR] [--pairs 400] [--preset cvm_net|cvft|small] [--augment]
      [--epochs 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402


def bare_loop(split, spec):
    """The reference: cv2.imread + INTER_AREA resize of both images, one thread, no framework."""
    start = time.perf_counter()
    for pair in split:
        aerial = cv2.imread(pair.aerial_path)
        aerial = cv2.resize(aerial, spec.aerial_size[::-1], interpolation=cv2.INTER_AREA)
        ground = cv2.imread(pair.ground_path)
        ground = cv2.resize(ground, spec.ground_size[::-1], interpolation=cv2.INTER_AREA)
    return len(split) / (time.perf_counter() - start)


def steady_rate(ds):
    """Pairs/s of a dataset from its first batch on."""
    it = iter(ds)
    next(it)
    start, count = time.perf_counter(), 0
    for features, _ in it:
        count += int(features["ground"].shape[0])
    return count / (time.perf_counter() - start)


def pipeline_rate(split, spec, augment, batch_size, epochs, normalize=False):
    from cvm.data.pipeline import Pipeline

    pipe = Pipeline(split, spec, augment, seed=0, normalize=normalize)
    return steady_rate(pipe.train(batch_size, epochs=epochs))


def tfdata_map_rate(split, spec, augment, batch_size, epochs):
    """The previous engine: (epoch, index) -> parallel tf.data map of tf.numpy_function -> filter -> batch."""
    import tensorflow as tf

    from cvm.data.pipeline import Pipeline

    pipe = Pipeline(split, spec, augment, seed=0, normalize=False)
    loader, n = pipe.loader, len(split)

    def load(epoch, index):
        g, a, yaw, ok = tf.numpy_function(lambda i, e: loader.load(i, e, True), [index, epoch],
                                          [tf.uint8, tf.uint8, tf.float32, tf.bool])
        g.set_shape(loader.ground_shape)
        a.set_shape(loader.aerial_shape)
        return {"ground": g, "aerial": a, "index": index, "ok": ok}

    def one_epoch(epoch):
        order = tf.numpy_function(pipe.epoch_order, [epoch], tf.int64)
        order.set_shape((n,))
        return (tf.data.Dataset.from_tensor_slices(order).map(lambda i: (epoch, i))
                .map(load, num_parallel_calls=(os.cpu_count() or 1) + 2, deterministic=True)
                .filter(lambda s: s["ok"]).batch(batch_size, drop_remainder=True))

    ds = (tf.data.Dataset.range(0, epochs).flat_map(one_epoch)
          .map(lambda b: ({"ground": b["ground"], "aerial": b["aerial"]}, {"index": b["index"]}))
          .prefetch(tf.data.AUTOTUNE))
    return steady_rate(ds)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="CVUSA-layout folder (default: write a synthetic one)")
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--preset", default="cvft")
    parser.add_argument("--augment", action="store_true", help="CVM-Net zoom-crop + rotation in the pipeline")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from cvm.data import augment as augment_lib
    from cvm.data import images
    from cvm.data.cvusa import load_cvusa

    cv2.setNumThreads(1)  # one core per decode in both contenders: the per-core comparison
    cores = os.cpu_count() or 1
    root = args.root
    if root is None:
        from cvm.data.synthetic import write_dataset

        root = tempfile.mkdtemp(prefix="cvm_bench_")
        write_dataset(root, layout="cvusa", pairs=args.pairs, seed=0, val_fraction=0.5, progress=False)
    split = load_cvusa(root, "train")
    spec = images.preset(args.preset)
    aug = augment_lib.CVM_NET if args.augment else None
    # Warm the page cache and TF, then interleave the contenders so machine noise hits both.
    bare_loop(split, spec)
    pipeline_rate(split, spec, aug, args.batch_size, 1)
    bare, pipe, host, old = [], [], [], []
    for _ in range(args.repeats):
        bare.append(bare_loop(split, spec))
        pipe.append(pipeline_rate(split, spec, aug, args.batch_size, args.epochs))
        host.append(pipeline_rate(split, spec, aug, args.batch_size, args.epochs, normalize=True))
        old.append(tfdata_map_rate(split, spec, aug, args.batch_size, args.epochs))
    bare_rate, pipe_rate, host_rate = statistics.median(bare), statistics.median(pipe), statistics.median(host)
    old_rate = statistics.median(old)
    print(f"files: {root} ({len(split)} pairs), preset {args.preset} (ground {spec.ground_size}, "
          f"aerial {spec.aerial_size}), augment: {bool(aug)}, cores: {cores}")
    print(f"bare OpenCV loop, 1 core:      {bare_rate:8.1f} pairs/s")
    print(f"cvm pipeline, {cores} cores:        {pipe_rate:8.1f} pairs/s  ({pipe_rate / cores:.1f} per core)")
    print(f"  with float normalisation on the host: {host_rate:8.1f} pairs/s  ({host_rate / cores / bare_rate:.2f}x)")
    print(f"  previous engine (tf.data map):        {old_rate:8.1f} pairs/s  ({old_rate / cores / bare_rate:.2f}x)")
    print(f"ratio per core (pipeline / bare): {pipe_rate / cores / bare_rate:.2f}")


if __name__ == "__main__":
    main()

"""Benchmark: tf.data pipeline pairs/s against a bare OpenCV decode + resize loop, per core.

Both read the same files of a CVUSA-layout folder (written from the synthetic world unless --root
is given) and do the same decode + INTER_AREA resize; the pipeline adds batching, the float cast,
the mean subtraction, and (with --augment) the CVM-Net zoom-crop/rotation. The bare loop runs on one
core; the pipeline uses all cores, and its rate is divided by the number of cores. The figure to
read is the ratio in the last line (target >= 0.9).

  python bench/pipeline.py [--root DIR] [--pairs 400] [--preset cvm_net|cvft|small] [--augment]
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


def pipeline_rate(split, spec, augment, batch_size, normalize=False):
    from cvm.data.pipeline import Pipeline

    pipe = Pipeline(split, spec, augment, seed=0, normalize=normalize)
    ds = pipe.train(batch_size, epochs=1) if augment is not None else pipe.eval(batch_size)
    start = time.perf_counter()
    count = 0
    for features, _ in ds:
        count += int(features["ground"].shape[0])
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="CVUSA-layout folder (default: write a synthetic one)")
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--preset", default="cvft")
    parser.add_argument("--augment", action="store_true", help="CVM-Net zoom-crop + rotation in the pipeline")
    parser.add_argument("--batch_size", type=int, default=16)
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
    pipeline_rate(split, spec, aug, args.batch_size)
    bare, pipe, host = [], [], []
    for _ in range(args.repeats):
        bare.append(bare_loop(split, spec))
        pipe.append(pipeline_rate(split, spec, aug, args.batch_size))
        host.append(pipeline_rate(split, spec, aug, args.batch_size, normalize=True))
    bare_rate, pipe_rate, host_rate = statistics.median(bare), statistics.median(pipe), statistics.median(host)
    print(f"files: {root} ({len(split)} pairs), preset {args.preset} (ground {spec.ground_size}, "
          f"aerial {spec.aerial_size}), augment: {bool(aug)}, cores: {cores}")
    print(f"bare OpenCV loop, 1 core:      {bare_rate:8.1f} pairs/s")
    print(f"cvm pipeline, {cores} cores:        {pipe_rate:8.1f} pairs/s  ({pipe_rate / cores:.1f} per core)")
    print(f"  with float normalisation on the host: {host_rate:8.1f} pairs/s  ({host_rate / cores / bare_rate:.2f}x)")
    print(f"ratio per core (pipeline / bare): {pipe_rate / cores / bare_rate:.2f}")


if __name__ == "__main__":
    main()

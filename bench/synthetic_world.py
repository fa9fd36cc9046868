"""Benchmark: synthetic pairs rendered per second on one core, against a same-run cv2 baseline.

The baseline is a bare cv2.resize + cv2.warpAffine of a 256x256 crop of the world raster (what
any image pipeline does per sample); reporting render time / baseline time makes the figure
comparable across machines of different speed.

    python bench/synthetic_world.py [--pairs 200] [--size 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import cv2

from cvm.data.synthetic import World, render_aerial, render_panorama


def _best_of(fn, repeats: int) -> float:
    """Smallest wall time of `repeats` calls of fn (the least disturbed by other processes)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--size", type=float, default=1000.0, help="world side in metres")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cv2.setNumThreads(1)  # per-core figure

    start = time.perf_counter()
    world = World.generate(args.seed, args.size)
    print(f"world {args.size:g} m ({world.shape[0]}x{world.shape[1]} px): generated in "
          f"{time.perf_counter() - start:.2f} s")
    locations = world.sample_locations(args.pairs, seed=args.seed + 1)

    def render_all():
        for xy in locations:
            render_panorama(world, xy, height_px=128, width_px=512)
            render_aerial(world, xy, size_px=256)

    crops = []
    for xy in locations:
        col, row = world.to_pixel(xy).astype(int)
        crops.append(world.top[row - 128:row + 128, col - 128:col + 128])
    rotation = cv2.getRotationMatrix2D((128.0, 128.0), 30.0, 1.0)

    def baseline_all():
        for crop in crops:
            cv2.warpAffine(cv2.resize(crop, (256, 256)), rotation, (256, 256), flags=cv2.INTER_LINEAR)

    render_all()  # warm-up (caches, page faults)
    render_s = _best_of(render_all, args.repeats)
    baseline_s = _best_of(baseline_all, args.repeats)
    n = len(locations)
    print(f"render_panorama 128x512 + render_aerial 256x256: {n / render_s:.1f} pairs/s per core "
          f"({1000 * render_s / n:.2f} ms/pair)")
    print(f"baseline resize + warpAffine 256x256: {n / baseline_s:.0f} per s ({1e6 * baseline_s / n:.0f} us)")
    print(f"ratio render / baseline: {render_s / baseline_s:.1f}x")


if __name__ == "__main__":
    main()

"""Benchmark: the streamed correlation evaluator (DSM, FFT over the gallery) against the plain-descriptor one.

Both rank N ground queries against N aerial references in one direction (ground -> aerial), in the same run:
  * baseline: cvm.evaluation.recall.evaluate on [N, 4096] unit descriptors (one matmul per query chunk);
  * contender: cvm.evaluation.correlation.evaluate_correlation on DSM maps (ground 4 x Wg x 16 with
    Wg = ceil(64 FoV / 360), aerial 4 x 64 x 16), every orientation searched.
The figure to read is the ratio contender / baseline (how much the orientation search costs over a plain
retrieval of the same gallery); the CPU model is printed with it.

  python bench/dsm_eval.py                     # CVUSA size: N = 8,884, FoV 360 and 90
  python bench/dsm_eval.py --n 2000 --fov 70
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from cvm.training.jit_choice import cpu_model  # noqa: E402



def dsm_maps(n: int, wg: int, seed: int = 0):
    """Aerial maps and ground maps that are noisy crops of their aerials at random shifts (unit norm)."""
    rng = np.random.default_rng(seed)
    aerial = rng.standard_normal((n, 4, 64, 16), dtype=np.float32)
    shifts = rng.integers(0, 64, n)
    cols = (np.arange(wg)[None, :] + shifts[:, None]) % 64
    ground = np.take_along_axis(aerial, cols[:, None, :, None], axis=2)
    ground = ground + rng.standard_normal(ground.shape, dtype=np.float32) * 1.5
    ground /= np.linalg.norm(ground.reshape(n, -1), axis=1)[:, None, None, None]
    return ground, aerial


def plain_descriptors(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    aerial = rng.standard_normal((n, 4096), dtype=np.float32)
    aerial /= np.linalg.norm(aerial, axis=1, keepdims=True)
    ground = aerial + rng.standard_normal((n, 4096), dtype=np.float32) * float(1.5 / np.sqrt(4096))
    ground /= np.linalg.norm(ground, axis=1, keepdims=True)
    return ground, aerial


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8884)
    parser.add_argument("--fov", type=float, nargs="+", default=[360.0, 90.0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    from cvm.evaluation.correlation import evaluate_correlation
    from cvm.evaluation.recall import evaluate

    print(f"CPU: {cpu_model() or 'unknown CPU'} ({os.cpu_count()} logical CPUs); N = {args.n}")
    g, a = plain_descriptors(args.n)
    evaluate(g[:64], a[:64], directions=("ground_to_aerial",))  # trace once
    base = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        evaluate(g, a, directions=("ground_to_aerial",))
        base.append(time.perf_counter() - t)
    baseline = min(base)
    print(f"plain evaluate (4096-d, one direction): {baseline:.2f} s")
    for fov in args.fov:
        wg = -(-int(fov / 360 * 512) // 8)
        ground, aerial = dsm_maps(args.n, wg)
        evaluate_correlation(ground[:64], aerial[:64])  # trace once
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = evaluate_correlation(ground, aerial)
            times.append(time.perf_counter() - t)
        best = min(times)
        r1 = out["directions"]["ground_to_aerial"]["metrics"]["r@1"]
        print(f"correlation evaluate FoV {fov:g} (ground map 4x{wg}x16): {best:.2f} s, "
              f"ratio {best / baseline:.2f}x the plain evaluator (r@1 {r1:.3f}, sanity)")


if __name__ == "__main__":
    main()

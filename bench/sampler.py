"""Benchmark: the neighbour sampler's tables and epoch order at CVUSA size, time and peak host memory.

Sample4Geo's similarity refresh ranks every training ground view against every training aerial (35,532 x
35,532 on CVUSA). `cvm.data.sampling` does it in row chunks, so its working set is O(chunk x N), not N^2
(a float32 N x N matrix would be 5.0 GB). Each measurement runs in its own process so that its peak RSS
(ru_maxrss) is its own; the baseline is the same process holding only the inputs (random unit descriptors
or random coordinates), so the difference is what the table costs.

  python bench/sampler.py                 # N = 35,532, D = 1024, pool 128, chunk 512
  python bench/sampler.py --n 5000 --chunk 256
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from cvm.training.jit_choice import cpu_model



def measure(task: str, n: int, dim: int, pool: int, chunk: int, batch: int, select: int) -> dict:
    """Run one task in this process: {'seconds', 'peak_rss_mb'} (peak of the whole process)."""
    import numpy as np

    from cvm.data import sampling

    rng = np.random.default_rng(0)
    out = {}
    if task in ("inputs_descriptors", "similarity"):
        ground = rng.standard_normal((n, dim), dtype=np.float32)
        ground /= np.linalg.norm(ground, axis=1, keepdims=True)
        aerial = ground + 0.5 * rng.standard_normal((n, dim), dtype=np.float32)
        aerial /= np.linalg.norm(aerial, axis=1, keepdims=True)
        if task == "similarity":
            start = time.perf_counter()
            table = sampling.similarity_neighbours(ground, aerial, pool, chunk)
            out["seconds"] = time.perf_counter() - start
            start = time.perf_counter()
            order = sampling.neighbour_batches(n, batch, np.random.default_rng(1), table, select)
            out["epoch_order_seconds"] = time.perf_counter() - start
            out["ordered"] = int(len(order))
    else:  # GPS: CVUSA-like lat/lon scattered over the USA
        locations = np.stack([rng.uniform(25, 49, n), rng.uniform(-124, -67, n)], axis=1)
        if task == "gps":
            start = time.perf_counter()
            sampling.gps_neighbours(locations, "latlon", pool, chunk)
            out["seconds"] = time.perf_counter() - start
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=35532)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--pool", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--select", type=int, default=64)
    parser.add_argument("--task", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.task:
        print(json.dumps(measure(args.task, args.n, args.dim, args.pool, args.chunk, args.batch, args.select)))
        return
    results = {}
    for task in ("inputs_descriptors", "similarity", "inputs_locations", "gps"):
        cmd = [sys.executable, __file__, "--task", task] + [f"--{k}={getattr(args, k)}" for k in
                                                               ("n", "dim", "pool", "chunk", "batch", "select")]
        results[task] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    print(f"CPU: {cpu_model() or 'unknown CPU'}; N = {args.n}, D = {args.dim}, pool {args.pool}, chunk {args.chunk}")
    n2_gb = args.n * args.n * 4 / 1e9
    sim, base = results["similarity"], results["inputs_descriptors"]
    print(f"similarity table: {sim['seconds']:.1f} s, peak RSS {sim['peak_rss_mb']:.0f} MB, of which the "
          f"descriptors alone {base['peak_rss_mb']:.0f} MB: the table pass adds "
          f"{sim['peak_rss_mb'] - base['peak_rss_mb']:.0f} MB (an N x N float32 matrix: {n2_gb:.1f} GB)")
    print(f"epoch order (batch {args.batch}, select {args.select}): {sim['epoch_order_seconds']:.2f} s, "
          f"{sim['ordered']} of {args.n} pairs in full batches")
    gps, base = results["gps"], results["inputs_locations"]
    print(f"GPS table (great-circle): {gps['seconds']:.1f} s, peak RSS {gps['peak_rss_mb']:.0f} MB "
          f"(+{gps['peak_rss_mb'] - base['peak_rss_mb']:.0f} MB over the coordinates alone)")


if __name__ == "__main__":
    main()

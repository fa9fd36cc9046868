"""Benchmark: streamed `evaluate` against a bare tf.matmul of the same size, timed in the same run.

The baseline is the unavoidable work: one Nq x D @ D x Nr float32 matmul as a TF op, its result
materialised on the device (when it fits `--bare_budget_gb`; otherwise chunked bare matmuls of the
evaluator's chunk size, summing to the same FLOPs). `evaluate` adds the rank reduction, the top-k
indices and the host transfers of ranks. The figure to read is the per-direction ratio
(evaluate time / number of directions / bare matmul time; target <= 1.3). Contenders are interleaved
and repeated; medians and best-of times are reported (machine noise hits both; on a shared CPU the
best-of ratio and, on a CPU device, the ratio of process CPU times are the steadier figures).
Peak memory is the resident-set high-water mark above the descriptors already in memory (reset
between contenders via /proc/self/clear_refs where the kernel allows it, else the process's
ru_maxrss); on a GPU it is host memory only.

  python bench/evaluation.py [--n 8884 20000] [--dim 4096] [--directions one|both] [--repeats 2]
  python bench/evaluation.py --n 92802 --directions one      # CVACT_test size (use a GPU)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_kib() -> int:
    return _rss_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def descriptors(n: int, dim: int, seed: int = 0):
    """Unit-norm aerial descriptors and correlated ground descriptors (realistic-ish rank distribution)."""
    rng = np.random.default_rng(seed)
    aerial = rng.standard_normal((n, dim), dtype=np.float32)
    aerial /= np.linalg.norm(aerial, axis=1, keepdims=True)
    ground = aerial + rng.standard_normal((n, dim), dtype=np.float32) * float(1.5 / np.sqrt(dim))
    ground /= np.linalg.norm(ground, axis=1, keepdims=True)
    return ground, aerial


def bare_matmul(query_t, reference_t, chunk_size: int | None):
    """The baseline: one materialised matmul (chunk_size None) or chunked ones of the same total FLOPs."""
    import tensorflow as tf

    if chunk_size is None:
        sims = tf.matmul(query_t, reference_t, transpose_b=True)
        float(sims[0, 0])  # synchronise: the whole result must exist
        del sims
    else:
        for lo in range(0, int(query_t.shape[0]), chunk_size):
            sims = tf.matmul(query_t[lo : lo + chunk_size], reference_t, transpose_b=True)
            float(sims[0, 0])
            del sims


def timed(fn):
    """(wall seconds, process CPU seconds) of fn(); CPU time is robust to other processes on a shared CPU."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(n: int, dim: int, directions: tuple, repeats: int, budget_mb: int, bare_budget_gb: float, device):
    import tensorflow as tf

    from cvm.evaluation import evaluate
    from cvm.evaluation.recall import chunk_size_for, default_device

    device = device or default_device()
    ground, aerial = descriptors(n, dim)
    chunk = min(chunk_size_for(n, budget_mb << 20), n)
    materialise = n * n * 4 <= bare_budget_gb * (1 << 30)
    with tf.device(device):
        ground_t, aerial_t = tf.constant(ground), tf.constant(aerial)
    settings = dict(directions=directions, memory_budget_bytes=budget_mb << 20, device=device)
    # Warm-up: trace the evaluator's functions and start the matmul thread pools.
    evaluate(ground[:256], aerial[:256], **settings)
    bare_matmul(ground_t[:256], aerial_t, None)

    base = _rss_kib("VmRSS") or 0
    eval_times, bare_times, eval_cpu, bare_cpu, eval_peaks, bare_peaks = [], [], [], [], [], []
    can_reset = True
    for _ in range(repeats):
        can_reset = reset_peak() and can_reset
        wall, cpu = timed(lambda: evaluate(ground, aerial, **settings))
        eval_times.append(wall)
        eval_cpu.append(cpu)
        eval_peaks.append(peak_kib() - base)
        can_reset = reset_peak() and can_reset
        wall, cpu = timed(lambda: bare_matmul(ground_t, aerial_t, None if materialise else chunk))
        bare_times.append(wall)
        bare_cpu.append(cpu)
        bare_peaks.append(peak_kib() - base)

    eval_median = statistics.median(eval_times)
    bare_median = statistics.median(bare_times)
    per_direction = eval_median / len(directions)
    gflop = 2.0 * n * n * dim / 1e9
    print(f"N = {n:,} queries x {n:,} references, D = {dim}, device {device}, chunk {chunk} queries "
          f"({budget_mb} MiB budget)")
    print(f"  descriptors in memory: {2 * ground.nbytes / 2**30:.2f} GiB (NumPy) + the same as TF constants")
    print(f"  evaluate ({' + '.join(directions)}): median {eval_median:.2f} s of {repeats} "
          f"[{', '.join(f'{t:.2f}' for t in eval_times)}] -> {per_direction:.2f} s per direction")
    kind = "one materialised tf.matmul" if materialise else f"chunked tf.matmuls ({chunk} rows each)"
    print(f"  bare {kind}: median {bare_median:.2f} s [{', '.join(f'{t:.2f}' for t in bare_times)}] "
          f"= {gflop / bare_median:.0f} GFLOP/s")
    peak_note = "" if can_reset else " (high-water mark not resettable: process maximum)"
    print(f"  peak RSS above the descriptors: evaluate {max(eval_peaks) / 2**20:.2f} GiB, "
          f"bare matmul {max(bare_peaks) / 2**20:.2f} GiB{peak_note}")
    best_ratio = min(eval_times) / len(directions) / min(bare_times)
    print(f"  RATIO per direction (evaluate / bare matmul), wall time: median {per_direction / bare_median:.2f}, "
          f"best-of {best_ratio:.2f}  (target <= 1.3)")
    if "CPU" in device.upper():
        cpu_ratio = statistics.median(eval_cpu) / len(directions) / statistics.median(bare_cpu)
        eval_list = ", ".join(f"{t:.1f}" for t in eval_cpu)
        bare_list = ", ".join(f"{t:.1f}" for t in bare_cpu)
        print(f"  RATIO per direction, process CPU time (robust to other load on a shared CPU): {cpu_ratio:.2f} "
              f"[evaluate {eval_list} s; bare {bare_list} s]")
    return per_direction / bare_median


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[8884, 20000],
                        help="gallery sizes (Nq = Nr); the defaults run in ~4 minutes on 2 CPU cores")
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--directions", choices=["both", "one"], default="one",
                        help="both: ground->aerial and aerial->ground (two passes); one: ground->aerial")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory_budget_mb", type=int, default=1024, help="evaluator's per-chunk scratch")
    parser.add_argument("--bare_budget_gb", type=float, default=8.0,
                        help="materialise the baseline matmul when its result fits, else chunk it")
    parser.add_argument("--device", help="TF device (default: first GPU, else CPU)")
    args = parser.parse_args()

    import tensorflow as tf

    directions = ("ground_to_aerial", "aerial_to_ground") if args.directions == "both" else ("ground_to_aerial",)
    gpus = len(tf.config.list_physical_devices("GPU"))
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, GPUs: {gpus}")
    for n in args.n:
        measure(n, args.dim, directions, args.repeats, args.memory_budget_mb, args.bare_budget_gb, args.device)


if __name__ == "__main__":
    main()

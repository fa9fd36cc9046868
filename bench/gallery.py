"""Benchmark: gallery embedding cells/s against the bare model forward, and the vector index at scale.

Part 1 (embedding): a GeoTIFF of the synthetic town cut into cells (read, resampled, embedded, written to
shards by cvm.geo.gallery.build_gallery, the local runner) against the model's forward pass alone on the
very same cell batches, already in memory. The figure to read is the ratio (target >= 0.8).

Part 2 (index): --n unit vectors of --dim dimensions (default 10^6 x 1024, generated shard by shard from a
seed so memory holds only the index; --data random: isotropic Gaussian, the worst case for a graph or a
quantizer; --data clustered: --clusters centres, each vector a centre plus isotropic noise of norm
--spread), each index of --kinds (IVF-Flat, IVF-PQ, HNSW) built, then queried with noisy copies of gallery
vectors: query latency (one query at a time, and batched, for each --efsearch / --nprobe on the same index),
recall@10 against exact search (a streaming scan of the same shards), build time and the peak resident memory of the build (VmHWM, reset before each build where
the kernel allows; else the process's peak so far), with the load average beside each figure.

Part 3 (--evidence RUN,RUN...): for each trained run on the synthetic world, the town of its world
(cvm.data.synthetic.town, held-out panorama locations), a gallery of 172.5 m cells every --stride_m of the
town's orthophoto GeoTIFF, and the share of panoramas whose top-1 / any top-5 hit lies within 25 m and
50 m of the truth, against chance (a uniformly random cell, or 5 distinct ones).

  python bench/gallery.py [--method safa] [--town_m 600] [--stride_m 20] [--batch_size 32]
      [--n 1000000] [--dim 1024] [--kinds ivfflat,ivfpq,hnsw] [--queries 1000] [--data random|clustered]
      [--efsearch 64,128,256] [--nprobe 16,32,64,128]
      [--clusters 1000] [--spread 1.0] [--skip_embed] [--skip_index]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def peak_mb() -> float:
    """Peak RSS in MB: VmHWM (resettable, see reset_peak), else getrusage (the process's lifetime peak)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def rss_mb() -> float:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs), so a build's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def load() -> str:
    try:
        return "load " + " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "load ?"


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def embed_bench(args) -> None:
    from cvm.data.images import preset
    from cvm.data.synthetic.town import write_town
    from cvm.geo.gallery import build_gallery
    from cvm.geo.sources import GeoTiffSource
    from cvm.geo.towers import KerasTowers
    from cvm.models import build_model

    spec = preset("small")
    model = build_model(args.method, backbone_width=0.125, init="he", ground_size=spec.ground_size,
                        aerial_size=spec.aerial_size)
    towers = KerasTowers(model, spec)
    work = tempfile.mkdtemp(prefix="cvm_bench_gallery_")
    try:
        write_town(os.path.join(work, "town"), seed=0, size_m=args.town_m, panos=1, photos=1, progress=False)
        source = GeoTiffSource([os.path.join(work, "town", "orthophoto.tif")], 172.5, args.stride_m)
        # The same batches, read once into memory, for the bare forward.
        cells = [img for _, img, _ in source.cells(0, len(source), towers.cell_px) if img is not None]
        batches = [np.stack(cells[i:i + args.batch_size]) for i in range(0, len(cells), args.batch_size)]
        for b in {b.shape[0]: b for b in batches}.values():  # trace every batch shape once, for both sides
            towers.embed_aerial(b)
        start = time.perf_counter()
        for b in batches:
            towers.embed_aerial(b)
        bare = len(cells) / (time.perf_counter() - start)
        rates = []
        for r in range(args.repeats):
            summary = build_gallery(source, towers, os.path.join(work, f"g{r}"), batch_size=args.batch_size,
                                    progress=False, index="exact")
            rates.append(summary["cells"] / summary["embed_seconds"])
        rate = float(np.median(rates))
        print(f"embedding ({args.method}, preset small, aerial {spec.aerial_size}, {len(cells)} cells of 172.5 m "
              f"every {args.stride_m:g} m, batch {args.batch_size}) on {cpu_name()}:")
        print(f"  bare forward on the same batches  {bare:9.1f} cells/s")
        print(f"  cvm gallery build (read + resample + embed + shards) {rate:9.1f} cells/s "
              f"(median of {args.repeats})")
        print(f"  ratio {rate / bare:.2f}x (target >= 0.8)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def index_bench(args) -> None:
    import faiss

    from cvm.geo import index as index_lib

    n, d, shard = args.n, args.dim, 50_000

    centres = None
    if args.data == "clustered":
        centres = np.random.default_rng([args.seed, 0xC1]).standard_normal((args.clusters, d)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def shards():
        for s, lo in enumerate(range(0, n, shard)):
            rng = np.random.default_rng([args.seed, s])
            x = rng.standard_normal((min(shard, n - lo), d), dtype=np.float32)
            if centres is not None:  # noise of norm ~spread around a random centre: cos to it ~ 1/sqrt(1+spread^2)
                x *= np.float32(args.spread / np.sqrt(d))
                x += centres[rng.integers(0, len(centres), len(x))]
            yield x / np.linalg.norm(x, axis=1, keepdims=True)

    what = "random" if centres is None else f"clustered ({args.clusters} centres, spread {args.spread:g})"
    print(f"index: {n} {what} unit {d}-d vectors, {args.queries} queries, {faiss.omp_get_max_threads()} threads, "
          f"on {cpu_name()}, {load()}", flush=True)
    t = time.perf_counter()
    queries = index_lib.sample_queries(shards, n, args.queries, seed=args.seed)
    exact = index_lib.exact_topk(queries, shards, 10)
    exact_s = time.perf_counter() - t
    print(f"  exact (streaming scan, incl. generating the vectors)  {exact_s / len(queries) * 1e3:8.2f} ms/query "
          f"batched, {load()}", flush=True)
    for kind in args.kinds.split(","):
        before = rss_mb()
        own = reset_peak()
        t = time.perf_counter()
        index, params = index_lib.build(kind, d, n, shards)
        build_s = time.perf_counter() - t
        build_peak = peak_mb()
        print(f"  {kind:6s} {params}: build {build_s:7.1f} s, build peak RSS {build_peak:.0f} MB "
              f"({'own' if own else 'process lifetime'}; {before:.0f} MB before), {load()}", flush=True)
        # The search-time parameter swept on the same index (the recorded default among them).
        key = {"hnsw": "efSearch", "ivfpq": "nprobe", "ivfflat": "nprobe"}.get(kind)
        values = sorted({int(params[key]), *(int(v) for v in getattr(args, key.lower()).split(","))}) if key else [None]
        for value in values:
            if key:
                index_lib.apply_search_params(index, {key: value})
            t = time.perf_counter()
            _, approx = index.search(queries, 10)
            batched = (time.perf_counter() - t) / len(queries)
            t = time.perf_counter()
            for q in queries[:100]:
                index.search(q[None], 10)
            single = (time.perf_counter() - t) / min(100, len(queries))
            recall = index_lib.recall_at(approx, exact, 10)
            # 1-recall@10: the exact nearest neighbour (for these queries almost always the gallery vector the
            # query is a noisy copy of, i.e. the right cell) among the approximate top 10.
            first = float(np.mean([e[0] in a[:10] for a, e in zip(approx, exact)]))
            mark = " (default)" if key and value == int(params[key]) else ""
            print(f"    {key or 'search'} {value}{mark}: {single * 1e3:7.2f} ms/query single, {batched * 1e3:7.3f} "
                  f"ms/query batched, recall@10 vs exact {recall:.3f}, 1-recall@10 {first:.3f}, {load()}", flush=True)
        del index


def evidence(args) -> None:
    from cvm.data.synthetic.town import read_locations, write_town
    from cvm.geo.gallery import build_gallery
    from cvm.geo.localizer import Localizer
    from cvm.geo.sources import GeoTiffSource
    from cvm.geo.towers import KerasTowers
    from cvm.training.restore import load_encoder

    work = tempfile.mkdtemp(prefix="cvm_bench_evidence_")
    try:
        for run in args.evidence.split(","):
            encoder, config, described = load_encoder(run, "best")
            spec = config.image_spec()
            towers = KerasTowers(encoder, spec, fov_deg=config.fov_deg, description=described)
            town = os.path.join(work, os.path.basename(run.rstrip("/")))
            write_town(town, seed=config.synthetic_seed, pairs=config.synthetic_pairs, panos=args.panos, photos=0,
                       pano_size=spec.ground_size, progress=False)
            source = GeoTiffSource([os.path.join(town, "orthophoto.tif")], 172.5, args.stride_m)
            summary = build_gallery(source, towers, os.path.join(town, "gallery"), progress=False)
            loc = Localizer(os.path.join(town, "gallery"), towers)
            rows = read_locations(town)
            hits = loc.locate_many([os.path.join(town, r["file"]) for r in rows], k=5)
            cx, cy = loc.meta["x"], loc.meta["y"]
            lines = []
            for radius in (25.0, 50.0):
                top1 = np.mean([np.hypot(h[0].x - r["easting"], h[0].y - r["northing"]) <= radius
                                for h, r in zip(hits, rows)])
                top5 = np.mean([min(np.hypot(x.x - r["easting"], x.y - r["northing"]) for x in h) <= radius
                                for h, r in zip(hits, rows)])
                near = np.array([np.mean(np.hypot(cx - r["easting"], cy - r["northing"]) <= radius) for r in rows])
                # Chance: a random cell (top-1); 5 distinct random cells (top-5), ~1 - (1 - p)^5.
                lines.append(f"    within {radius:.0f} m: top-1 {top1:6.1%} (chance {near.mean():5.1%}), "
                             f"top-5 {top5:6.1%} (chance {np.mean(1 - (1 - near) ** 5):5.1%})")
            print(f"{config.method} ({described}): {len(rows)} held-out panoramas, gallery {summary['cells']} "
                  f"cells of 172.5 m every {args.stride_m:g} m over a {config.synthetic_pairs}-pair world")
            print("\n".join(lines))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="safa")
    p.add_argument("--town_m", type=float, default=600.0)
    p.add_argument("--stride_m", type=float, default=20.0)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--kinds", default="ivfflat,ivfpq,hnsw")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--efsearch", default="64,128,256", help="HNSW efSearch values to query the built index with")
    p.add_argument("--nprobe", default="16,32,64,128", help="IVF nprobe values to query the built index with")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", choices=("random", "clustered"), default="random")
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--spread", type=float, default=1.0)
    p.add_argument("--skip_embed", action="store_true")
    p.add_argument("--skip_index", action="store_true")
    p.add_argument("--evidence", default=None, help="comma-separated run folders: only the localisation evidence")
    p.add_argument("--panos", type=int, default=100)
    args = p.parse_args()
    if args.evidence:
        evidence(args)
        return
    if not args.skip_embed:
        embed_bench(args)
    if not args.skip_index:
        index_bench(args)


if __name__ == "__main__":
    main()

"""The FAISS index of a gallery: exact inner product, or IVF-Flat / IVF-PQ / HNSW above a size (or by choice).

Descriptors are unit rows, so inner product is cosine similarity. `auto` keeps exact search up to
EXACT_MAX vectors (a flat scan of 10^5 x 1024 floats takes ~10 ms a query on one core), IVF-Flat while the
vectors fit FLAT_BYTES_MAX (exact scores over the probed lists), IVF-PQ beyond (compressed codes). HNSW only
on request: at 10^6 random 1024-d vectors it took 55 min and 7.2 GB to build on 2 cores and found the query's
source in its top 10 for 66 % of queries, where IVF-PQ took 4 min, 1.9 GB and 99.5 % (bench/gallery.py,
README "Index at scale"); real descriptors are kinder to graphs, but a default must hold in the worst case.
Vectors are added shard by shard; the recall@10 of an approximate index against exact search is measured at build on
noisy copies of gallery vectors, the exact top-10 computed by a streaming scan of the shards (O(shard)).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import numpy as np

from cvm.errors import CvmError

KINDS = ("auto", "exact", "ivfflat", "ivfpq", "hnsw")
IVF_KINDS = ("ivfflat", "ivfpq")
EXACT_MAX = 100_000
# float32 vectors an IVF-Flat index may hold (auto): 10^6 x 1024, whose build peaked at 6 GB (FAISS grows each
# list's vector as it is filled); IVF-PQ's 64-byte codes took 1.9 GB at the same size.
FLAT_BYTES_MAX = 4 << 30
ADD_BLOCK = 4096  # rows per IVF add() call, see build()


def choose(kind: str, n: int, d: int) -> str:
    if kind not in KINDS:
        raise CvmError(f"--index must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind != "auto":
        return kind
    return "exact" if n <= EXACT_MAX else "ivfflat" if 4 * n * d <= FLAT_BYTES_MAX else "ivfpq"


def default_params(kind: str, n: int, d: int) -> dict:
    if kind == "hnsw":
        return {"M": 32, "efConstruction": 200, "efSearch": 128}
    if kind in IVF_KINDS:
        nlist = int(min(max(16, 4 * math.sqrt(max(n, 1))), 65536, max(1, n // 39)))
        # Probe ~3 % of the lists: at 10^6 x 1024 (nlist 4000) IVF-PQ with nprobe 128 found the query's source in
        # the top 10 for 99.5 % of queries against 96.4 % at 32, for 2.4 instead of 1.2 ms a query (bench/gallery.py).
        probe = {"nlist": nlist, "nprobe": min(nlist, max(32, nlist // 32))}
        if kind == "ivfflat":
            return probe
        m = next(m for m in (64, 48, 32, 16, 8, 4, 2, 1) if d % m == 0 and d // m >= 4 or m == 1)  # >= 4 dims per code
        return {"nlist": nlist, "m": m, "nbits": 8, "nprobe": probe["nprobe"]}
    return {}


def build(kind: str, d: int, n: int, shards: Callable[[], Iterable[np.ndarray]], params: Optional[dict] = None):
    """(faiss index, params) with every vector of `shards()` (an iterable of [b, d] float32) added in order."""
    import faiss

    params = dict(default_params(kind, n, d), **(params or {}))
    if kind == "exact":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, int(params["M"]), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(params["efConstruction"])
        index.hnsw.efSearch = int(params["efSearch"])
    elif kind in IVF_KINDS:
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivfflat":
            index = faiss.IndexIVFFlat(quantizer, d, int(params["nlist"]), faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFPQ(quantizer, d, int(params["nlist"]), int(params["m"]), int(params["nbits"]),
                                     faiss.METRIC_INNER_PRODUCT)
        # Train on up to 64 vectors per list (FAISS warns below 39), taken from the first shards.
        want = max(64 * int(params["nlist"]), 2 ** int(params.get("nbits", 0)) * 40)
        # Copied into one preallocated array: a list of slices would keep whole shards alive and then be
        # concatenated into a second copy.
        sample, have = np.empty((max(1, min(want, n)), d), np.float32), 0
        for x in shards():
            take = min(len(x), len(sample) - have)
            sample[have:have + take] = x[:take]
            have += take
            if have >= len(sample):
                break
        index.train(sample[:have])
        sample = None  # 1 GB at 10^6 x 1024, not to be held while the vectors are added
        index.nprobe = int(params["nprobe"])
    else:
        raise CvmError(f"unknown index kind {kind!r}")
    # IVF-PQ encodes a whole add() call's residuals at once through [rows, m, 256] float distance tables
    # (FAISS blocks at 32,768 rows: 2.1 GB at m 64); adding 4,096 rows at a time caps that at 268 MB. IVF-Flat
    # takes the same blocks (each add() assigns its rows to lists through a [rows, nlist] score block).
    for x in shards():
        step = ADD_BLOCK if kind in IVF_KINDS else max(len(x), 1)
        for lo in range(0, len(x), step):
            index.add(np.ascontiguousarray(x[lo:lo + step], np.float32))
    return index, params


def apply_search_params(index, params: dict) -> None:
    """Search-time parameters of a loaded index (FAISS does not always store them)."""
    import faiss

    if "efSearch" in params and hasattr(index, "hnsw"):
        index.hnsw.efSearch = int(params["efSearch"])
    if "nprobe" in params:
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])


def exact_topk(queries: np.ndarray, shards: Callable[[], Iterable[np.ndarray]], k: int) -> np.ndarray:
    """[Q, k] ids of the exact top-k inner products, scanning the shards once (memory O(shard))."""
    q = np.asarray(queries, np.float32)
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    offset = 0
    for x in shards():
        if len(x):
            s = q @ np.asarray(x, np.float32).T
            ids = np.broadcast_to(np.arange(offset, offset + len(x)), s.shape)
            s, ids = np.concatenate([best_s, s], 1), np.concatenate([best_i, ids], 1)
            top = np.argsort(-s, axis=1, kind="stable")[:, :k]
            best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(ids, top, 1)
        offset += len(x)
    return best_i


def sample_queries(shards: Callable[[], Iterable[np.ndarray]], n: int, count: int = 1000, noise: float = 0.5,
                   seed: int = 0) -> np.ndarray:
    """Noisy unit copies of a seeded sample of gallery vectors (queries near, not at, gallery points)."""
    rng = np.random.default_rng([seed, 0x1DE8])
    pick = np.sort(rng.choice(n, size=min(count, n), replace=False))
    out, offset = [], 0
    for x in shards():
        sel = pick[(pick >= offset) & (pick < offset + len(x))] - offset
        if len(sel):
            out.append(np.asarray(x, np.float32)[sel])
        offset += len(x)
    q = np.concatenate(out)
    q = q + rng.standard_normal(q.shape).astype(np.float32) * (noise / math.sqrt(q.shape[1]))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def recall_at(approx: np.ndarray, exact: np.ndarray, k: int = 10) -> float:
    """Mean share of the exact top-k found in the approximate top-k."""
    hits = [len(set(a[:k].tolist()) & set(e[:k].tolist())) / min(k, len(e)) for a, e in zip(approx, exact)]
    return float(np.mean(hits)) if hits else float("nan")


def measure_recall(index, shards, n: int, k: int = 10, count: int = 1000, seed: int = 0) -> float:
    queries = sample_queries(shards, n, count, seed=seed)
    exact = exact_topk(queries, shards, min(k, n))
    _, approx = index.search(queries, min(k, n))
    return recall_at(approx, exact, min(k, n))

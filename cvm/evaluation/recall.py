"""Streaming recall@K for cross-view retrieval, with the originals' ranking convention made explicit.

Protocol (seeds.md 1.9, anchors.md 2.2-2.3):
  * distance d = 2 - 2 <q, r> between L2-normalised descriptors; we rank by similarity <q, r> instead,
    which orders references identically (see "Precision" below);
  * rank_i = number of references *strictly* closer to query i than its true match, so a reference
    exactly as close as the true match does not push it down (ties count in the query's favour, as in
    every original); Recall@K = mean(rank < K);
  * top-1% is reported with both conventions found in the code bases, N = number of references:
      "r@1%_floor"         K = floor(N/100)      CVFT/SAFA test scripts, DSM, Sample4Geo (88 on 8,884)
      "r@1%_floor_plus_1"  K = floor(N/100) + 1  CVM-Net, Regmi, CVFT training validation, L2LTR, TransGeo (89)
    (the originals' int(0.01 * N) equals N // 100 for every N); for N < 100 the floor convention gives
    K = 0 and a recall of 0 by definition.

Streaming: the Nq x Nr similarity matrix is never built on the host. Query chunks are multiplied
with the references on the device (GPU when present) and immediately reduced there to ranks (and the
top-k indices kept for retrieval grids); only [chunk] integers come back. The chunk size follows a
memory budget, so CVACT_test (92,802 x 4,096) runs in a few GB.

CVACT_test radius protocols (`recall_within_radius`, `evaluate(radii=...)`): a query succeeds at K if
any of its top-K references lies within `radius_m` metres of the query's location:
  * radius 0: the same id only (the positional / one-to-one protocol of Sample4Geo, L2LTR, GeoDTR+);
  * radius 5: OriCNN's official RecallGeo protocol;
  * radius 25: the "same place" radius of the OriCNN/SAFA CVACT loaders (and of the training mask).
Computed exactly under the same tie convention without materialising any top-K list: the first success
comes from the highest-scoring reference within the radius (the true match is always one), so
radius_rank_i = number of references strictly more similar than that best near reference, and success
at K <=> radius_rank_i < K. Distances use "<= radius" on planar (UTM) metres.

Precision: similarities are float32 (float16/bfloat16 descriptors are cast first; TF32 matmuls are
switched off while evaluating unless `allow_tf32=True`). The originals computed float32
`2 - 2 S G^T` and compared distances; `2 - 2 s` is exact for s in [0.5, 1] and monotone elsewhere, so the
two conventions can disagree only on exact ties (where float32 rounding of 2 - 2 s merges two
distinct similarities below 0.5), besides the summation order of the matmul itself.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from cvm.errors import CvmError

DIRECTIONS = ("ground_to_aerial", "aerial_to_ground")
RANKING_CONVENTION = (
    "strict <: rank = number of references strictly closer than the true match; ties count as success"
)
DEFAULT_MEMORY_BUDGET_BYTES = 1 << 30  # per-chunk device scratch (similarities and their reductions)
DEFAULT_TOP_K = 10  # indices kept per query for retrieval grids


def top1_percent_k(n_references: int) -> dict:
    """The K of both top-1% conventions for N references: {"floor": N // 100, "floor_plus_1": N // 100 + 1}."""
    k_floor = int(n_references) // 100
    return {"floor": k_floor, "floor_plus_1": k_floor + 1}


def metrics_from_ranks(ranks, n_references: int, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@K (fractions in [0, 1]) for each K in `ks` and both top-1% conventions, with their K values."""
    ranks = np.asarray(ranks)
    metrics = {f"r@{k}": float(np.mean(ranks < k)) for k in ks}
    k1 = top1_percent_k(n_references)
    metrics["r@1%_floor"] = float(np.mean(ranks < k1["floor"]))
    metrics["r@1%_floor_plus_1"] = float(np.mean(ranks < k1["floor_plus_1"]))
    metrics["k_1%_floor"] = k1["floor"]
    metrics["k_1%_floor_plus_1"] = k1["floor_plus_1"]
    return metrics


def recall_curve(ranks, max_k: int) -> np.ndarray:
    """Recall@K for K = 1..max_k (index K-1), from per-query ranks."""
    ranks = np.asarray(ranks, dtype=np.int64)
    counts = np.bincount(np.minimum(ranks, max_k), minlength=max_k + 1)[:max_k]
    return np.cumsum(counts) / max(len(ranks), 1)


def chunk_size_for(n_references: int, memory_budget_bytes: int, n_radii: int = 0) -> int:
    """Queries per chunk so that the chunk's [chunk, Nr] scratch tensors fit the memory budget."""
    # Per query row: float32 sims, bool + int32 comparison, top-k scratch (~16 B per reference);
    # each radius adds a masked copy of the sims and its comparison (~12 B), distances once (~8 B).
    bytes_per_row = n_references * (16 + (8 + 12 * n_radii if n_radii else 0))
    chunk = max(1, int(memory_budget_bytes) // max(bytes_per_row, 1))
    return chunk - chunk % 64 if chunk > 64 else chunk  # round to friendly matmul tiles


def default_device() -> str:
    return "/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0"


@contextlib.contextmanager
def _tf32(enabled: bool):
    """Temporarily set TF32 matmuls (on by default in TF on Ampere+ GPUs; rounds inputs to 10 mantissa bits)."""
    previous = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(enabled)
    try:
        yield
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(previous)


def _as_matrix(x):
    """NumPy arrays and tensors pass through (sliced per chunk later); anything else becomes float32 NumPy."""
    return x if isinstance(x, (np.ndarray, tf.Tensor)) else np.asarray(x, dtype=np.float32)


def _shape2(x, name: str) -> tuple:
    shape = tuple(int(s) for s in x.shape)
    if len(shape) != 2:
        raise CvmError(f"{name} descriptors must be a [N, D] matrix, got shape {shape}")
    if shape[0] == 0:
        raise CvmError(f"{name} descriptors are empty: nothing to evaluate")
    return shape


def _check_positives(positives, n_queries: int, n_references: int) -> np.ndarray:
    if positives is None:
        if n_queries != n_references:
            raise CvmError(
                f"positional ground truth needs as many queries as references, got {n_queries} and "
                f"{n_references}: pass `positives` (the index of each query's true reference)"
            )
        return np.arange(n_queries, dtype=np.int64)
    positives = np.asarray(positives)
    if positives.shape != (n_queries,) or not np.issubdtype(positives.dtype, np.integer):
        raise CvmError(
            f"positives must be {n_queries} integer reference indices, got {positives.dtype} {positives.shape}"
        )
    if positives.min() < 0 or positives.max() >= n_references:
        raise CvmError(
            f"positives must index the {n_references} references, "
            f"got values in [{positives.min()}, {positives.max()}]"
        )
    return positives.astype(np.int64)


def _check_locations(locations, n: int, name: str) -> np.ndarray:
    locations = np.asarray(locations, dtype=np.float64)
    if locations.shape != (n, 2):
        raise CvmError(f"{name} locations must be [{n}, 2] planar metres (UTM), got shape {locations.shape}")
    if not np.all(np.isfinite(locations)):
        raise CvmError(f"{name} locations contain NaN or infinite values")
    return locations


@functools.lru_cache(maxsize=16)  # one traced function per configuration, reused across evaluations
def _make_kernel(top_k: int, radii_sq: tuple):
    """The per-chunk device computation: sims, then ranks (positional + per radius) and top-k indices."""

    # A fixed signature: one trace serves every chunk and gallery size (no retracing in training loops).
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None], tf.float32),  # query chunk
            tf.TensorSpec([None, None], tf.float32),  # references
            tf.TensorSpec([None], tf.int64),  # true reference of each query
            tf.TensorSpec([None, 2], tf.float32),  # query locations ([0, 2] without radii)
            tf.TensorSpec([None, 2], tf.float32),  # reference locations
        ]
    )
    def kernel(query, reference, positives, query_loc, reference_loc):
        sims = tf.matmul(query, reference, transpose_b=True)  # [chunk, Nr]
        # The true match's similarity is read from the same matmul so that it never outranks itself.
        true_sim = tf.gather(sims, positives, axis=1, batch_dims=1)
        columns = [tf.reduce_sum(tf.cast(sims > true_sim[:, None], tf.int32), axis=1)]
        if radii_sq:
            dist_sq = tf.square(query_loc[:, 0:1] - reference_loc[None, :, 0]) + tf.square(
                query_loc[:, 1:2] - reference_loc[None, :, 1]
            )
            for radius_sq in radii_sq:
                near = tf.where(dist_sq <= radius_sq, sims, tf.constant(-np.inf, sims.dtype))
                best = tf.maximum(tf.reduce_max(near, axis=1), true_sim)  # the true match always counts
                columns.append(tf.reduce_sum(tf.cast(sims > best[:, None], tf.int32), axis=1))
        if top_k:
            topk = tf.math.top_k(sims, k=top_k, sorted=True).indices
        else:
            topk = tf.zeros([tf.shape(sims)[0], 0], tf.int32)
        finite = tf.reduce_all(tf.math.is_finite(query))
        return tf.stack(columns, axis=1), topk, finite

    return kernel


def stream_ranks(
    query,
    reference,
    *,
    positives=None,
    radii_m: Sequence[float] = (),
    query_locations=None,
    reference_locations=None,
    top_k: int = DEFAULT_TOP_K,
    chunk_size: Optional[int] = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    device: Optional[str] = None,
    allow_tf32: bool = False,
    progress: bool = False,
) -> dict:
    """One streamed pass query -> reference: per-query ranks, ranks within each radius, top-k indices.

    Returns {"ranks": int64 [Nq], "radius_ranks": {radius: int64 [Nq]}, "topk_indices": int32 [Nq, k],
    "n_queries", "n_references"}. Radii must be > 0 (radius 0 is `ranks`).
    """
    query, reference = _as_matrix(query), _as_matrix(reference)
    n_queries, dim = _shape2(query, "query")
    n_references, ref_dim = _shape2(reference, "reference")
    if dim != ref_dim:
        raise CvmError(f"query and reference descriptors differ in size: {dim} vs {ref_dim} (same model for both?)")
    positives = _check_positives(positives, n_queries, n_references)
    radii_m = tuple(float(r) for r in radii_m)
    if any(r <= 0 for r in radii_m):
        raise CvmError(f"radii for location-based recall must be > 0 metres (0 is the positional match), got {radii_m}")
    q_loc = r_loc = None
    if radii_m:
        if query_locations is None or reference_locations is None:
            raise CvmError(f"recall within {radii_m} m needs query and reference locations (UTM metres)")
        q_loc = _check_locations(query_locations, n_queries, "query")
        r_loc = _check_locations(reference_locations, n_references, "reference")
        # Centre in float64 before the float32 cast: UTM northings (~6e6 m) keep only ~0.5 m in float32.
        origin = np.concatenate([q_loc, r_loc]).mean(axis=0)
        q_loc = (q_loc - origin).astype(np.float32)
        r_loc = (r_loc - origin).astype(np.float32)
    top_k = min(int(top_k), n_references)
    if chunk_size is None:
        chunk_size = chunk_size_for(n_references, memory_budget_bytes, len(radii_m))
    chunk_size = max(1, min(int(chunk_size), n_queries))
    device = device or default_device()
    kernel = _make_kernel(top_k, tuple(r * r for r in radii_m))

    rank_chunks, topk_chunks = [], []
    starts = range(0, n_queries, chunk_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="ranking", unit="chunk")
    def collect(outputs) -> None:
        ranks, topk, finite = outputs
        if not bool(finite):
            # NaN similarities compare False and would rank every such query first.
            raise CvmError("query descriptors contain NaN or infinite values (diverged model or bad checkpoint?)")
        rank_chunks.append(ranks.numpy())
        topk_chunks.append(topk.numpy())

    with _tf32(allow_tf32), tf.device(device):
        # tf.identity copies onto the device (convert_to_tensor alone leaves NumPy data in host memory,
        # which would be re-sent to a GPU for every chunk); done once for the references.
        reference_t = tf.identity(tf.cast(tf.convert_to_tensor(reference), tf.float32))
        if not bool(tf.reduce_all(tf.math.is_finite(reference_t))):
            raise CvmError("reference descriptors contain NaN or infinite values (diverged model or bad checkpoint?)")
        no_locations = tf.zeros([0, 2], tf.float32)
        r_loc_t = no_locations if r_loc is None else tf.identity(tf.constant(r_loc))
        pending = None
        for start in starts:
            stop = min(start + chunk_size, n_queries)
            query_t = tf.cast(tf.convert_to_tensor(query[start:stop]), tf.float32)
            q_loc_t = no_locations if q_loc is None else tf.constant(q_loc[start:stop])
            outputs = kernel(query_t, reference_t, tf.constant(positives[start:stop]), q_loc_t, r_loc_t)
            # Read the previous chunk only now: a GPU computes this chunk while the host waits on that one.
            if pending is not None:
                collect(pending)
            pending = outputs
        collect(pending)
    ranks = np.concatenate(rank_chunks).astype(np.int64)
    return {
        "ranks": ranks[:, 0],
        "radius_ranks": {r: ranks[:, 1 + i] for i, r in enumerate(radii_m)},
        "topk_indices": np.concatenate(topk_chunks),
        "n_queries": n_queries,
        "n_references": n_references,
    }


# The keywords every streamed entry point passes on to `stream_ranks` unchanged; their defaults and
# meaning live there once (top_k: indices kept per query; chunk_size: queries per device step, None =
# from memory_budget_bytes; device: None = the first GPU, else the CPU; allow_tf32: faster Ampere+
# matmuls, ~1e-3 relative error on similarities, process-wide while evaluating; progress: a tqdm bar).
STREAMING_KEYWORDS = ("top_k", "chunk_size", "memory_budget_bytes", "device", "allow_tf32", "progress")


def streaming_options(caller: str, options: dict) -> dict:
    """OPTIONS (an entry point's **streaming) checked to be `stream_ranks` keywords, as a TypeError names
    an unexpected keyword of CALLER."""
    unknown = sorted(set(options) - set(STREAMING_KEYWORDS))
    if unknown:
        raise TypeError(f"{caller}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))} "
                        f"(streaming options: {', '.join(STREAMING_KEYWORDS)})")
    return options


def _one_direction(ranks, streamed: dict, ks: Sequence[int], **first) -> dict:
    """The result of a one-direction entry point: the metrics of RANKS, FIRST, then counts, ranks, top-k."""
    result = metrics_from_ranks(ranks, streamed["n_references"], ks)
    result.update(first)
    result.update(n_queries=streamed["n_queries"], n_references=streamed["n_references"], ranks=ranks,
                  topk_indices=streamed["topk_indices"])
    return result


def recall_at_k(query, reference, ks: Sequence[int] = (1, 5, 10), *, positives=None, **streaming) -> dict:
    """Recall@K of query -> reference retrieval (one direction), streamed.

    Args:
      query: [Nq, D] query descriptors (ground for ground->aerial), NumPy or tensor, any float dtype.
      reference: [Nr, D] reference descriptors (aerial).
      ks: the K of the reported Recall@K (both top-1% conventions are always added).
      positives: index of each query's true reference; None = positional (query i <-> reference i).
      **streaming: `stream_ranks`' keywords (STREAMING_KEYWORDS), e.g. top_k=0 keeps no indices.

    Returns:
      {"r@K": fraction, ..., "r@1%_floor", "r@1%_floor_plus_1", "k_1%_floor", "k_1%_floor_plus_1",
       "n_queries", "n_references", "ranks": int64 [Nq], "topk_indices": int32 [Nq, top_k]}.
    """
    _check_ks(ks)
    streamed = stream_ranks(query, reference, positives=positives, **streaming_options("recall_at_k", streaming))
    return _one_direction(streamed["ranks"], streamed, ks)


def recall_within_radius(query, reference, query_locations, reference_locations, radius_m: float,
                         ks: Sequence[int] = (1, 5, 10), *, positives=None, **streaming) -> dict:
    """Recall@K where a query succeeds if any of its top-K references lies within `radius_m` metres.

    The CVACT_test protocols: 5 m is OriCNN's official one, 25 m the loaders' "same place" radius,
    0 the same id only (identical to `recall_at_k`). Locations are [N, 2] planar metres (UTM).
    Returns the same keys as `recall_at_k` plus "radius_m"; "ranks" are the radius ranks (the rank
    of the best-scoring reference within the radius). **streaming: as `recall_at_k`.
    """
    _check_ks(ks)
    radius_m = float(radius_m)
    if radius_m < 0:
        raise CvmError(f"radius must be >= 0 metres, got {radius_m}")
    radii = (radius_m,) if radius_m > 0 else ()
    streamed = stream_ranks(query, reference, positives=positives, radii_m=radii, query_locations=query_locations,
                            reference_locations=reference_locations,
                            **streaming_options("recall_within_radius", streaming))
    ranks = streamed["radius_ranks"][radius_m] if radii else streamed["ranks"]
    return _one_direction(ranks, streamed, ks, radius_m=radius_m)


def _check_ks(ks) -> None:
    if not ks or any(int(k) != k or k < 1 for k in ks):
        raise CvmError(f"recall K values must be positive integers, got {tuple(ks)}")


def _radius_key(radius_m: float) -> str:
    return f"{radius_m:g}"


def _invert_positives(positives: np.ndarray, n_references: int) -> np.ndarray:
    """For aerial -> ground: the query index whose true reference is each reference (needs a bijection)."""
    if len(positives) != n_references or len(np.unique(positives)) != n_references:
        raise CvmError(
            "aerial_to_ground needs one-to-one ground truth (every reference the true match of exactly one "
            "query); evaluate only direction ground_to_aerial for this split"
        )
    inverse = np.empty(n_references, dtype=np.int64)
    inverse[positives] = np.arange(n_references)
    return inverse


def positives_from_ids(query_ids: Sequence, reference_ids: Sequence) -> np.ndarray:
    """Index of each query's true reference, matching ids (each query id must occur once among references)."""
    index = {}
    for i, rid in enumerate(reference_ids):
        if rid in index:
            raise CvmError(f"reference id {rid!r} occurs more than once: ids must identify references uniquely")
        index[rid] = i
    missing = [qid for qid in query_ids if qid not in index]
    if missing:
        raise CvmError(f"{len(missing)} query ids have no reference with the same id, e.g. {missing[0]!r}")
    return np.array([index[qid] for qid in query_ids], dtype=np.int64)


def evaluate(
    query,
    reference,
    *,
    ids: Optional[Sequence] = None,
    reference_ids: Optional[Sequence] = None,
    positives=None,
    locations=None,
    reference_locations=None,
    radii: Sequence[float] = (0,),
    ks: Sequence[int] = (1, 5, 10),
    directions: Sequence[str] = DIRECTIONS,
    **streaming,
) -> dict:
    """Full evaluation of ground (query) and aerial (reference) descriptors: both directions, all radii.

    Args:
      query: [Nq, D] ground descriptors; reference: [Nr, D] aerial descriptors.
      ids: optional query (pair) ids. With `reference_ids` too, the ground truth is matched by id;
        otherwise only their number is checked and the ground truth is positional (or `positives`).
      positives: explicit index of each query's true reference (exclusive with `reference_ids`).
      locations: [Nq, 2] query locations in planar metres (UTM); the reference locations default to
        the same array (pair i's ground and aerial share a location), else pass `reference_locations`.
      radii: success radii in metres; 0 (the positional / same-id match) is always computed.
      directions: any of "ground_to_aerial", "aerial_to_ground" (one streamed pass each; the second
        swaps the roles and needs one-to-one ground truth).
      **streaming: `stream_ranks`' keywords (STREAMING_KEYWORDS), the same for both directions.

    Returns:
      {"n_queries", "n_references", "ranking", "ks", "directions": {direction: {
          "n_queries", "n_references", "metrics": {...}, "within_radius": {"5": {...}, ...},
          "ranks": int64 [n], "radius_ranks": {"5": int64 [n]}, "topk_indices": int32 [n, top_k]}}}
      where "metrics" follows `metrics_from_ranks` (the positional match).
    """
    _check_ks(ks)
    query, reference = _as_matrix(query), _as_matrix(reference)
    n_queries, _ = _shape2(query, "query")
    n_references, _ = _shape2(reference, "reference")
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown or not directions:
        raise CvmError(f"directions must be among {DIRECTIONS}, got {tuple(directions)}")
    if reference_ids is not None:
        if positives is not None:
            raise CvmError("pass either positives or reference_ids, not both")
        if ids is None:
            raise CvmError("reference_ids need the query ids too (ids=...)")
        positives = positives_from_ids(ids, reference_ids)
    elif ids is not None and len(ids) != n_queries:
        raise CvmError(f"got {len(ids)} ids for {n_queries} queries")
    positives = _check_positives(positives, n_queries, n_references)
    radii = sorted({float(r) for r in radii})
    if radii and radii[0] < 0:
        raise CvmError(f"radii must be >= 0 metres, got {radii}")
    positive_radii = tuple(r for r in radii if r > 0)
    if positive_radii:
        if locations is None:
            raise CvmError(f"recall within {positive_radii} m needs locations (UTM metres); this split has none")
        if reference_locations is None:
            if n_queries != n_references:
                raise CvmError("pass reference_locations: queries and references differ in number")
            reference_locations = locations

    common = dict(radii_m=positive_radii, **streaming_options("evaluate", streaming))
    results = {"n_queries": n_queries, "n_references": n_references, "ranking": RANKING_CONVENTION,
               "ks": [int(k) for k in ks], "directions": {}}
    for direction in directions:
        if direction == "ground_to_aerial":
            streamed = stream_ranks(
                query, reference, positives=positives, query_locations=locations,
                reference_locations=reference_locations, **common,
            )
        else:
            streamed = stream_ranks(
                reference, query, positives=_invert_positives(positives, n_references),
                query_locations=reference_locations, reference_locations=locations, **common,
            )
        n_ref = streamed["n_references"]
        results["directions"][direction] = {
            "n_queries": streamed["n_queries"],
            "n_references": n_ref,
            "metrics": metrics_from_ranks(streamed["ranks"], n_ref, ks),
            "within_radius": {
                _radius_key(r): metrics_from_ranks(ranks, n_ref, ks) for r, ranks in streamed["radius_ranks"].items()
            },
            "ranks": streamed["ranks"],
            "radius_ranks": {_radius_key(r): ranks for r, ranks in streamed["radius_ranks"].items()},
            "topk_indices": streamed["topk_indices"],
        }
    return results


class Evaluator:
    """`evaluate` with its settings bound once (e.g. by a training callback): `Evaluator(...)(ground, aerial)`."""

    def __init__(self, **settings):
        self.settings = settings

    def __call__(self, query, reference, **overrides) -> dict:
        return evaluate(query, reference, **{**self.settings, **overrides})


__all__ = [
    "DIRECTIONS", "RANKING_CONVENTION", "STREAMING_KEYWORDS", "Evaluator", "chunk_size_for", "evaluate",
    "metrics_from_ranks", "streaming_options",
    "positives_from_ids", "recall_at_k", "recall_curve", "recall_within_radius", "stream_ranks", "top1_percent_k",
]

"""Streamed retrieval + orientation for correlation methods (DSM, Shi et al., CVPR 2020; `distance.py`).

For ground map G [H, Wg, C] (unit norm) and aerial map A [H, Wa, C]: scores[k] = sum A[:, (n + k) mod Wa] G[:, n]
for every shift k, computed by FFT along the azimuth: scores = irfft(sum_{h,c} rfft(A) conj(rfft(G padded to
Wa))), the spectra product and the inverse transform as real matmuls (`_block_kernel`). The orientation is
argmax_k, the similarity scores[k*] / ||crop_k*|| (the crop's norm from the circular
window sums of the aerial columns' energies, eps 1e-12 as tf.nn.l2_normalize) and distance = 2 - 2 similarity.
The gallery's spectra are computed once ([Wa/2+1, Nr, 2*H*C] float32, about twice the size of the maps).

Memory: queries are taken in chunks; each chunk sweeps the gallery in blocks, keeping only the [chunk, Nr]
similarities (float32) and orientations (int32); a block's spectra product and scores ([chunk, block, Wa])
are freed after it. Both chunk sizes follow `memory_budget_bytes`. Ranks follow recall.py's convention
(strictly more similar references; ties count for the query), the true match's similarity read from the same
computation; top-k indices with their similarities and orientations are kept, and the orientation of every
query's true match.

`correlation_topk` runs the same search over a sequence of reference blocks (a gallery's shards: `cvm locate`)
and merges their top-k, with each hit's similarity and shift.

`search_orientation=False` is DSM's known-orientation test (test_grd_noise = 0): the aerial map cropped at
shift 0, normalised, then the plain inner product (cvm.evaluation.recall).
"""

from __future__ import annotations

import functools
from typing import Iterable, Optional, Sequence

import numpy as np
import tensorflow as tf

from cvm.errors import CvmError
from cvm.evaluation import orientation as orientation_lib
from cvm.evaluation.recall import (
    DEFAULT_MEMORY_BUDGET_BYTES,
    DEFAULT_TOP_K,
    DIRECTIONS,
    RANKING_CONVENTION,
    _check_positives,
    _invert_positives,
    _tf32,
    default_device,
    evaluate as plain_evaluate,
    metrics_from_ranks,
)

_NORM_EPS = 1e-12


def as_maps(x, height: int, channels: int, name: str) -> np.ndarray:
    """[N, H*W*C] flattened (or [N, H, W, C]) maps -> float32 [N, H, W, C]."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 4:
        return x
    if x.ndim != 2 or x.shape[1] % (height * channels):
        raise CvmError(f"{name} descriptors of shape {x.shape} are not flattened {height} x W x {channels} maps")
    return x.reshape(x.shape[0], height, -1, channels)


def chunk_sizes(n_references: int, wa: int, memory_budget_bytes: int, top_k: int) -> tuple:
    """(queries per chunk, references per block) for the memory budget."""
    freqs = wa // 2 + 1
    # Per (query, reference) of a block: the real and imaginary spectra products (float32 [F] each), the
    # scores (float32 [Wa]), argmax / gathers (~24 B).
    per_pair_block = freqs * 8 + wa * 4 + 24
    # Per (query, reference) kept for the chunk: similarity, orientation, comparison, top-k scratch.
    per_pair_kept = 4 + 4 + 8 + 4
    chunk = max(1, min(512, memory_budget_bytes // (2 * max(n_references, 1) * per_pair_kept)))
    block = max(1, min(n_references, memory_budget_bytes // (2 * chunk * per_pair_block)))
    return int(chunk), int(block)


def inverse_dft_matrices(wa: int) -> tuple:
    """(cos [Wa, F], sin [Wa, F]) with scores[k] = cos[k] . Re(P) + sin[k] . Im(P) = irfft(P)[k] (F = Wa//2 + 1)."""
    f = np.arange(wa // 2 + 1)
    k = np.arange(wa)
    weight = np.where((f == 0) | ((wa % 2 == 0) & (f == wa // 2)), 1.0, 2.0) / wa  # Hermitian symmetry
    theta = 2.0 * np.pi * np.outer(k, f) / wa
    return (weight * np.cos(theta)).astype(np.float32), (-weight * np.sin(theta)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _block_kernel(wa: int):
    """sims/orientation of a query chunk against a reference block, from spectra (the FFT correlation).

    P_f = sum_{h,c} conj(G_f) A_f as two real batched matmuls over the frequencies (real/imaginary parts
    stacked: [Gr, Gi].[Ar, Ai] and [Gr, Gi].[Ai, -Ar]); the inverse real DFT as one [Wa, F] matmul on each,
    which leaves the shift axis first and needs no transpose of the [F, Bq, Br] products.
    """
    cos, sin = (tf.constant(m) for m in inverse_dft_matrices(wa))

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None], tf.float32),  # ground spectra [F, Bq, 2*H*C] (re | im)
        tf.TensorSpec([None, None, None], tf.float32),  # aerial spectra [F, Br, 2*H*C] (re | im)
        tf.TensorSpec([None, None], tf.float32),  # aerial window energies [Br, Wa]
    ])
    def block(ground_s, aerial_s, energy):
        half = tf.shape(aerial_s)[-1] // 2
        aerial_rot = tf.concat([aerial_s[..., half:], -aerial_s[..., :half]], axis=-1)
        p_re = tf.matmul(ground_s, aerial_s, transpose_b=True)  # [F, Bq, Br]
        p_im = tf.matmul(ground_s, aerial_rot, transpose_b=True)
        freqs, bq, br = tf.shape(p_re)[0], tf.shape(p_re)[1], tf.shape(p_re)[2]
        scores = (tf.matmul(cos, tf.reshape(p_re, [freqs, -1]))
                  + tf.matmul(sin, tf.reshape(p_im, [freqs, -1])))  # [Wa, Bq*Br]
        orientation = tf.argmax(scores, axis=0, output_type=tf.int32)
        best = tf.reduce_max(scores, axis=0)
        column = tf.range(bq * br) % br
        norm_sq = tf.gather(tf.reshape(tf.transpose(energy), [-1]), orientation * br + column)
        sims = best * tf.math.rsqrt(tf.maximum(norm_sq, _NORM_EPS))
        return tf.reshape(sims, [bq, br]), tf.reshape(orientation, [bq, br])

    return block


def spectra(maps: np.ndarray, width: int) -> tf.Tensor:
    """[N, H, W, C] -> rfft along W (zero-padded to `width`), real and imaginary parts stacked: [F, N, 2*H*C]."""
    x = tf.convert_to_tensor(maps, tf.float32)
    n, h, w, c = (int(s) for s in maps.shape)
    x = tf.transpose(x, [0, 1, 3, 2])  # [N, H, C, W]
    f = tf.signal.rfft(x, fft_length=[width])  # zero-pads W to width
    f = tf.transpose(tf.reshape(f, [n, h * c, width // 2 + 1]), [2, 0, 1])  # [F, N, H*C]
    return tf.concat([tf.math.real(f), tf.math.imag(f)], axis=-1)


def window_energies(aerial: np.ndarray, ground_width: int) -> tf.Tensor:
    """||crop_k||^2 for every aerial and shift: [N, Wa] (circular window sums of the column energies)."""
    columns = tf.reduce_sum(tf.square(tf.convert_to_tensor(aerial, tf.float32)), axis=[1, 3])  # [N, Wa]
    padded = tf.concat([columns, columns[:, : ground_width - 1]], axis=1)
    ones = tf.ones([ground_width, 1, 1], tf.float32)
    return tf.nn.conv1d(padded[..., None], ones, stride=1, padding="VALID")[..., 0]


def _rank_reduce(sims: tf.Tensor, orient: tf.Tensor, positives: tf.Tensor, top_k: int):
    true_sim = tf.gather(sims, positives, axis=1, batch_dims=1)
    ranks = tf.reduce_sum(tf.cast(sims > true_sim[:, None], tf.int32), axis=1)
    true_orient = tf.gather(orient, positives, axis=1, batch_dims=1)
    if top_k:
        top = tf.math.top_k(sims, k=top_k, sorted=True)  # equal values: the lower index first
        topk, topk_sims = top.indices, top.values
        topk_orient = tf.gather(orient, topk, axis=1, batch_dims=1)
    else:
        topk = topk_orient = tf.zeros([tf.shape(sims)[0], 0], tf.int32)
        topk_sims = tf.zeros([tf.shape(sims)[0], 0], tf.float32)
    finite = tf.reduce_all(tf.math.is_finite(sims))
    return ranks, true_orient, topk, topk_orient, topk_sims, finite


def stream_correlation_ranks(
    ground,
    aerial,
    *,
    direction: str = "ground_to_aerial",
    positives=None,
    top_k: int = DEFAULT_TOP_K,
    chunk_size: Optional[int] = None,
    block_size: Optional[int] = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    device: Optional[str] = None,
    progress: bool = False,
) -> dict:
    """One streamed pass of DSM matching in `direction`: ranks, top-k (indices, orientations), true orientations.

    ground [Ng, H, Wg, C] unit maps, aerial [Na, H, Wa, C] raw maps (NumPy float32). For ground_to_aerial the
    queries are the grounds and `positives` indexes the aerials; for aerial_to_ground the reverse. The
    orientation of a (ground, aerial) pair is the same in both directions (the aerial shift, 0..Wa-1).
    Returns {"ranks": int64 [Nq], "topk_indices": int32 [Nq, k], "topk_orientations": int32 [Nq, k],
    "topk_similarities": float32 [Nq, k], "true_orientations": int32 [Nq], "n_queries", "n_references"}.
    """
    if direction not in DIRECTIONS:
        raise CvmError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    ng, h, wg, c = ground.shape
    na, ha, wa, ca = aerial.shape
    if (h, c) != (ha, ca):
        raise CvmError(f"ground maps {ground.shape[1:]} and aerial maps {aerial.shape[1:]} differ in height or "
                       "channels")
    if wg > wa:
        raise CvmError(f"ground maps are wider ({wg}) than aerial maps ({wa}): is the FoV above 360 degrees?")
    if ng == 0 or na == 0:
        raise CvmError("no descriptors to evaluate")
    g2a = direction == "ground_to_aerial"
    n_queries, n_references = (ng, na) if g2a else (na, ng)
    positives = _check_positives(positives, n_queries, n_references)
    top_k = min(int(top_k), n_references)
    auto_chunk, auto_block = chunk_sizes(n_references, wa, memory_budget_bytes, top_k)
    chunk_size = max(1, min(int(chunk_size or auto_chunk), n_queries))
    block_size = max(1, min(int(block_size or auto_block), n_references))
    block = _block_kernel(int(wa))
    device = device or default_device()

    out = {"ranks": [], "true": [], "topk": [], "topk_orient": [], "topk_sims": []}
    starts = range(0, n_queries, chunk_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="correlating", unit="chunk")
    with _tf32(False), tf.device(device):
        ground_f = spectra(ground, wa)  # [F, Ng, H*C]
        aerial_f = spectra(aerial, wa)  # [F, Na, H*C]
        energy = window_energies(aerial, int(wg))  # [Na, Wa]
        if not bool(tf.reduce_all(tf.math.is_finite(energy))) or not np.all(np.isfinite(ground)):
            raise CvmError("descriptors contain NaN or infinite values (diverged model or bad checkpoint?)")
        for start in starts:
            stop = min(start + chunk_size, n_queries)
            sims, orients = [], []
            for r0 in range(0, n_references, block_size):
                r1 = min(r0 + block_size, n_references)
                if g2a:
                    s, o = block(ground_f[:, start:stop], aerial_f[:, r0:r1], energy[r0:r1])
                else:  # the same pairs, transposed: rows = the aerial queries
                    s, o = block(ground_f[:, r0:r1], aerial_f[:, start:stop], energy[start:stop])
                    s, o = tf.transpose(s), tf.transpose(o)
                sims.append(s)
                orients.append(o)
            sims = tf.concat(sims, axis=1)
            orients = tf.concat(orients, axis=1)
            ranks, true_o, topk, topk_o, topk_s, finite = _rank_reduce(sims, orients,
                                                                       tf.constant(positives[start:stop]), top_k)
            if not bool(finite):
                raise CvmError("similarities contain NaN or infinite values (diverged model or bad checkpoint?)")
            out["ranks"].append(ranks.numpy())
            out["true"].append(true_o.numpy())
            out["topk"].append(topk.numpy())
            out["topk_orient"].append(topk_o.numpy())
            out["topk_sims"].append(topk_s.numpy())
    return {
        "ranks": np.concatenate(out["ranks"]).astype(np.int64),
        "true_orientations": np.concatenate(out["true"]).astype(np.int32),
        "topk_indices": np.concatenate(out["topk"]).astype(np.int32),
        "topk_orientations": np.concatenate(out["topk_orient"]).astype(np.int32),
        "topk_similarities": np.concatenate(out["topk_sims"]).astype(np.float32),
        "n_queries": int(n_queries),
        "n_references": int(n_references),
        "chunk_size": chunk_size,
        "block_size": block_size,
    }


def correlation_topk(
    ground,
    aerial_blocks: Iterable[np.ndarray],
    top_k: int,
    *,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    device: Optional[str] = None,
) -> dict:
    """Top-k aerials of each ground query by DSM's correlation similarity (Shi et al., CVPR 2020), streamed.

    ground [Nq, H, Wg, C] unit maps; aerial_blocks: consecutive [n_b, H, Wa, C] blocks of one reference list
    (a gallery's shards), each searched by `stream_correlation_ranks` and merged into a running top-k, so
    memory is one block's spectra and a [chunk, block] similarity matrix, never the whole gallery. Indices
    are global (block offsets added); equal similarities keep the lower index first, as within a block.
    Returns {"similarities": float32 [Nq, k], "indices": int64 [Nq, k], "orientations": int32 [Nq, k] (the
    best shift, 0..Wa-1), "n_references"}, k = min(top_k, references).
    """
    ground = np.asarray(ground, np.float32)
    nq = ground.shape[0]
    best_s = np.zeros((nq, 0), np.float32)
    best_i = np.zeros((nq, 0), np.int64)
    best_o = np.zeros((nq, 0), np.int32)
    offset = 0
    no_truth = np.zeros(nq, np.int64)  # ranks against a true match are not wanted here
    for block in aerial_blocks:
        if len(block) == 0:
            continue
        found = stream_correlation_ranks(ground, block, positives=no_truth, top_k=min(int(top_k), len(block)),
                                         memory_budget_bytes=memory_budget_bytes, device=device)
        s = np.concatenate([best_s, found["topk_similarities"]], axis=1)
        i = np.concatenate([best_i, found["topk_indices"].astype(np.int64) + offset], axis=1)
        o = np.concatenate([best_o, found["topk_orientations"]], axis=1)
        keep = np.argsort(-s, axis=1, kind="stable")[:, : int(top_k)]  # stable: earlier (lower) ids win ties
        best_s, best_i, best_o = (np.take_along_axis(a, keep, 1) for a in (s, i, o))
        offset += len(block)
    if offset == 0:
        raise CvmError("no aerial maps to search: the gallery holds no cells")
    return {"similarities": best_s, "indices": best_i, "orientations": best_o, "n_references": offset}


def known_orientation_descriptors(ground: np.ndarray, aerial: np.ndarray) -> tuple:
    """DSM's test_grd_noise = 0 descriptors: (flattened ground maps, aerial maps cropped at shift 0, normalised)."""
    wg = ground.shape[2]
    crop = aerial[:, :, :wg].reshape(aerial.shape[0], -1)
    crop = crop / np.maximum(np.linalg.norm(crop, axis=1, keepdims=True), np.sqrt(_NORM_EPS))
    return ground.reshape(ground.shape[0], -1), crop.astype(np.float32)


def evaluate_correlation(
    ground,
    aerial,
    *,
    map_height: int = 4,
    map_channels: int = 16,
    positives=None,
    ks: Sequence[int] = (1, 5, 10),
    directions: Sequence[str] = ("ground_to_aerial",),
    search_orientation: bool = True,
    orientation_labels=None,
    wrap: bool = True,
    top_k: int = DEFAULT_TOP_K,
    chunk_size: Optional[int] = None,
    block_size: Optional[int] = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    device: Optional[str] = None,
    progress: bool = False,
) -> dict:
    """Recall (and orientation) of DSM descriptors, in the layout of `cvm.evaluation.recall.evaluate`.

    Args:
      ground: [Ng, H*Wg*C] flattened unit ground maps (the model's "ground" output) or [Ng, H, Wg, C].
      aerial: [Na, H*Wa*C] flattened aerial maps or [Na, H, Wa, C].
      map_height, map_channels: H and C of the maps (`model.map_height`, `model.map_channels`).
      positives: each ground query's true aerial; None = positional.
      directions: "ground_to_aerial" (the only one DSM reports) and/or "aerial_to_ground".
      search_orientation: False = known orientation (crop at shift 0, plain recall; no orientation estimate).
      orientation_labels: [Ng] true bins (cvm.evaluation.orientation.orientation_label) to score the estimated
        orientation of each query's true match; wrap: wrap-around of the bin difference (False: the original's).

    Returns {"n_queries", "n_references", "ranking", "ks", "directions": {direction: {"metrics", "ranks",
    "topk_indices", "topk_orientations", "true_orientations"}}, "orientation": {...} (with labels)}.
    """
    ground = as_maps(ground, map_height, map_channels, "ground")
    aerial = as_maps(aerial, map_height, map_channels, "aerial")
    if not search_orientation:
        g, a = known_orientation_descriptors(ground, aerial)
        result = plain_evaluate(g, a, positives=positives, ks=ks, directions=directions, top_k=top_k,
                                chunk_size=chunk_size, memory_budget_bytes=memory_budget_bytes, device=device,
                                progress=progress)
        result["search_orientation"] = False
        return result
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown or not directions:
        raise CvmError(f"directions must be among {DIRECTIONS}, got {tuple(directions)}")
    positives = _check_positives(positives, ground.shape[0], aerial.shape[0])
    results = {"n_queries": int(ground.shape[0]), "n_references": int(aerial.shape[0]),
               "ranking": RANKING_CONVENTION, "ks": [int(k) for k in ks], "directions": {},
               "search_orientation": True, "orientation_bins": int(aerial.shape[2])}
    common = dict(top_k=top_k, chunk_size=chunk_size, block_size=block_size,
                  memory_budget_bytes=memory_budget_bytes, device=device, progress=progress)
    for direction in directions:
        pos = positives if direction == "ground_to_aerial" else _invert_positives(positives, aerial.shape[0])
        streamed = stream_correlation_ranks(ground, aerial, direction=direction, positives=pos, **common)
        results["directions"][direction] = {
            "n_queries": streamed["n_queries"], "n_references": streamed["n_references"],
            "metrics": metrics_from_ranks(streamed["ranks"], streamed["n_references"], ks),
            "within_radius": {}, "radius_ranks": {},
            **{k: streamed[k] for k in ("ranks", "topk_indices", "topk_orientations", "true_orientations")},
        }
    if orientation_labels is not None:
        labels = np.asarray(orientation_labels)
        if "ground_to_aerial" in results["directions"]:
            predicted = results["directions"]["ground_to_aerial"]["true_orientations"]
        else:  # per aerial query: the pair (ground g, aerial positives[g]) is aerial query positives[g]
            predicted = results["directions"]["aerial_to_ground"]["true_orientations"][positives]
        if labels.shape != (ground.shape[0],):
            raise CvmError(f"orientation_labels must be one per ground query ({ground.shape[0]}), got {labels.shape}")
        results["orientation"] = orientation_lib.summarise(predicted, labels, int(aerial.shape[2]), wrap=wrap)
    return results


__all__ = ["as_maps", "chunk_sizes", "correlation_topk", "evaluate_correlation", "known_orientation_descriptors",
           "spectra", "stream_correlation_ranks", "window_energies"]

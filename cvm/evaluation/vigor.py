"""VIGOR evaluation: recall, hit rate and metre-level error of queries against a larger reference set, streamed.

Metrics (ground -> aerial only: VIGOR's ground truth is not one-to-one):
  * R@1/5/10 and R@1% (both top-1% conventions, cvm.evaluation.recall): rank = number of references
    strictly more similar than the query's positive (VIGOR train_SAFA.py `validate_top`, TransGeo
    train.py `accuracy`, Sample4Geo sample4geo/evaluate/vigor.py `calculate_scores`); R@1% is
    K = R // 100 ("r@1%_floor") in TransGeo and Sample4Geo, int(0.01 R) + 1 ("r@1%_floor_plus_1") in VIGOR;
  * hit rate (VIGOR `validate_top`, Sample4Geo `calculate_scores`; TransGeo's released train.py computes
    none): a query hits if no reference other than its own semi-positives is strictly more similar
    than its positive (a tie does not outrank, as everywhere in cvm). Computed from the
    streamed ranks and top-k lists without any extra pass: the references strictly above the positive
    are exactly the first `rank` entries of the sorted top-k, so a query hits iff rank <= 3 and those
    entries are all semi-positives (exact under the same matmul, ties included);
  * metre-level error (VIGOR evaluate_from_npy.py `generate_distances`): great-circle distance from the
    query's GPS to the top-1 tile's centre ("centre"); to that centre moved by the offset label of the
    retrieved tile when it is the query's positive or a semi-positive, else the centre ("label_offset":
    what a perfect offset regressor would reach after this retrieval); to the centre moved by offsets a
    model predicts for its top-1 tile ("predicted_offset", when given); and, independent of the model,
    "positive_label_residual": the query GPS against the positive's centre moved by the positive's offset
    (0 for labels consistent with the GPS: it shows how far a label version is from the file names).
    Top-1 ties go to the lowest reference index, as VIGOR's np.argmax.

Memory: one streamed pass (cvm.evaluation.recall.stream_ranks): [chunk, R] similarities on the device,
only ranks and the top-k indices kept, so 50k queries x 90k references of 4096-d float32 need the two
descriptor matrices (~2.3 GB) plus the chunk scratch (1 GB by default), never the Q x R matrix (18 GB).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from cvm.data import vigor as vigor_data
from cvm.data.batching import EpochPipeline
from cvm.errors import CvmError
from cvm.evaluation import recall

DEFAULT_THRESHOLDS_M = (1.0, 5.0, 10.0, 25.0, 50.0, 100.0)
HIT_RATE_DEFINITION = ("a query hits if no reference other than its semi-positives is strictly more similar than "
                       "its positive (VIGOR train_SAFA.py validate_top; Sample4Geo calculate_scores)")
METRE_DEFINITIONS = {
    "centre": "great-circle distance from the query GPS to the top-1 tile centre",
    "label_offset": ("... to the top-1 tile centre moved by that tile's offset label when it is the query's "
                     "positive or a semi-positive, else its centre"),
    "predicted_offset": "... to the top-1 tile centre moved by the offsets the model predicted",
    "positive_label_residual": "query GPS against its positive's centre moved by the positive's offset label",
}


def hits_from_topk(ranks, topk_indices, semi_positives) -> np.ndarray:
    """bool [Q]: rank <= n_semi and the first `rank` top-k references all semi-positives (-1 pads unused slots)."""
    ranks = np.asarray(ranks, np.int64)
    topk = np.asarray(topk_indices, np.int64)
    semis = np.asarray(semi_positives, np.int64).reshape(len(ranks), -1)
    n_semi = semis.shape[1]
    hit = ranks <= n_semi
    for j in range(min(n_semi, topk.shape[1])):
        is_semi = np.any((topk[:, j:j + 1] == semis) & (semis >= 0), axis=1)
        hit &= (ranks <= j) | is_semi
    if topk.shape[1] < n_semi:  # the list cannot show ranks beyond its length
        hit &= ranks <= topk.shape[1]
    return hit


def _summary(distances: np.ndarray, thresholds_m: Sequence[float]) -> dict:
    return {"mean_m": float(np.mean(distances)), "median_m": float(np.median(distances)),
            "within_m": {f"{t:g}": float(np.mean(distances <= t)) for t in thresholds_m}}


def metre_errors(query_locations, reference_locations, top1, *, positives=None, semi_positives=None,
                 offsets=None, predicted_offsets=None, offset_convention: str = "mercator") -> dict:
    """Per-query distances in metres ({"centre", "label_offset", "predicted_offset", "positive_label_residual"}).

    query_locations [Q, 2] and reference_locations [R, 2] are (lat, lon); top1 [Q] the retrieved tile;
    offsets [Q, 1 + S, 2] the (dy, dx) labels of the positive then the semi-positives (VIGOR's convention,
    cvm.data.vigor); predicted_offsets [Q, 2] offsets a model predicted for its top-1 tile.
    """
    q = np.asarray(query_locations, np.float64)
    refs = np.asarray(reference_locations, np.float64)
    top1 = np.asarray(top1, np.int64)
    centres = refs[top1]
    out = {"centre": vigor_data.great_circle_m(q, centres)}
    if offsets is not None:
        offsets = np.asarray(offsets, np.float64)
        labelled = np.concatenate([np.asarray(positives, np.int64)[:, None],
                                   np.asarray(semi_positives, np.int64).reshape(len(q), -1)], axis=1)
        match = labelled == top1[:, None]
        known = match.any(axis=1)
        slot = np.argmax(match, axis=1)
        shift = np.where(known[:, None], offsets[np.arange(len(q)), slot], 0.0)
        moved = vigor_data.offset_latlon(centres, shift, offset_convention)
        out["label_offset"] = vigor_data.great_circle_m(q, moved)
        positive_at = vigor_data.offset_latlon(refs[labelled[:, 0]], offsets[:, 0], offset_convention)
        out["positive_label_residual"] = vigor_data.great_circle_m(q, positive_at)
    if predicted_offsets is not None:
        predicted = np.asarray(predicted_offsets, np.float64)
        if predicted.shape != (len(q), 2):
            raise CvmError(f"predicted offsets must be [{len(q)}, 2] (dy, dx) pixels, got {predicted.shape}")
        out["predicted_offset"] = vigor_data.great_circle_m(
            q, vigor_data.offset_latlon(centres, predicted, offset_convention))
    return out


def evaluate_vigor(query, reference, positives, semi_positives, *, query_locations=None, reference_locations=None,
                   offsets=None, predicted_offsets=None, offset_convention: str = "mercator",
                   ks: Sequence[int] = (1, 5, 10), thresholds_m: Sequence[float] = DEFAULT_THRESHOLDS_M,
                   **streaming) -> dict:
    """VIGOR metrics of [Q, D] query against [R, D] reference descriptors, one streamed pass.

    Args:
      positives: int [Q] index of each query's positive; semi_positives: int [Q, S] (S = 3; -1 = none).
      query_locations / reference_locations: (lat, lon) for the metre-level errors (skipped if None).
      offsets / predicted_offsets / offset_convention: see `metre_errors`.
      **streaming: `recall.stream_ranks`' keywords (recall.STREAMING_KEYWORDS).
    Returns {"metrics": recall metrics + "hit_rate", "metre_error": {kind: summary}, "n_queries",
      "n_references", "ranks", "hits", "topk_indices", "distances": {kind: [Q]}}.
    """
    semi_positives = np.asarray(semi_positives)
    n_queries = int(np.shape(query)[0])
    if semi_positives.ndim != 2 or semi_positives.shape[0] != n_queries or \
            not np.issubdtype(semi_positives.dtype, np.integer):
        raise CvmError(f"semi_positives must be an integer [{n_queries}, S] array, got {semi_positives.dtype} "
                       f"{semi_positives.shape}")
    n_refs = int(np.shape(reference)[0])
    if semi_positives.size and (semi_positives.max() >= n_refs or semi_positives.min() < -1):
        raise CvmError(f"semi_positives must index the {n_refs} references (or be -1)")
    # At least 1 + S entries so that every hit (rank <= S) is decided from the list.
    streaming = dict(recall.streaming_options("evaluate_vigor", streaming))
    keep = max(int(streaming.pop("top_k", recall.DEFAULT_TOP_K)), semi_positives.shape[1] + 1)
    streamed = recall.stream_ranks(query, reference, positives=positives, top_k=keep, **streaming)
    ranks, topk = streamed["ranks"], streamed["topk_indices"]
    hits = hits_from_topk(ranks, topk, semi_positives)
    metrics = recall.metrics_from_ranks(ranks, streamed["n_references"], ks)
    metrics["hit_rate"] = float(np.mean(hits))
    result = {"metrics": metrics, "n_queries": streamed["n_queries"], "n_references": streamed["n_references"],
              "ranks": ranks, "hits": hits, "topk_indices": topk, "metre_error": {}, "distances": {}}
    if query_locations is not None and reference_locations is not None:
        distances = metre_errors(query_locations, reference_locations, topk[:, 0], positives=positives,
                                 semi_positives=semi_positives, offsets=offsets, predicted_offsets=predicted_offsets,
                                 offset_convention=offset_convention)
        result["distances"] = distances
        result["metre_error"] = {kind: _summary(d, thresholds_m) for kind, d in distances.items()}
    return result


def evaluate_split(split, query, reference, **kwargs) -> dict:
    """`evaluate_vigor` with the ground truth, locations and offsets of a `cvm.data.vigor.VigorSplit`."""
    return evaluate_vigor(query, reference, split.positives, split.semi_positives,
                          query_locations=split.locations(), reference_locations=split.reference_locations(),
                          offsets=split.offsets, offset_convention=split.offset_convention, **kwargs)


def vigor_results(raw: dict, split, *, method: str, checkpoint: Optional[str], model_dir: Optional[str] = None,
                  extra: Optional[dict] = None) -> dict:
    """The results JSON (cvm.evaluation.report.results_dict) plus VIGOR's hit rate, metre errors and labels."""
    from cvm.evaluation.report import results_dict

    per_direction = {"directions": {"ground_to_aerial": {"metrics": raw["metrics"], "within_radius": {}}}}
    info = {"area": split.area, "labels": split.labels, "label_files": list(split.label_files),
            "cities": list(split.cities), "offset_convention": split.offset_convention,
            **(extra or {})}
    results = results_dict(per_direction, method=method, dataset="vigor", split=split.name,
                           n_queries=raw["n_queries"], n_references=raw["n_references"], checkpoint=checkpoint,
                           model_dir=model_dir, extra=info)
    results["metrics"]["ground_to_aerial"]["hit_rate"] = raw["metrics"]["hit_rate"]
    results["labels"] = split.labels  # top level: which labels a result used must never be lost
    results["area"] = split.area
    results["hit_rate_definition"] = HIT_RATE_DEFINITION
    results["metre_error"] = raw["metre_error"]
    results["metre_error_definitions"] = {k: METRE_DEFINITIONS[k] for k in raw["metre_error"]}
    return results


# --- embedding a VigorSplit: queries and the reference set, each view alone -----------------------------

class ViewPipeline(EpochPipeline):
    """One view of a VigorSplit (its panoramas, or its reference tiles) through the shared batching engine."""

    def __init__(self, split, spec, view: str, faults=None, num_parallel_calls: Optional[int] = None):
        paths = [p.ground_path for p in split] if view == "ground" else list(split.reference_paths)
        super().__init__(_Sized(len(paths), split), spec, 0, faults, num_parallel_calls=num_parallel_calls,
                         items="panoramas" if view == "ground" else "reference tiles")
        self.vigor_split, self.view, self.paths = split, view, paths

    def sample_spec(self):
        if self.view == "ground":
            return {"ground": ((*self.spec.ground_size, 3), np.uint8)}
        return {"aerial": ((int(self.spec.aerial_size[0]), int(self.spec.aerial_size[1]), 3), np.uint8)}

    def load_sample(self, index, epoch, train):
        from cvm.data import images
        from cvm.data.pipeline import describe_failure
        from cvm.data.records import read_bgr

        path = self.paths[index]
        image = read_bgr(path)
        if image is None:
            self.faults.record(path, describe_failure(path))
            return None
        if self.view == "ground":
            return {"ground": images.resize(image, self.spec.ground_size, self.spec.interpolation)}
        return {"aerial": images.prepare_aerial(image, self.spec)}

    def finish_batch(self, batch):
        from cvm.data.pipeline import normalise_batch

        return {self.view: normalise_batch(batch[self.view], self.spec)}, {"index": batch["index"]}


class _Sized:
    def __init__(self, n, split):
        self.n, self.name, self.dataset, self.root = n, split.name, split.dataset, split.root

    def __len__(self):
        return self.n


def embed_view(encoder, split, spec, view: str, batch_size: int, faults=None) -> tuple:
    """(descriptors float32 [n, D], kept indices int64 [n]) of the split's panoramas or reference tiles."""
    import tensorflow as tf

    encode = encoder.encode_ground if view == "ground" else encoder.encode_aerial

    @tf.function(reduce_retracing=True)
    def step(images):
        return tf.cast(encode(images, training=False), tf.float32)

    pipeline = ViewPipeline(split, spec, view, faults=faults)
    outputs, kept = [], []
    for features, meta in pipeline.eval(batch_size):
        outputs.append(step(features[view]).numpy())
        kept.append(meta["index"].numpy())
    if not outputs:
        raise CvmError(f"no {view} image of the vigor {split.name!r} split could be read (root {split.root}); "
                       "`cvm data check --dataset vigor` lists the missing files")
    return np.concatenate(outputs), np.concatenate(kept)


def evaluate_vigor_encoder(encoder, split, spec, batch_size: int, *, method: str, checkpoint: Optional[str],
                           out_dir: Optional[str] = None, name: Optional[str] = None,
                           model_dir: Optional[str] = None, progress: bool = False, faults=None,
                           augment=None, radii: Sequence[float] = (0,)) -> dict:
    """Embed a VigorSplit's queries and its reference set, evaluate, and write `<name>.json` into out_dir.

    Unreadable panoramas are left out of the queries; unreadable tiles raise (the reference set must be
    whole, or the ranks would not be comparable with published ones). `augment` / `radii` come from the
    generic evaluator's call (cvm.evaluation.run): VIGOR has no limited-FoV test set and no radius protocol.
    """
    if augment is not None:
        raise CvmError("VIGOR is evaluated on whole north-aligned panoramas: --fov_deg / --azimuth_shift test sets "
                       "are not defined for it (drop them for --dataset vigor)")
    if any(float(r) > 0 for r in radii):
        raise CvmError(f"--radii {list(radii)}: VIGOR reports the hit rate and metre-level errors instead of "
                       "recall within a radius (drop --radii for --dataset vigor)")
    query, kept = embed_view(encoder, split, spec, "ground", batch_size, faults)
    reference, kept_refs = embed_view(encoder, split, spec, "aerial", batch_size, faults)
    if len(kept_refs) != len(split.reference_paths):
        missing = sorted(set(range(len(split.reference_paths))) - set(kept_refs.tolist()))
        raise CvmError(f"{len(missing)} reference tiles of the vigor {split.name!r} split could not be read, e.g. "
                       f"{split.reference_paths[missing[0]]}; the reference set must be complete "
                       "(`cvm data check --dataset vigor` lists them)")
    queries = split.subset(kept.tolist()) if len(kept) != len(split) else split
    raw = evaluate_split(queries, query, reference, progress=progress)
    results = vigor_results(raw, queries, method=method, checkpoint=checkpoint, model_dir=model_dir,
                            extra={"pairs_in_split": len(split), "pairs_skipped_unreadable": len(split) - len(kept),
                                   "image_spec": str(spec), "root": split.root})
    if out_dir:
        from cvm.evaluation.report import write_results

        name = name or f"vigor_{split.area}_{split.name}_{split.labels}"
        results["results_json"] = write_results(os.path.join(out_dir, f"{name}.json"), results)
    return results

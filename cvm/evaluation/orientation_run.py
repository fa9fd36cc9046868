"""Evaluate a correlation model (DSM) on a split under DSM's FoV / unknown-orientation protocol.

The pipeline must emit full panoramas (no FoV / azimuth augmentation); each ground panorama is shifted and
cropped here by the split's fixed test set (cvm.data.fov_protocol: DSM's seed-2019 stream, written as
`<out_dir>/<name>_fov<F>_test_set.json` beside the results and re-read by later evaluations), embedded, and the
maps are ranked by `cvm.evaluation.correlation` with the orientation of every true match scored against the
test set's labels. The results JSON carries the recall table, the orientation metrics (wrapped, and the
original's unwrapped difference), the protocol and the test-set path.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import tensorflow as tf

from cvm.data import fov_protocol
from cvm.errors import CvmError
from cvm.evaluation.correlation import evaluate_correlation
from cvm.evaluation.report import results_dict, write_results


def embed_with_test_set(encoder, pipeline, batch_size: int, test_set: dict) -> dict:
    """{"ground", "aerial", "index"} of the split, each ground cropped by `test_set` (positions in split order)."""
    if getattr(pipeline, "augment", None) is not None and pipeline.augment.active:
        raise CvmError("the DSM FoV protocol crops the panoramas itself: build the evaluation pipeline without "
                       "--fov_deg / --azimuth_shift augmentation")
    normalize = None if getattr(pipeline, "normalize", True) else pipeline.spec
    grounds, aerials, indices = [], [], []
    for features, meta in pipeline.eval(batch_size):
        if normalize is not None:
            from cvm.data.pipeline import normalise_batch

            features = {k: normalise_batch(v, normalize) for k, v in features.items()}
        index = meta["index"].numpy()
        # Cropping columns commutes with the per-pixel normalisation, so it can follow it.
        crops = fov_protocol.crop_batch(features["ground"].numpy(), index, test_set)
        grounds.append(np.asarray(encoder.encode_ground(tf.constant(crops), training=False), np.float32))
        aerials.append(np.asarray(encoder.encode_aerial(features["aerial"], training=False), np.float32))
        indices.append(index)
    if not indices:
        raise CvmError("no usable sample to evaluate: every pair was dropped")
    return {"ground": np.concatenate(grounds), "aerial": np.concatenate(aerials), "index": np.concatenate(indices)}


def evaluate_fov_protocol(encoder, pipeline, batch_size: int, *, fov_deg: float, method: str,
                          checkpoint: Optional[str], out_dir: Optional[str] = None, name: Optional[str] = None,
                          seed: int = fov_protocol.ORIGINAL_TEST_SEED, wrap: bool = True,
                          model_dir: Optional[str] = None, progress: bool = False) -> dict:
    """DSM's protocol on `pipeline.split` at `fov_deg`, orientation unknown; results JSON (and test set) in out_dir."""
    if not getattr(encoder, "correlation", False):
        raise CvmError(f"{type(encoder).__name__} does not estimate orientation by correlation; the FoV protocol's "
                       "orientation metrics need a correlation method (--method dsm)")
    split = pipeline.split
    width = int(pipeline.spec.ground_size[1])
    ids = [str(split[i].id) for i in range(len(split))]
    name = name or f"{split.dataset}_{split.name}"
    options = dict(pano_width=width, bins=int(encoder.orientation_bins), dataset=split.dataset, split=split.name)
    test_set_path = None
    if out_dir:
        test_set_path = os.path.join(out_dir, f"{name}_fov{fov_deg:g}_test_set.json")
        test_set = fov_protocol.load_or_create_test_set(test_set_path, ids, fov_deg, seed, **options)
    else:
        test_set = fov_protocol.make_test_set(ids, fov_deg, seed, **options)
    emb = embed_with_test_set(encoder, pipeline, batch_size, test_set)
    kept = emb["index"]
    labels = np.asarray(test_set["labels"])[kept]
    raw = evaluate_correlation(emb["ground"], emb["aerial"], map_height=encoder.map_height,
                               map_channels=encoder.map_channels, orientation_labels=labels, wrap=wrap,
                               progress=progress)
    results = results_dict(raw, method=method, dataset=split.dataset, split=split.name, n_queries=raw["n_queries"],
                           n_references=raw["n_references"], checkpoint=checkpoint, model_dir=model_dir,
                           extra={"pairs_in_split": len(split), "pairs_skipped_unreadable": len(split) - len(kept),
                                  "image_spec": str(pipeline.spec), "root": split.root})
    results["orientation"] = raw["orientation"]
    results["fov_protocol"] = {"protocol": "dsm", "fov_deg": float(fov_deg), "unknown_orientation": True,
                               "seed": int(seed), "crop_width": test_set["crop_width"], "test_set": test_set_path}
    if out_dir:
        results["results_json"] = write_results(os.path.join(out_dir, f"{name}_fov{fov_deg:g}.json"), results)
    return results


__all__ = ["embed_with_test_set", "evaluate_fov_protocol"]

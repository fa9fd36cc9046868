"""Evaluate an encoder on a split: descriptors, streamed recall, results JSON, curve and grid PNGs."""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from cvm.data import images
from cvm.evaluation.embed import embed_split
from cvm.evaluation.recall import evaluate
from cvm.evaluation.report import recall_curve_png, results_dict, retrieval_grid_png, write_results


def evaluate_encoder(encoder, pipeline, batch_size: int, *, method: str, checkpoint: Optional[str],
                     out_dir: Optional[str] = None, name: Optional[str] = None, model_dir: Optional[str] = None,
                     radii: Sequence[float] = (0,), progress: bool = False, grid_queries: int = 8,
                     orientation: Optional[dict] = None) -> dict:
    """Embed `pipeline.split` with `encoder` and evaluate ground -> aerial and aerial -> ground.

    Writes (if out_dir) `<name>.json` (the results JSON), `<name>_recall.png` (recall@K curves) and
    `<name>_grid.png` (the first queries with their top-5 aerials, the true match framed green).
    Radii > 0 (metres) need a split with planar locations (CVACT's UTM, the synthetic world's metres).
    Correlation models (DSM) follow their FoV protocol (orientation: fov_deg, seed, wrap); VIGOR splits (their own
    reference set) the VIGOR protocol.
    Returns the results dict, plus "grid_png" / "curve_png" paths when written.
    """
    split = pipeline.split
    if getattr(encoder, "correlation", False):  # DSM: orientation by correlation, its fixed FoV test set
        from cvm.evaluation.orientation_run import evaluate_fov_protocol

        protocol = {"fov_deg": 360.0, **(orientation or {})}
        return evaluate_fov_protocol(encoder, pipeline, batch_size, method=method, checkpoint=checkpoint,
                                     out_dir=out_dir, name=name, model_dir=model_dir, progress=progress, **protocol)
    if getattr(split, "reference_paths", None) is not None:  # VIGOR: its own reference set (cvm.evaluation.vigor)
        from cvm.evaluation.vigor import evaluate_vigor_encoder

        return evaluate_vigor_encoder(encoder, split, pipeline.spec, batch_size, method=method, checkpoint=checkpoint,
                                      out_dir=out_dir, name=name, model_dir=model_dir, progress=progress,
                                      augment=pipeline.augment, radii=radii, faults=getattr(pipeline, "faults", None))
    emb = embed_split(encoder, pipeline, batch_size, progress=progress)
    kept = emb["index"]
    if len(kept) == 0:
        from cvm.data.pipeline import describe_split, first_reasons
        from cvm.errors import CvmError

        raise CvmError(f"{describe_split(split)} has no usable sample to evaluate: every pair was dropped; first "
                       f"reasons: {first_reasons(getattr(pipeline, 'faults', None))}")
    locations = None
    if any(r > 0 for r in radii):
        if split.location_kind not in ("utm", "metres"):
            from cvm.errors import CvmError

            raise CvmError(f"--radii {list(radii)} need planar locations in metres; {split.dataset} "
                           f"has {split.location_kind or 'no'} locations")
        locations = split.locations()[kept]
    raw = evaluate(emb["ground"], emb["aerial"], locations=locations, radii=radii, progress=progress)
    skipped = len(split) - len(kept)
    results = results_dict(raw, method=method, dataset=split.dataset, split=split.name,
                           n_queries=raw["n_queries"], n_references=raw["n_references"], checkpoint=checkpoint,
                           model_dir=model_dir,
                           extra={"pairs_in_split": len(split), "pairs_skipped_unreadable": skipped,
                                  # the fixed FoV / heading test set, when the evaluation crops (None: whole views)
                                  "augment": str(pipeline.augment) if getattr(pipeline, "augment", None) else None,
                                  "image_spec": str(pipeline.spec), "root": split.root})
    if out_dir:
        name = name or f"{split.dataset}_{split.name}"
        os.makedirs(out_dir, exist_ok=True)
        results["results_json"] = write_results(os.path.join(out_dir, f"{name}.json"), results)
        curves = {d: r["ranks"] for d, r in raw["directions"].items()}
        results["curve_png"] = os.path.join(out_dir, f"{name}_recall.png")
        recall_curve_png(curves, results["curve_png"], n_references=raw["n_references"])
        g2a = raw["directions"]["ground_to_aerial"]

        def ground(r):
            return images.crop_rows(split.read_ground(int(kept[r])), split.ground_rows)

        def aerial(r):
            return split.read_aerial(int(kept[r]))

        results["grid_png"] = os.path.join(out_dir, f"{name}_grid.png")
        retrieval_grid_png(ground, aerial, g2a["topk_indices"], np.arange(len(kept)), results["grid_png"],
                           n_queries=min(grid_queries, len(kept)), k=min(5, len(kept)), ranks=g2a["ranks"])
    return results

"""Build a gallery folder: embedding shards of a source's cells, a FAISS index, and gallery.json.

  gallery/
    plan.json            what is being built: source, model fingerprint, cell size, shard size
    shards/shard-*.npz   descriptors + metadata per range of candidate cells (cvm.geo.shards)
    index.faiss          the vector index (cvm.geo.index), ids = cells in shard order
    gallery.json         the finished build: counts, skipped cells by reason, index kind and parameters,
                         recall@10 of an approximate index against exact search, timings

A correlation model (DSM, Shi et al., CVPR 2020; `towers.correlation`) gives a correlation gallery: the shards
hold the flattened aerial feature maps, gallery.json's "correlation" holds their layout, and there is no
index.faiss: a map is matched at its best azimuth shift, which no inner-product index can express, so
`Localizer` searches the shards exactly by streamed FFT correlation (cvm.evaluation.correlation).
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

import numpy as np

from cvm import atomic
from cvm.errors import CvmError
from cvm.geo import index as index_lib
from cvm.geo import shards as shards_lib

MANIFEST = "gallery.json"
INDEX_FILE = "index.faiss"
DEFAULT_SHARD_SIZE = 4096
CORRELATION_SEARCH = ("exact: streamed FFT circular correlation over the shards (cvm.evaluation.correlation); "
                      "no FAISS index (a map matches at its best azimuth shift, not by one inner product)")


def make_plan(source, towers, shard_size: int) -> dict:
    if shard_size < 1:
        raise CvmError(f"--shard_size must be positive, got {shard_size}")
    n = len(source)
    plan = {"fingerprint": towers.fingerprint, "model": towers.description, "preprocessing": towers.preprocessing,
            "source": source.describe(), "cell_px": list(towers.cell_px), "shard_size": int(shard_size),
            "candidates": n, "shards": max(1, -(-n // shard_size)),
            "model_path": os.path.abspath(towers.path) if getattr(towers, "path", None) else None}
    correlation = getattr(towers, "correlation", None)
    if correlation:  # only then: a plain build's plan (and its hash, for resuming) is as before
        plan["correlation"] = dict(correlation)
    return plan


def check_index_request(correlation: Optional[dict], kind: str, params: Optional[dict]) -> None:
    """Refuse index options a correlation gallery (DSM) cannot honour, before anything is embedded."""
    if not correlation:
        return
    if kind not in ("auto", "exact"):
        raise CvmError(f"--index {kind}: a correlation gallery (DSM) has no FAISS index to approximate; its maps "
                       "are matched at their best azimuth shift by an exact streamed correlation search. Leave "
                       "--index at auto (or exact)")
    if params:
        raise CvmError(f"--index_params {json.dumps(params)}: a correlation gallery (DSM) has no FAISS index to "
                       "tune; leave --index_params out")


def build_gallery(source, towers, out_dir: str, shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int = 32,
                  index: str = "auto", index_params: Optional[dict] = None, progress: bool = True,
                  runner: str = "local", beam_options: Optional[list] = None,
                  saved_model: Optional[str] = None) -> dict:
    """Embed every cell of `source` with `towers` into out_dir's shards (resuming), then index them.

    runner: "local" (this process) or "beam" (cvm.geo.beam; needs `saved_model`, the exported model the
    workers load). Returns the gallery.json summary.
    """
    from cvm.data.parallel import progress_bar

    plan = make_plan(source, towers, shard_size)
    check_index_request(plan.get("correlation"), index, index_params)
    todo = shards_lib.prepare(out_dir, plan)
    want = shards_lib.plan_hash(plan)
    start = time.perf_counter()
    header = {"plan": want, "fingerprint": towers.fingerprint}
    done_before = plan["shards"] - len(todo)
    embedded = 0
    if todo and runner == "beam":
        from cvm.geo import beam as beam_lib

        if not saved_model:
            raise CvmError("--runner beam needs --saved_model (the SavedModel the workers load; `cvm export`)")
        beam_lib.run_pipeline(plan, out_dir, saved_model, todo, batch_size=batch_size, options=beam_options)
        embedded = sum(min(plan["candidates"], (s + 1) * shard_size) - s * shard_size for s in todo)
    elif todo:
        todo_cells = sum(min(plan["candidates"], (s + 1) * shard_size) - s * shard_size for s in todo)
        bar = progress_bar(todo_cells, "gallery", "cell", progress)
        try:
            for s in todo:
                lo, hi = s * shard_size, min(plan["candidates"], (s + 1) * shard_size)
                arrays = shards_lib.embed_range(source, towers, lo, hi, batch_size, on_cells=bar.update)
                shards_lib.write_shard(out_dir, s, arrays, header)
                embedded += hi - lo
        finally:
            bar.close()
    embed_s = time.perf_counter() - start
    return finish(out_dir, plan, index, index_params, embed_s=embed_s, embedded=embedded, resumed=done_before)


def _vectors(paths):
    def gen():
        for p in paths:
            with np.load(p) as z:
                yield z["embeddings"]
    return gen


def finish(out_dir: str, plan: dict, kind: str = "auto", params: Optional[dict] = None, embed_s: float = 0.0,
           embedded: int = 0, resumed: int = 0) -> dict:
    """Index the shards of a complete build (correlation galleries: check the maps' layout) and write gallery.json."""
    paths = shards_lib.shard_paths(out_dir, plan)
    want = shards_lib.plan_hash(plan)
    cells, skipped, dim = 0, {}, 0
    for p in paths:
        header = shards_lib.read_header(p) if os.path.isfile(p) else None
        if header is None or header.get("plan") != want:
            raise CvmError(f"shard {p} is missing or of another build: run `cvm gallery build` again to resume")
        cells += header["cells"]
        for reason, count in header["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + count
        if header["cells"] and not dim:
            with np.load(p) as z:
                dim = int(z["embeddings"].shape[1])
    if cells == 0:
        raise CvmError(f"no gallery cells survived ({skipped or 'no candidates'} skipped): check the source's "
                       "extent, nodata and --cell_m")
    correlation = plan.get("correlation")
    recall = None
    if correlation:
        check_index_request(correlation, kind, params)
        want_dim = correlation["map_height"] * correlation["bins"] * correlation["map_channels"]
        if dim != want_dim:
            raise CvmError(f"{out_dir}: the shards hold {dim}-d descriptors, but the model's aerial maps are "
                           f"{correlation['map_height']} x {correlation['bins']} x {correlation['map_channels']} = "
                           f"{want_dim}: rebuild the gallery into a new folder")
        kind, used, index_s = "correlation", {}, 0.0  # nothing to index: the search reads the shards
    else:
        import faiss

        t0 = time.perf_counter()
        kind = index_lib.choose(kind, cells, dim)
        index, used = index_lib.build(kind, dim, cells, _vectors(paths), params)
        index_s = time.perf_counter() - t0
        if kind != "exact":
            recall = index_lib.measure_recall(index, _vectors(paths), cells, k=10)
        with atomic.replacing(os.path.join(out_dir, INDEX_FILE)) as tmp:
            faiss.write_index(index, tmp)
    import cvm

    summary = {"cvm_version": cvm.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "fingerprint": plan["fingerprint"], "model": plan["model"], "model_path": plan.get("model_path"),
               "preprocessing": plan["preprocessing"],
               "source": plan["source"], "cell_px": plan["cell_px"], "candidates": plan["candidates"],
               "cells": cells, "skipped": skipped, "dim": dim, "shards": plan["shards"],
               "shard_size": plan["shard_size"],
               "resumed_shards": resumed, "index": {"kind": kind, "params": used, "recall@10_vs_exact": recall},
               "embed_seconds": round(embed_s, 3), "index_seconds": round(index_s, 3),
               "cells_per_second": round(embedded / embed_s, 2) if embed_s > 0 and embedded else None}
    if correlation:
        summary["correlation"] = dict(correlation)
        summary["index"].update(faiss=False, search=CORRELATION_SEARCH)
    atomic.write_json(os.path.join(out_dir, MANIFEST), summary, default=str)
    return summary


def load_manifest(gallery: str) -> dict:
    path = os.path.join(gallery, MANIFEST)
    if not os.path.isfile(path):
        hint = " (its build did not finish: run `cvm gallery build` again to resume)" if os.path.isfile(
            os.path.join(gallery, shards_lib.PLAN_FILE)) else ""
        raise CvmError(f"{gallery} is not a gallery: no {MANIFEST}{hint}")
    with open(path) as f:
        return json.load(f)

"""Embedding shards: a gallery's descriptors with their cell metadata, one .npz per fixed range of candidates.

Shard s holds the candidates [s * shard_size, (s + 1) * shard_size) of the source's deterministic cell list,
minus the skipped ones (counted by reason in its header). It is written to a temporary name and renamed,
so a killed build leaves whole shards only and resumes at the first missing one; its header names the
model fingerprint and the plan (source, cell size, shard size), so a shard of another build is never mixed
in. Memory is O(shard): one shard's images, descriptors and metadata at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

import numpy as np

from cvm import atomic
from cvm.errors import CvmError

PLAN_FILE = "plan.json"
SHARD_DIR = "shards"
META_KEYS = ("cell_id", "name", "lat", "lon", "x", "y", "crs", "source", "window")


def plan_hash(plan: dict) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()[:16]


def shard_path(gallery: str, shard: int) -> str:
    return os.path.join(gallery, SHARD_DIR, f"shard-{shard:05d}.npz")


def embed_range(source, towers, start: int, stop: int, batch_size: int, on_cells=None) -> dict:
    """Descriptors and metadata of the candidates [start, stop) (skipped ones counted), batch by batch."""
    vectors, meta, skipped = [], {k: [] for k in META_KEYS}, {}
    batch, batch_meta = [], []

    def flush():
        if batch:
            vectors.append(np.asarray(towers.embed_aerial(np.stack(batch)), np.float32))
            for m in batch_meta:
                for k in META_KEYS:
                    meta[k].append(m[k])
            batch.clear()
            batch_meta.clear()

    for index, image, info in prefetch(source.cells(start, stop, towers.cell_px), 2 * batch_size):
        if image is None:
            skipped[info] = skipped.get(info, 0) + 1
        else:
            batch.append(image)
            batch_meta.append(dict(info, cell_id=index))
            if len(batch) == batch_size:
                flush()
        if on_cells is not None:
            on_cells(1)
    flush()
    return pack(vectors, meta, skipped)


def prefetch(items, depth: int):
    """Iterate `items` in a background thread, `depth` ahead: reading and resampling cells (GDAL, OpenCV
    release the GIL) overlap the model's forward pass. Memory: depth items."""
    import queue
    import threading

    q = queue.Queue(maxsize=max(1, depth))
    done = object()
    stop = threading.Event()

    def work():
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            q.put(("__error__", exc))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, tuple) and len(item) == 2 and item[0] == "__error__":
                raise item[1]
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)


def pack(vectors, meta, skipped) -> dict:
    """Arrays of a shard from lists (vectors: list of [b, D] arrays; meta: key -> list)."""
    dim = vectors[0].shape[1] if vectors else 0
    out = {"embeddings": np.concatenate(vectors).astype(np.float32) if vectors else np.zeros((0, dim), np.float32),
           "cell_id": np.asarray(meta["cell_id"], np.int64),
           "name": np.asarray(meta["name"], dtype=str), "crs": np.asarray(meta["crs"], dtype=str),
           "source": np.asarray(meta["source"], dtype=str),
           "window": np.asarray(meta["window"], np.int64).reshape(-1, 4)}
    for k in ("lat", "lon", "x", "y"):
        out[k] = np.asarray(meta[k], np.float64)
    out["skipped"] = dict(skipped)
    return out


def write_shard(gallery: str, shard: int, arrays: dict, header: dict) -> str:
    """Write a shard atomically (temporary file, fsync, rename)."""
    path = shard_path(gallery, shard)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    header = dict(header, shard=shard, cells=int(len(arrays["cell_id"])), skipped=arrays["skipped"])
    body = {k: v for k, v in arrays.items() if k != "skipped"}
    with atomic.replacing(path) as tmp:  # a killed build leaves no torn shard under the final name
        with open(tmp, "wb") as f:
            np.savez(f, header=np.asarray(json.dumps(header)), **body)
    return path


def read_header(path: str) -> Optional[dict]:
    """A shard's header, or None if the file is not a whole shard (then it is rebuilt)."""
    try:
        with np.load(path) as z:
            return json.loads(str(z["header"]))
    except Exception:  # a truncated or foreign file: rebuild that shard
        return None


def read_shard(path: str, embeddings: bool = True) -> dict:
    with np.load(path) as z:
        keys = [k for k in z.files if k != "header" and (embeddings or k != "embeddings")]
        out = {k: z[k] for k in keys}
        out["header"] = json.loads(str(z["header"]))
    return out


def check_fingerprint(gallery: str, expected: str, got: str, expected_desc: str = "", got_desc: str = "") -> None:
    if expected != got:
        raise CvmError(f"the gallery {gallery} was built with model fingerprint {expected}"
                       f"{f' ({expected_desc})' if expected_desc else ''}, but this model's is {got}"
                       f"{f' ({got_desc})' if got_desc else ''}: query it with the model (and preprocessing) it "
                       "was built with, or rebuild it with `cvm gallery build`")


def prepare(gallery: str, plan: dict) -> list:
    """Write or check plan.json; the shard numbers still to build (those missing or not of this plan)."""
    os.makedirs(os.path.join(gallery, SHARD_DIR), exist_ok=True)
    path = os.path.join(gallery, PLAN_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        check_fingerprint(gallery, old["fingerprint"], plan["fingerprint"], old.get("model", ""), plan.get("model", ""))
        if plan_hash(old) != plan_hash(plan):
            raise CvmError(f"{gallery} holds a build of another source or cell plan ({path}); "
                           "give a new --out folder or delete that one")
    else:
        atomic.write_json(path, plan, default=str)
    todo = []
    want = plan_hash(plan)
    for shard in range(plan["shards"]):
        p = shard_path(gallery, shard)
        header = read_header(p) if os.path.isfile(p) else None
        if header is None or header.get("plan") != want:
            todo.append(shard)
    return todo


def shard_paths(gallery: str, plan: dict) -> list:
    return [shard_path(gallery, s) for s in range(plan["shards"])]

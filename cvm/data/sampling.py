"""Batch construction for contrastive training: neighbour tables and the batches grown from them.

Sample4Geo (Deuser et al., ICCV 2023, §3.2 "hard negative sampling") fills each batch with an anchor and
pairs near it, so that the in-batch negatives of InfoNCE are hard: first *GPS* neighbours (pairs close on
the ground), then, every few epochs, *similarity* neighbours (pairs whose aerial the current model finds
most similar to the anchor's ground view) from a full embedding pass over the training split.

Everything here is NumPy and deterministic:
  - `gps_neighbours` / `similarity_neighbours` build an [N, pool] table of neighbour indices, nearest
    first, in chunks of rows (memory O(chunk x N), never N x N);
  - `neighbour_batches` turns a table into one epoch's order from a `default_rng([seed, epoch, SALT])`:
    anchors in a random order; each anchor brings the first `select // 2` entries of its row and
    `select - select // 2` drawn from the rest of its pool (Sample4Geo's near / far halves), skipping
    pairs already used this epoch or whose aerial tile is already in the batch (one positive per tile,
    as InfoNCE's labels assume); only full batches are kept.
The order is what `cvm.data.batching.EpochPipeline.epoch_order` returns, so mid-epoch resume skips the
batches already seen exactly as for a shuffled epoch, given the same table (the trainer persists each
similarity table in MODEL_DIR/sampler/: `NeighbourSampler`).

Why not Sample4Geo's pickled `gps_dict.pkl`: unpickling executes code, and the table takes seconds to
compute (bench/sampler.py).
"""

from __future__ import annotations

import collections
import json
import os
from typing import Callable, Optional, Sequence

import numpy as np

from cvm.errors import CvmError

EARTH_RADIUS_M = 6371008.8
SALT = 0x5A4D  # keeps the sampler's draws apart from the epoch shuffle's default_rng([seed, epoch])
DEFAULT_CHUNK = 512  # rows per block: 512 x 35,532 float32 scores are 73 MB (CVUSA)


def _chunk_rows(n: int, chunk: int):
    for start in range(0, n, max(1, int(chunk))):
        yield start, min(n, start + max(1, int(chunk)))


def _nearest(scores: np.ndarray, rows: np.ndarray, pool: int, largest: bool) -> np.ndarray:
    """[len(rows), pool] column indices of the best `pool` scores of each row, best first, the row itself
    (column rows[i]) excluded; ties broken by the lower index so the table is a function of the scores."""
    key = np.negative(scores) if largest else np.array(scores, copy=True)  # a copy, in the scores' dtype
    key[np.arange(len(rows)), rows] = np.inf
    n = key.shape[1]
    k = min(pool, n - 1)
    part = np.argpartition(key, k - 1, axis=1)[:, :k] if k < n else np.argsort(key, axis=1)[:, :k]
    # A stable order inside the kept set: by score, then by index. argpartition may have cut a tie at
    # the boundary arbitrarily; re-select with the boundary value included to stay deterministic.
    kth = np.take_along_axis(key, part, axis=1).max(axis=1, keepdims=True)
    out = np.empty((len(rows), k), np.int64)
    for i in range(len(rows)):
        candidates = np.flatnonzero(key[i] <= kth[i, 0])
        order = np.lexsort((candidates, key[i, candidates]))
        out[i] = candidates[order[:k]]
    return out


def haversine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Great-circle distances (m) between (lat, lon) rows of a [M, 2] and b [N, 2] (spherical Earth)."""
    lat1, lon1 = np.radians(a[:, :1]), np.radians(a[:, 1:2])
    lat2, lon2 = np.radians(b[:, 0])[None], np.radians(b[:, 1])[None]
    h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def gps_neighbours(locations: np.ndarray, kind: str, pool: int, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """[N, pool] indices of each pair's nearest pairs on the ground (itself excluded), nearest first.

    kind: "latlon" (degrees: great-circle metres), or "utm" / "metres" (planar metres: Euclidean).
    """
    locations = np.asarray(locations, np.float64)
    if locations.ndim != 2 or locations.shape[1] != 2:
        raise CvmError(f"GPS neighbours need [N, 2] locations, got shape {locations.shape}")
    if kind not in ("latlon", "utm", "metres"):
        raise CvmError(f"GPS neighbours: unknown location kind {kind!r} (latlon, utm or metres)")
    n = len(locations)
    _check_pool(n, pool)
    if kind == "latlon":
        # Great-circle distance falls as the dot product of unit vectors rises: rank by one matmul per chunk.
        lat, lon = np.radians(locations[:, 0]), np.radians(locations[:, 1])
        points = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)
        norms = np.zeros(n)
    else:
        # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b, centred first: UTM northings of 6e6 m would otherwise cost the
        # float64 difference its last metres of resolution.
        points = locations - locations.mean(axis=0)
        norms = (points ** 2).sum(axis=1)
    table = np.empty((n, min(pool, n - 1)), np.int64)
    for start, stop in _chunk_rows(n, chunk):
        score = points[start:stop] @ points.T  # [chunk, N] float64
        if kind != "latlon":
            score = 2 * score - norms[start:stop, None] - norms[None, :]  # minus the squared distance
        table[start:stop] = _nearest(score, np.arange(start, stop), pool, largest=True)
    return table


def similarity_neighbours(ground: np.ndarray, aerial: np.ndarray, pool: int, chunk: int = DEFAULT_CHUNK,
                          aerial_keys: Optional[np.ndarray] = None) -> np.ndarray:
    """[N, pool] indices j of the pairs whose aerial descriptor is most similar to ground i (j != i).

    Sample4Geo's `calc_sim`: the hardest negatives of each ground query under the current model. With
    `aerial_keys` (pairs sharing a tile, VIGOR), pairs of i's own tile are excluded too: they are not
    negatives.
    """
    ground = np.asarray(ground, np.float32)
    aerial = np.asarray(aerial, np.float32)
    if ground.shape != aerial.shape or ground.ndim != 2:
        raise CvmError(f"similarity neighbours need [N, D] ground and aerial descriptors of one shape, got "
                       f"{ground.shape} and {aerial.shape}")
    n = len(ground)
    _check_pool(n, pool)
    table = np.empty((n, min(pool, n - 1)), np.int64)
    for start, stop in _chunk_rows(n, chunk):
        sims = ground[start:stop] @ aerial.T  # [chunk, N] float32: the O(chunk x N) working set
        if aerial_keys is not None:
            same = aerial_keys[start:stop, None] == aerial_keys[None, :]
            sims = np.where(same, -np.inf, sims)
        table[start:stop] = _nearest(sims, np.arange(start, stop), pool, largest=True)
    return table


def _check_pool(n: int, pool: int) -> None:
    if n < 2:
        raise CvmError(f"a neighbour table needs at least 2 pairs, got {n}")
    if pool < 1:
        raise CvmError(f"--neighbour_pool must be at least 1, got {pool}")


def neighbour_batches(n: int, batch_size: int, rng: np.random.Generator, table: Optional[np.ndarray] = None,
                      select: int = 64, aerial_keys: Optional[np.ndarray] = None) -> np.ndarray:
    """One epoch's order: full batches of `batch_size`, each grown from anchors and their table rows.

    Without a table every pair is an anchor of its own (a shuffle, with the unique-tile rule). A pair is
    used at most once per epoch; a batch never holds two pairs of one aerial tile. Pairs that cannot join
    a full batch (the tail) are left out of this epoch, as a shuffled epoch drops its remainder.
    """
    batch_size = int(batch_size)
    keys = np.arange(n) if aerial_keys is None else np.asarray(aerial_keys)
    used = np.zeros(n, bool)
    near = int(select) // 2
    far = int(select) - near
    queue = collections.deque(int(i) for i in rng.permutation(n))
    order, batch, tiles = [], [], set()
    deferred = 0  # anchors pushed back in a row because their tile is in the batch

    def add(i: int) -> None:
        used[i] = True
        batch.append(i)
        tiles.add(keys[i])

    while queue:
        anchor = queue.popleft()
        if used[anchor]:
            continue
        if keys[anchor] in tiles:  # its tile is in this batch: it anchors a later one
            queue.append(anchor)
            deferred += 1
            if deferred > len(queue):  # nothing left fits this batch: drop the partial batch
                break
            continue
        deferred = 0
        add(anchor)
        if table is not None and select > 0 and len(batch) < batch_size:
            row = table[anchor]
            rest = row[near:]
            picks = np.concatenate([row[:near], rest[rng.permutation(len(rest))[:far]]]) if len(rest) else row[:near]
            for j in picks:
                if len(batch) >= batch_size:
                    break
                j = int(j)
                if not used[j] and keys[j] not in tiles:
                    add(j)
        if len(batch) == batch_size:
            order.extend(batch)
            batch, tiles = [], set()
    return np.asarray(order, np.int64)


class NeighbourSampler:
    """The epoch orders of a training run: GPS neighbours first, then similarity neighbours refreshed.

    Epoch e (0-based) uses the similarity table computed at the start of epoch `refresh * (e // refresh)`
    when that is > 0 (the model after the epochs before it, as Sample4Geo recomputes after every evaluation),
    else the GPS table (if `locations`), else none (a shuffle with unique tiles). Tables are written to
    `folder` (`similarity_eNNN.npy` + .json) and read back there by a resumed run, so a resume sees the
    batches the killed run saw.

    Args:
      n, batch_size, seed: the split's size, the global batch size, the run's seed.
      pool, select: Sample4Geo's neighbour_range (128) and neighbour_select (64).
      refresh_epochs: similarity refresh period in epochs (0: never; GPS or shuffle throughout).
      locations, location_kind: the split's coordinates for the GPS table (None: no GPS table).
      aerial_keys: [N] tile identity of each pair (pairs sharing a tile never share a batch).
      embed: callable () -> (ground [N, D], aerial [N, D]) descriptors of the training split in order, with
        the current weights; needed when refresh_epochs > 0.
      folder: where similarity tables are kept (None: in memory only).
      write: whether this process writes them there (a multi-worker run's chief only; the others compute the
        same table from the same weights, or read the chief's back on a resume).
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, pool: int = 128, select: int = 64,
                 refresh_epochs: int = 0, locations: Optional[np.ndarray] = None, location_kind: Optional[str] = None,
                 aerial_keys: Optional[Sequence] = None, embed: Optional[Callable[[], tuple]] = None,
                 folder: Optional[str] = None, chunk: int = DEFAULT_CHUNK, write: bool = True):
        if pool < 1 or select < 0 or select > pool:
            raise CvmError(f"--neighbour_select must be in [0, --neighbour_pool] and the pool at least 1; got "
                           f"select {select}, pool {pool}")
        if refresh_epochs < 0:
            raise CvmError(f"--sampler_refresh_epochs must be >= 0, got {refresh_epochs}")
        if refresh_epochs and embed is None:
            raise CvmError("similarity refresh needs an embedding pass of the training split")
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.pool, self.select, self.refresh_epochs = int(pool), int(select), int(refresh_epochs)
        self.aerial_keys = None if aerial_keys is None else _tile_codes(aerial_keys)
        self.embed, self.folder, self.chunk, self.write = embed, folder, int(chunk), bool(write)
        self.gps_table = None
        if locations is not None:
            self.gps_table = gps_neighbours(locations, location_kind, self.pool, self.chunk)
        self._tables = {}  # refresh epoch -> table

    def table_epoch(self, epoch: int) -> Optional[int]:
        """The epoch whose similarity table epoch `epoch` uses (None: the GPS table or none)."""
        if not self.refresh_epochs:
            return None
        at = self.refresh_epochs * (int(epoch) // self.refresh_epochs)
        return at if at > 0 else None

    def source(self, epoch: int) -> str:
        """What epoch `epoch`'s batches are grown from, in words."""
        at = self.table_epoch(epoch)
        if at is not None:
            return f"similarity neighbours (the table of epoch {at})"
        return "GPS neighbours" if self.gps_table is not None else "shuffled anchors"

    def prepare(self, epoch: int) -> None:
        """Make the table epoch `epoch` needs: read it from `folder`, or embed the split and write it."""
        at = self.table_epoch(epoch)
        if at is None or at in self._tables:
            return
        table = self._read(at)
        if table is None:
            ground, aerial = self.embed()
            if len(ground) != self.n:
                raise CvmError(f"the similarity pass embedded {len(ground)} of the {self.n} training pairs (some "
                               "could not be read: see faults.txt); fix those files or use --sampler_refresh_epochs=0")
            table = similarity_neighbours(ground, aerial, self.pool, self.chunk, self.aerial_keys)
            self._write(at, table)
        self._tables = {at: table}  # one table at a time: O(N x pool) memory

    def table(self, epoch: int) -> Optional[np.ndarray]:
        at = self.table_epoch(epoch)
        if at is None:
            return self.gps_table
        if at not in self._tables:
            raise RuntimeError(f"NeighbourSampler.prepare({epoch}) was not called before its order was asked")
        return self._tables[at]

    def epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, int(epoch), SALT])
        return neighbour_batches(self.n, self.batch_size, rng, self.table(epoch), self.select, self.aerial_keys)

    # --- persistence ----------------------------------------------------------------------------
    def _paths(self, at: int) -> tuple:
        stem = os.path.join(self.folder, f"similarity_e{at:03d}")
        return stem + ".npy", stem + ".json"

    def _read(self, at: int) -> Optional[np.ndarray]:
        if self.folder is None:
            return None
        array_path, meta_path = self._paths(at)
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            table = np.load(array_path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # absent or damaged: recomputed from the checkpoint's weights
        expected = {"n": self.n, "pool": self.pool}
        if {k: meta.get(k) for k in expected} != expected or table.shape != (self.n, min(self.pool, self.n - 1)):
            return None
        return table

    def _write(self, at: int, table: np.ndarray) -> None:
        if self.folder is None or not self.write:
            return
        from cvm.atomic import replacing, write_json

        array_path, meta_path = self._paths(at)
        with replacing(array_path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, table.astype(np.int32 if self.n < 2**31 else np.int64), allow_pickle=False)
        write_json(meta_path, {"n": self.n, "pool": self.pool, "epoch": at})


def _tile_codes(keys: Sequence) -> np.ndarray:
    """[N] int codes, equal where the tile keys are equal (paths or ids)."""
    _, codes = np.unique(np.asarray([str(k) for k in keys]), return_inverse=True)
    return codes.astype(np.int64)

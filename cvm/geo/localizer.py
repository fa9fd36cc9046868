"""`cvm.Localizer`: load a gallery and a model once, then `locate(image)` -> ranked hits with coordinates.

A plain gallery is searched through its FAISS index (inner product of unit descriptors). A correlation gallery
(DSM, Shi et al., CVPR 2020) is searched exactly, shard by shard, by cvm.evaluation.correlation's streamed FFT
correlation; each hit then carries the query's estimated heading (cvm.evaluation.orientation.heading_deg).
"""

from __future__ import annotations

import dataclasses
import os
from typing import List, Optional, Sequence, Union

import cv2
import numpy as np

from cvm.errors import CvmError
from cvm.geo import gallery as gallery_lib
from cvm.geo import index as index_lib
from cvm.geo import shards as shards_lib

EARTH_RADIUS_M = 6371008.8  # mean Earth radius (IUGG)


def haversine_m(lat1, lon1, lat2, lon2):
    """Great-circle distance in metres (spherical Earth: within 0.5 % of the ellipsoid's)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


@dataclasses.dataclass
class Hit:
    """One ranked gallery cell: where, how similar (cosine), and how far from the top hit.

    heading_deg: correlation galleries (DSM) only: the estimated heading of the query's centre column, clockwise
    from north in [0, 360), at the resolution of the model's azimuth bins; None for plain-descriptor methods.
    """

    rank: int
    score: float
    lat: float
    lon: float
    x: float
    y: float
    crs: str
    name: str
    cell_id: int
    source: str
    window: tuple
    distance_to_top1_m: float
    heading_deg: Optional[float] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def read_rgb(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise CvmError(f"image not found: {path}")
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise CvmError(f"cannot decode {path} as an image (JPEG, PNG, ...)")
    return np.ascontiguousarray(img[..., ::-1])


class Localizer:
    """A gallery (cvm gallery build) and the model it was built with, loaded once.

    model: a cvm.geo.towers.Towers, or a path (SavedModel folder from `cvm export`, or .onnx); None uses the
    SavedModel the gallery was built from (gallery.json's model_path). A model whose fingerprint differs
    from the gallery's is refused, naming both.

      loc = cvm.Localizer("galleries/town", "exported/town")
      for hit in loc.locate("photo.jpg", k=5):
          print(hit.rank, hit.lat, hit.lon, hit.score)
    """

    def __init__(self, gallery: str, model=None):
        from cvm.geo.towers import Towers, load_towers

        self.gallery = gallery
        self.manifest = gallery_lib.load_manifest(gallery)
        if model is None:
            model = self.manifest.get("model_path")
            if not model:
                raise CvmError(f"the gallery {gallery} was built from an in-process model; give the model "
                               "(--model_dir or --saved_model) to query it")
        self.towers = model if isinstance(model, Towers) else load_towers(str(model))
        shards_lib.check_fingerprint(gallery, self.manifest["fingerprint"], self.towers.fingerprint,
                                     self.manifest.get("model", ""), self.towers.description)
        self.correlation = self._correlation_layout()
        self.shard_paths = shards_lib.shard_paths(gallery, {"shards": self.manifest["shards"]})
        parts = [shards_lib.read_shard(p, embeddings=False) for p in self.shard_paths]
        self.meta = {k: np.concatenate([p[k] for p in parts]) for k in shards_lib.META_KEYS}
        self.index = None
        if self.correlation:  # no FAISS index: `_correlation_search` reads the shards' maps
            vectors = int(self.manifest["cells"])
        else:
            import faiss

            path = os.path.join(gallery, gallery_lib.INDEX_FILE)
            if not os.path.isfile(path):
                raise CvmError(f"{path} is missing: run `cvm gallery build` again to rebuild the index")
            self.index = faiss.read_index(path)
            index_lib.apply_search_params(self.index, self.manifest["index"]["params"])
            vectors = int(self.index.ntotal)
        if len(self.meta["cell_id"]) != vectors:
            raise CvmError(f"{gallery}: the {'manifest' if self.correlation else 'index'} holds {vectors} vectors "
                           f"but the shards {len(self.meta['cell_id'])} cells; rebuild it with `cvm gallery build`")
        self._source = None

    def _correlation_layout(self) -> Optional[dict]:
        """The gallery's correlation layout (DSM), checked against the model's; None for a plain gallery."""
        ours, theirs = self.manifest.get("correlation"), getattr(self.towers, "correlation", None)
        if theirs and not ours:  # built before correlation galleries: a FAISS index over flattened maps
            raise CvmError(f"the gallery {self.gallery} holds a FAISS index of {self.towers.description}'s flattened "
                           "correlation maps, which inner products rank wrongly (it was built by an older cvm): "
                           "rebuild it with `cvm gallery build` into a new folder")
        if ours and theirs:
            keys = ("map_height", "map_channels", "bins")
            if any(int(ours[k]) != int(theirs[k]) for k in keys):
                raise CvmError(f"the gallery {self.gallery}'s maps are {'x'.join(str(ours[k]) for k in keys)} "
                               f"(height x bins x channels) but the model's "
                               f"{'x'.join(str(theirs[k]) for k in keys)}: rebuild the gallery with this model")
            return dict(ours, ground_fov_deg=float(theirs["ground_fov_deg"]))  # the ground side is the model's
        return dict(ours) if ours else None

    def __len__(self):
        return len(self.meta["cell_id"])

    @property
    def source(self):
        """The gallery's source, rebuilt from gallery.json (for mosaics); None if it cannot be opened."""
        if self._source is None:
            from cvm.geo.sources import source_from_description

            try:
                self._source = source_from_description(self.manifest["source"])
            except CvmError:
                self._source = False
        return self._source or None

    def _check_fov(self, fov_deg):
        if fov_deg is None or self.towers.fov_deg is None:
            return
        if abs(float(fov_deg) - float(self.towers.fov_deg)) > 1e-6:
            raise CvmError(f"--fov_deg {fov_deg:g}: this model takes {self.towers.fov_deg:g}-degree ground images; "
                           f"query it with such photos or train / export a model with --fov_deg {fov_deg:g}")

    def embed(self, images: Sequence[Union[str, np.ndarray]]) -> np.ndarray:
        arrays = [read_rgb(i) if isinstance(i, str) else np.asarray(i, np.uint8) for i in images]
        shapes = {a.shape for a in arrays}
        if len(shapes) == 1:
            return self.towers.embed_ground(np.stack(arrays))
        return np.concatenate([self.towers.embed_ground(a[None]) for a in arrays])

    def locate_many(self, images, k: int = 10, fov_deg: Optional[float] = None) -> List[List[Hit]]:
        if k < 1:
            raise CvmError(f"--k must be at least 1, got {k}")
        self._check_fov(fov_deg)
        q = np.ascontiguousarray(self.embed(images), np.float32)
        if self.correlation:
            scores, ids, headings = self._correlation_search(q, min(k, len(self)))
            return [self._hits(s, i, h) for s, i, h in zip(scores, ids, headings)]
        scores, ids = self.index.search(q, min(k, len(self)))
        return [self._hits(s, i) for s, i in zip(scores, ids)]

    def _correlation_search(self, queries: np.ndarray, k: int):
        """DSM's matching (Shi et al., CVPR 2020) of the queries' maps against every shard: (scores, ids, headings).

        Exact: cvm.evaluation.correlation's streamed FFT search, one shard's maps in memory at a time; the
        score is the similarity at the best azimuth shift, the heading that shift's (orientation.heading_deg).
        """
        from cvm.evaluation import correlation as correlation_lib
        from cvm.evaluation.orientation import heading_deg

        layout = self.correlation
        height, channels, bins = (int(layout[key]) for key in ("map_height", "map_channels", "bins"))
        ground = correlation_lib.as_maps(queries, height, channels, "query")

        def shard_maps():
            for path in self.shard_paths:
                with np.load(path) as z:
                    maps = z["embeddings"]
                if len(maps):
                    maps = correlation_lib.as_maps(maps, height, channels, f"gallery shard {path}")
                    if maps.shape[2] != bins:
                        raise CvmError(f"gallery shard {path} holds maps {maps.shape[2]} columns wide, the gallery "
                                       f"{bins}: rebuild it with `cvm gallery build`")
                    yield maps

        found = correlation_lib.correlation_topk(ground, shard_maps(), k)
        headings = heading_deg(found["orientations"], bins, layout["ground_fov_deg"])
        return found["similarities"], found["indices"], np.reshape(headings, found["indices"].shape)

    def locate(self, image, k: int = 10, fov_deg: Optional[float] = None) -> List[Hit]:
        """Top-k gallery cells for one ground image (path or RGB uint8 [H, W, 3])."""
        return self.locate_many([image], k, fov_deg)[0]

    def _hits(self, scores, ids, headings=None) -> List[Hit]:
        keep = ids >= 0  # FAISS pads with -1 when fewer than k are found
        scores, ids = scores[keep], ids[keep]
        headings = [None] * len(ids) if headings is None else [float(h) for h in np.asarray(headings)[keep]]
        m = self.meta
        lat, lon = m["lat"][ids], m["lon"][ids]
        if np.all(np.isfinite(lat)):
            dist = haversine_m(lat[0], lon[0], lat, lon)
        else:  # no WGS84 coordinates: CRS distance
            dist = np.hypot(m["x"][ids] - m["x"][ids[0]], m["y"][ids] - m["y"][ids[0]])
        return [Hit(rank=r + 1, score=float(scores[r]), lat=float(lat[r]), lon=float(lon[r]),
                    x=float(m["x"][i]), y=float(m["y"][i]), crs=str(m["crs"][i]), name=str(m["name"][i]),
                    cell_id=int(m["cell_id"][i]), source=str(m["source"][i]),
                    window=tuple(int(v) for v in m["window"][i]), distance_to_top1_m=float(dist[r]),
                    heading_deg=headings[r])
                for r, i in enumerate(ids)]

    def cell_extent_m(self) -> float:
        extent = self.manifest["source"].get("cell_extent_m")
        if extent:
            return float(extent)
        # No recorded extent: the typical spacing of cell centres.
        x = np.unique(self.meta["x"])
        spacing = float(np.median(np.diff(x))) if len(x) > 1 else 0.0
        return spacing if spacing > 0 else 100.0


def spread_m(hits: List[Hit], top: int = 5) -> float:
    """Largest distance from the top hit among the first `top` hits (how much the top candidates agree)."""
    return float(max((h.distance_to_top1_m for h in hits[:top]), default=0.0))

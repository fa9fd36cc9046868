"""Locating photos: geo-referenced galleries (split, GeoTIFF, XYZ tiles), embedding shards, a FAISS index,
and `Localizer`. Depends on cvm.models / cvm.data / cvm.export, never on cvm.training or the CLI.

  sources.py   gallery sources          shards.py   embedding shards (resumable, O(shard) memory)
  towers.py    model back ends + fingerprint        index.py    FAISS exact / HNSW / IVF-PQ
  gallery.py   build_gallery            beam.py     the embedding job as an Apache Beam pipeline
  localizer.py Localizer, Hit           render.py   PNG and offline HTML of the hits
"""

import importlib

_NAMES = {"Localizer": "cvm.geo.localizer", "Hit": "cvm.geo.localizer", "build_gallery": "cvm.geo.gallery",
          "GeoTiffSource": "cvm.geo.sources", "TileSource": "cvm.geo.sources", "SplitSource": "cvm.geo.sources",
          "KerasTowers": "cvm.geo.towers", "SavedModelTowers": "cvm.geo.towers", "load_towers": "cvm.geo.towers"}


def __getattr__(name):
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'cvm.geo' has no attribute {name!r}")


__all__ = sorted(_NAMES)

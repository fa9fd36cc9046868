"""Model export and import: SavedModel endpoints (savedmodel.py), TF1 checkpoint conversion (tf1.py)."""

from cvm.export.savedmodel import export_savedmodel
from cvm.export.tf1 import convert_tf1_checkpoint

__all__ = ["convert_tf1_checkpoint", "export_savedmodel"]

"""Model export and import: TF1 checkpoint conversion (tf1.py)."""

from cvm.export.tf1 import convert_tf1_checkpoint

__all__ = ["convert_tf1_checkpoint"]

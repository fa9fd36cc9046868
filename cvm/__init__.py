"""cvm: cross-view image geo-localization and synthesis on TensorFlow 2 / Keras 3."""

__version__ = "0.1.0"

from cvm.errors import CvmError  # noqa: E402,F401
from cvm import models  # noqa: E402,F401  (registers every custom layer, so .keras files reload)

"""cvm: cross-view image geo-localization and synthesis on TensorFlow 2 / Keras 3."""

import os

__version__ = "0.1.0"

# TensorFlow's C++ start-up chatter (CUDA probing on CPU machines) drowns cvm's output; errors stay.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cvm.errors import CvmError  # noqa: E402,F401
from cvm import models  # noqa: E402,F401  (registers every custom layer, so .keras files reload)

"""cvm: cross-view image geo-localization and synthesis on TensorFlow 2 / Keras 3.

`import cvm` is light: it does not import TensorFlow, so the verbs that need none (`cvm --help`,
`cvm data check`, `cvm data synth`) start at once and quietly. Importing `cvm.models` (or any of its
modules, which every model-building or model-loading path of cvm does) registers every custom layer,
so .keras files reload: `import cvm.models; keras.models.load_model(path)`. `cvm.models` is also
reachable as an attribute (`cvm.models.build_model`), imported on first use.
"""

import importlib
import os

__version__ = "0.1.0"

# TensorFlow's C++ start-up chatter (CUDA probing on CPU machines) drowns cvm's output; errors stay.
# Remember whether the user chose the level, so that `--verbose` can lower only cvm's own default.
TF_LOG_LEVEL_FROM_USER = "TF_CPP_MIN_LOG_LEVEL" in os.environ
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cvm.errors import CvmError  # noqa: E402,F401

# Subpackages imported on first attribute access (they import TensorFlow).
_LAZY = ("models", "losses", "training", "evaluation", "export", "pipelines", "geo")


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f"cvm.{name}")
    if name == "Localizer":  # cvm.geo.Localizer, imported on first use (it imports TensorFlow and FAISS)
        return importlib.import_module("cvm.geo.localizer").Localizer
    raise AttributeError(f"module 'cvm' has no attribute {name!r}")

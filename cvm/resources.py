"""Files shipped inside the package: the paper experiments' flagfiles (cvm/experiments/*.cfg).

A checkout has them at experiments/ too (a link to cvm/experiments), so `--flagfile experiments/X.cfg` works
from the repository root; an installed wheel finds them here from any folder.
"""

from __future__ import annotations

import os

from cvm.errors import CvmError

EXPERIMENTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "experiments")
# The folder holding the cvm package: a child process started with it on PYTHONPATH imports this same cvm.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def experiment_names() -> list:
    """The shipped flagfiles' names (without .cfg), sorted."""
    return sorted(name[:-4] for name in os.listdir(EXPERIMENTS_DIR) if name.endswith(".cfg"))


def find_flagfile(path: str) -> str:
    """PATH if it is a file; else `experiments/NAME.cfg` (or NAME.cfg, NAME) from the shipped flagfiles."""
    if os.path.isfile(path):
        return os.path.abspath(path)
    if not os.path.isabs(path):
        name = path[len("experiments/"):] if path.startswith("experiments/") else path
        for candidate in (name, f"{name}.cfg"):
            shipped = os.path.join(EXPERIMENTS_DIR, candidate)
            if os.sep not in candidate and "/" not in candidate and os.path.isfile(shipped):
                return shipped
    raise CvmError(f"flagfile {path} not found (nor among cvm's shipped experiments in {EXPERIMENTS_DIR}: "
                   f"{', '.join(experiment_names())})")

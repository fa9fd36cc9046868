"""Testing aids: kill -9 at a named moment of a run, or make a step's loss NaN (the soak tests use them).

Both are off unless an environment variable asks for them, and cost one comparison when off.

CVM_KILL_AT="[SCOPE/]POINT@STEP"
  SIGKILL this process (with CVM_KILL_GROUP=1 its whole process group, as a lost machine would) the
  first time POINT is reached once STEP global steps are done, in the run whose model_dir is named
  SCOPE (any run without SCOPE). Before dying it prints "cvm faultinject: kill at POINT, global step N"
  to stderr: N is the work done, from which a test measures what a resume lost. The points:

    step                 inside a training step (a timer fires SIGKILL while the step computes)
    checkpoint.write     the new checkpoint's temporary .npz half on disk (its zip directory unwritten)
    checkpoint.rename    the new .npz in place, its .json loop state not yet written
    checkpoint.prune     the new checkpoint complete, the older ones not yet removed
    validation           after the first validation batch
    best.model           best/model.tmp.keras (GAN: generator_*.tmp.keras) written, not yet renamed
    best.metrics         best/ model file replaced, best/metrics.json not yet written
    synthesize           (`cvm synthesize`) after a batch of generated images was written; STEP counts images
    stage.marker         (`cvm pipeline`) a stage's work done, its marker not yet written

CVM_NAN_AT_STEP="N"
  Multiply the first trainable variable by NaN before global step N runs: step N's loss is NaN
  (the run must stop naming step N, with its last checkpoint and best/ untouched).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Optional

_SPEC = os.environ.get("CVM_KILL_AT", "")
_NAN_STEP = os.environ.get("CVM_NAN_AT_STEP", "")
_current = {"state": None, "scope": None}  # the loop state of the run in progress (enter_step)


def _parse(spec: str):
    if not spec:
        return None
    target, _, step = spec.rpartition("@")
    if not target:
        target, step = spec, "0"
    scope, _, point = target.rpartition("/")
    return scope or None, point, int(step)


_TARGET = _parse(_SPEC)


def _kill(point: str, step) -> None:
    sys.stdout.flush()
    sys.stderr.write(f"cvm faultinject: kill at {point}, global step {step}\n")
    sys.stderr.flush()
    if os.environ.get("CVM_KILL_GROUP") == "1":
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _due(point: str, step, scope) -> bool:
    if _TARGET is None:
        return False
    want_scope, want_point, want_step = _TARGET
    if point != want_point or (want_scope is not None and want_scope != scope):
        return False
    return step is not None and int(step) >= want_step


def enter_step(state: dict, model_dir: Optional[str] = None) -> None:
    """Called by a trainer before each training step: records the position and fires `step`."""
    if _TARGET is None:
        return
    _current["state"] = state
    _current["scope"] = os.path.basename(os.path.normpath(model_dir)) if model_dir else None
    step = int(state["global_step"])
    if _due("step", step, _current["scope"]):
        # Fires while the step computes (TF releases the GIL), so the kill lands inside it.
        timer = threading.Timer(0.02, _kill, args=("step", step))
        timer.daemon = True
        timer.start()


def kill_point(point: str, state: Optional[dict] = None, model_dir: Optional[str] = None) -> None:
    """SIGKILL here if CVM_KILL_AT names this point (module docstring); else nothing."""
    if _TARGET is None:
        return
    state = state if state is not None else _current["state"]
    step = None if state is None else int(state["global_step"])
    scope = os.path.basename(os.path.normpath(model_dir)) if model_dir else _current["scope"]
    if _due(point, step, scope):
        _kill(point, step)


def nan_due(global_step: int) -> bool:
    """True when CVM_NAN_AT_STEP asks for a NaN loss at the step about to run (global_step + 1)."""
    return bool(_NAN_STEP) and int(global_step) + 1 == int(_NAN_STEP)


def poison(variable) -> None:
    """Make `variable` (a trainable float variable) all NaN (CVM_NAN_AT_STEP)."""
    import numpy as np

    variable.assign(np.full(tuple(variable.shape), np.nan, dtype=str(variable.dtype)))

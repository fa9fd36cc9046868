"""XLA or TF's kernels for the training step, chosen by a short measurement on this machine.

XLA (`tf.function(jit_compile=True)`) made the CVM-Net-I step 1.37x faster on one 2-core AMD EPYC and
slower (0.87x vs 0.97x the TF1 original) on another, so no fixed default is right everywhere. With
`--jit_compile` unset, a run times both on one real training batch before its first epoch
(`choose_jit_compile`), uses the faster, and records the choice in MODEL_DIR/jit_choice.json; a resumed
run reads that file instead of measuring again. The measurement leaves the training state as it found
it (every variable the step changes is restored), so the run is bit-identical to one pinned to the
chosen value.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import statistics
import time
from typing import Callable, Optional, Sequence

import numpy as np

from cvm import atomic

FILE_NAME = "jit_choice.json"


@dataclasses.dataclass
class JitChoice:
    """The outcome of a measurement: the choice and the timed seconds per step of each variant."""

    jit_compile: bool
    xla_seconds: float  # median of xla_times
    plain_seconds: float  # median of plain_times (TF's kernels)
    xla_times: list
    plain_times: list
    warmup_seconds: dict  # {"xla": s, "tf_kernels": s}: the first, untimed call (tracing, XLA compilation)

    def summary(self) -> str:
        """'XLA 0.52 s/step vs TF kernels 0.71 s/step: using XLA'."""
        used = "XLA" if self.jit_compile else "TF kernels"
        return (f"XLA {self.xla_seconds:.3g} s/step vs TF kernels {self.plain_seconds:.3g} s/step: using {used}")


def _wait(result) -> None:
    """Block until the step's output is computed (reading the loss back to the host)."""
    np.asarray(result)


def _read(variable) -> np.ndarray:
    value = variable.numpy() if hasattr(variable, "numpy") else np.asarray(variable)
    return np.array(value, copy=True)


def choose_jit_compile(plain_step: Callable, xla_step: Callable, batch, state_variables: Sequence,
                       timer: Callable[[], float] = time.perf_counter, min_rounds: int = 3, max_rounds: int = 20,
                       budget_seconds: float = 2.5) -> JitChoice:
    """Time plain_step(batch) (TF's kernels) against xla_step(batch) and return the faster.

    Each step is called once first, untimed (tracing; XLA compiles then). Then rounds of one timed
    call each, alternating which goes first (ABBA order, so a drifting machine load favours neither),
    until at least `min_rounds` rounds are done and the timed calls add up to `budget_seconds`, or
    `max_rounds`. A timed call ends when its loss has been read back. The choice compares medians
    (a step slowed by another job on a shared CPU does not decide it); XLA only when strictly faster.

    state_variables: every variable a step changes (model variables with dropout seed states and
    non-trainable ones, optimizer slots and iterations, metric accumulators). Their values are saved
    before the first call and assigned back afterwards, also when a step raises.
    """
    min_rounds, max_rounds = max(1, int(min_rounds)), max(1, int(max_rounds))
    saved = [(v, _read(v)) for v in state_variables]
    steps = {"plain": plain_step, "xla": xla_step}
    times = {"plain": [], "xla": []}
    warmup = {}
    try:
        for name in ("plain", "xla"):
            start = timer()
            _wait(steps[name](batch))
            warmup[name] = timer() - start
        total = 0.0
        for round_ in range(max_rounds):
            for name in (("plain", "xla") if round_ % 2 == 0 else ("xla", "plain")):
                start = timer()
                _wait(steps[name](batch))
                elapsed = timer() - start
                times[name].append(elapsed)
                total += elapsed
            if round_ + 1 >= min_rounds and total >= budget_seconds:
                break
    finally:
        for variable, value in saved:
            variable.assign(value)
    xla, plain = statistics.median(times["xla"]), statistics.median(times["plain"])
    return JitChoice(jit_compile=bool(xla < plain), xla_seconds=float(xla), plain_seconds=float(plain),
                     xla_times=[float(t) for t in times["xla"]], plain_times=[float(t) for t in times["plain"]],
                     warmup_seconds={"xla": float(warmup["xla"]), "tf_kernels": float(warmup["plain"])})


def state_variables(*sources) -> list:
    """The variables of the given models / optimizers / lists, each once (by identity), in order.

    Pass the encoder (its `variables` hold the trainable and non-trainable weights and the state of
    every Keras SeedGenerator its dropout layers draw from), the trainer (its metrics' variables) and
    the optimizer (slots and iterations).
    """
    seen, out = set(), []
    for source in sources:
        if source is None:
            continue
        if isinstance(source, (list, tuple)):
            variables = list(source)
        else:
            variables = list(getattr(source, "variables", []))
            variables += list(getattr(source, "metrics_variables", []) or [])
        for variable in variables:
            if id(variable) not in seen:
                seen.add(id(variable))
                out.append(variable)
    return out


def worker_count(strategy) -> int:
    """How many processes (workers and chief) train together under `strategy` (1 without a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec() if resolver is not None else None
    if not spec or not spec.as_dict():
        return 1
    return max(1, sum(spec.num_tasks(job) for job in spec.jobs if job in ("chief", "worker")))


def cpu_model() -> Optional[str]:
    """The CPU's 'model name' from /proc/cpuinfo (None where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or None


def record(choice: JitChoice, devices: Sequence[str] = ()) -> dict:
    """The jit_choice.json fields of a measurement."""
    return {"jit_compile": choice.jit_compile,
            "xla_seconds_per_step": choice.xla_seconds, "tf_kernels_seconds_per_step": choice.plain_seconds,
            "xla_step_times": choice.xla_times, "tf_kernels_step_times": choice.plain_times,
            "warmup_seconds": choice.warmup_seconds, "cpu": cpu_model(), "devices": list(devices),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def read(model_dir: str) -> Optional[dict]:
    """MODEL_DIR/jit_choice.json, or None when absent or unreadable (then the run measures again)."""
    path = os.path.join(model_dir, FILE_NAME)
    try:
        with open(path) as f:
            values = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(values, dict) or not isinstance(values.get("jit_compile"), bool):
        return None
    return values


def write(model_dir: str, values: dict) -> str:
    """Write MODEL_DIR/jit_choice.json atomically (a temporary name, then rename); returns its path."""
    return atomic.write_json(os.path.join(model_dir, FILE_NAME), values)

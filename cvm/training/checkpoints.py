"""Resumable checkpoints: every model and optimizer variable by name, plus the loop position.

A checkpoint is one `.npz` file holding each variable under `model/NNNN:path` or
`optimizer/NNNN:path` (NNNN = creation order, which disambiguates equal paths such as the two
towers' `conv1_1/kernel`), and a JSON sidecar with the loop state (epoch, step in epoch, global
step). The model's variables include the dropout seed-generator states, so a resumed run draws the
same dropout masks as an uninterrupted one. Files are written to a temporary name and renamed, so
a run killed while saving (kill -9) leaves the previous checkpoint intact.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Optional

import numpy as np

from cvm.errors import CvmError

_NAME = re.compile(r"ckpt-(\d+)\.npz$")
_AUTO_SUFFIX = re.compile(r"_\d+(?=[/_]|$)")


def _entries(prefix: str, variables) -> list:
    return [(f"{prefix}/{i:04d}:{v.path}", v) for i, v in enumerate(variables)]


def _signature(key: str) -> str:
    """`model/0003:dense_7/kernel` -> `model/0003:dense/kernel`: Keras' automatic name suffixes
    depend on how many layers the process built before, so they must not decide a match. Optimizer
    slots embed the model's name mid-string (`adam/model_1_fc_kernel_momentum`), so every `_N` goes;
    the variable's ordinal in the key keeps signatures unique."""
    return _AUTO_SUFFIX.sub("", key)


def _describe(key: str, shape) -> str:
    return f"{key.split(':', 1)[1]} {tuple(int(s) for s in shape)}"


class CheckpointManager:
    """Saves and restores (model, optimizer, loop state) under `directory`, keeping the last few."""

    def __init__(self, directory: str, max_to_keep: int = 3):
        self.directory = directory
        self.max_to_keep = max_to_keep
        os.makedirs(directory, exist_ok=True)

    def _paths(self) -> list:
        found = []
        for path in glob.glob(os.path.join(self.directory, "ckpt-*.npz")):
            match = _NAME.search(path)
            if match and os.path.exists(path[:-4] + ".json"):
                found.append((int(match.group(1)), path))
        return [p for _, p in sorted(found)]

    def latest(self) -> Optional[str]:
        paths = self._paths()
        return paths[-1] if paths else None

    def save(self, state: dict, model, optimizer=None) -> str:
        """Write a checkpoint numbered by state['global_step']; returns its path."""
        number = int(state["global_step"])
        path = os.path.join(self.directory, f"ckpt-{number:09d}.npz")
        arrays = {k: np.asarray(v.numpy()) for k, v in _entries("model", model.variables)}
        if optimizer is not None:
            arrays.update({k: np.asarray(v.numpy()) for k, v in _entries("optimizer", optimizer.variables)})
        tmp = path + ".tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        with open(path[:-4] + ".json.tmp", "w") as f:
            json.dump(state, f, indent=1)
        os.replace(path[:-4] + ".json.tmp", path[:-4] + ".json")
        for old in self._paths()[:-self.max_to_keep]:
            for p in (old, old[:-4] + ".json"):
                if os.path.exists(p):
                    os.remove(p)
        return path

    @staticmethod
    def read_state(path: str) -> dict:
        with open(path[:-4] + ".json") as f:
            return json.load(f)

    @staticmethod
    def restore(path: str, model, optimizer=None) -> dict:
        """Assign every variable from `path`; refuse a checkpoint that does not match the model.

        Raises CvmError listing the missing variables (in the model, not in the checkpoint), the
        unexpected ones (in the checkpoint, not in the model) and shape mismatches.
        """
        try:
            stored = np.load(path)
        except (OSError, ValueError) as exc:
            raise CvmError(f"cannot read checkpoint {path}: {exc}") from None
        with stored:
            wanted = _entries("model", model.variables)
            if optimizer is not None:
                wanted += _entries("optimizer", optimizer.variables)
            files = [k for k in stored.files if optimizer is not None or k.startswith("model/")]
            by_signature = {_signature(k): k for k in files}
            wanted = [(by_signature.get(_signature(k), k), v) for k, v in wanted]
            keys = set(files)
            missing = [_describe(k, v.shape) for k, v in wanted if k not in keys]
            unexpected = [_describe(k, stored[k].shape) for k in sorted(keys - {k for k, _ in wanted})]
            mismatched = [f"{k.split(':', 1)[1]}: checkpoint {stored[k].shape}, model {tuple(v.shape)}"
                          for k, v in wanted if k in keys and tuple(stored[k].shape) != tuple(v.shape)]
            if missing or unexpected or mismatched:
                lines = [f"checkpoint {path} does not match the model (built with other flags, "
                         "e.g. --method, sizes or --output_dim?)"]
                for title, items in (("missing in the checkpoint", missing),
                                     ("unexpected in the checkpoint", unexpected),
                                     ("shape mismatch", mismatched)):
                    if items:
                        lines.append(f"{title} ({len(items)}): " + "; ".join(items))
                raise CvmError("\n".join(lines))
            for key, variable in wanted:
                variable.assign(stored[key])
        return CheckpointManager.read_state(path)

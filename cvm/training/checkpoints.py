"""Resumable checkpoints: every model and optimizer variable by name, plus the loop position.

A checkpoint is one `.npz` file holding each variable under `model/NNNN:path` or
`optimizer/NNNN:path` (NNNN = creation order, which disambiguates equal paths such as the two
towers' `conv1_1/kernel`), and a JSON sidecar with the loop state (epoch, step in epoch, global
step). The model's variables include the dropout seed-generator states, so a resumed run draws the
same dropout masks as an uninterrupted one. Files are written to a temporary name, synced and renamed,
so a run killed while saving (kill -9, a lost machine) leaves the previous checkpoint intact; a
checkpoint counts only once both its .npz and its .json are in place. A checkpoint whose variables are
not all finite is never written, and a write that fails (disk full, file-size limit, read-only folder)
is a CvmError naming the file, the previous checkpoints untouched.

Resuming (`restore_newest`) takes the newest checkpoint that reads and matches the model: a damaged
one (truncated, empty, other variables, unreadable loop state) is reported and skipped; when none is
usable it is a CvmError and nothing is written.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
import zipfile
from typing import Optional

import numpy as np

from cvm import atomic, faultinject
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


# What reading a damaged .npz raises: truncated (no zip directory), empty, a bad member (CRC, header).
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


def write_error(path: str, exc: OSError, previous: Optional[str] = None) -> CvmError:
    """The one-line CvmError of a failed write of `path` (disk full, file-size limit, read-only folder)."""
    reason = exc.strerror or str(exc)
    kept = (f"the last good checkpoint {previous} is intact" if previous else "no checkpoint was written")
    return CvmError(f"cannot write {path}: {reason} (disk full, file-size limit or read-only folder?); {kept}: "
                    "free space or fix the folder's permissions, then rerun the same command to resume")


def check_finite(entries, what: str) -> None:
    """CvmError naming the first variable with a NaN or infinite value, among (name, array) entries."""
    for name, array in entries:
        if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
            raise CvmError(f"{what}: variable {name.split(':', 1)[-1]} holds NaN or infinite values (the training "
                           "diverged: lower --lr, or use --precision float32)")


def _write_npz(f, entries, halfway=None) -> None:
    """np.savez's format (an uncompressed zip of .npy members) written member by member; `halfway()` is
    called with half the members written (a testing aid's kill point: the file then lacks its zip directory)."""
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for i, (key, array) in enumerate(entries):
            with archive.open(key + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
            if halfway is not None and i == len(entries) // 2:
                halfway()


class CheckpointManager:
    """Saves and restores (model, optimizer, loop state) under `directory`, keeping the last few."""

    def __init__(self, directory: str, max_to_keep: int = 3):
        self.directory = directory
        self.max_to_keep = max_to_keep

    def _numbered(self, pattern: str) -> list:
        found = []
        for path in glob.glob(os.path.join(self.directory, pattern)):
            match = _NAME.search(path)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def _paths(self) -> list:
        return [p for _, p in self._numbered("ckpt-*.npz") if os.path.exists(p[:-4] + ".json")]

    def latest(self) -> Optional[str]:
        paths = self._paths()
        return paths[-1] if paths else None

    def save(self, state: dict, model, optimizer=None) -> str:
        """Write a checkpoint numbered by state['global_step']; returns its path.

        Raises CvmError (nothing written) if a variable is not finite or the write fails.
        """
        number = int(state["global_step"])
        path = os.path.join(self.directory, f"ckpt-{number:09d}.npz")
        entries = [(k, np.asarray(v.numpy())) for k, v in _entries("model", model.variables)]
        if optimizer is not None:
            entries += [(k, np.asarray(v.numpy())) for k, v in _entries("optimizer", optimizer.variables)]
        check_finite(entries, f"checkpoint {path} not written (global step {number})")
        model_dir = os.path.dirname(os.path.normpath(self.directory))
        json_path = path[:-4] + ".json"
        temporaries = (atomic.temporary_name(path), atomic.temporary_name(json_path))
        previous = self.latest() if os.path.isdir(self.directory) else None
        try:
            with atomic.replacing(path) as tmp:  # makes the folder; removes the temporary on a failure
                with open(tmp, "wb") as f:
                    _write_npz(f, entries, lambda: faultinject.kill_point("checkpoint.write", state, model_dir))
            faultinject.kill_point("checkpoint.rename", state, model_dir)
            atomic.write_text(json_path, json.dumps(state, indent=1))
        except OSError as exc:
            # Name the checkpoint (not its temporary name), or the folder that could not be made.
            failed = exc.filename if isinstance(exc.filename, str) and exc.filename not in temporaries else path
            raise write_error(failed, exc, previous) from None
        faultinject.kill_point("checkpoint.prune", state, model_dir)
        self._prune(number)
        return path

    def _prune(self, newest: int) -> None:
        """Keep the newest max_to_keep checkpoints; drop leftovers of killed saves (temporary files, an
        .npz whose .json was never written) older than the checkpoint just written."""
        doomed = []
        for old in self._paths()[:-self.max_to_keep]:
            doomed += [old, old[:-4] + ".json"]
        listed = set(self._paths())
        for number, p in self._numbered("ckpt-*.npz"):
            if p not in listed and number < newest:
                doomed.append(p)
        doomed += glob.glob(os.path.join(self.directory, "ckpt-*.tmp.npz"))
        doomed += glob.glob(os.path.join(self.directory, "ckpt-*.tmp.json"))
        doomed += glob.glob(os.path.join(self.directory, "ckpt-*.json.tmp"))  # the name before cvm.atomic
        for p in doomed:
            try:
                os.remove(p)
            except OSError:
                pass

    @staticmethod
    def read_state(path: str) -> dict:
        try:
            with open(path[:-4] + ".json") as f:
                state = json.load(f)
        except (OSError, ValueError) as exc:
            raise CvmError(f"cannot read the loop state {path[:-4]}.json: {exc}") from None
        if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
            raise CvmError(f"the loop state {path[:-4]}.json has no global_step")
        return state

    def restore_newest(self, model, optimizer=None, report=None):
        """(path, loop state) of the newest checkpoint that restores into (model, optimizer); (None, None)
        when there is none.

        A damaged checkpoint (unreadable, truncated, empty, other variables, bad loop state) is skipped
        for the one before it, saying so through `report` (default: a warning line on stderr). When every
        checkpoint is damaged it raises CvmError listing them; nothing is written or removed.
        """
        paths = self._paths()
        if not paths:
            return None, None
        damaged, details = [], []
        for path in reversed(paths):
            try:
                state = CheckpointManager.restore(path, model, optimizer)
            except CvmError as exc:
                lines = str(exc).splitlines()
                damaged.append(f"{os.path.basename(path)} ({lines[0]})")
                details.append(lines[1:])
                continue
            if damaged:
                message = (f"warning: skipped {len(damaged)} damaged checkpoint(s) in {self.directory}: "
                           f"{'; '.join(damaged)}; resuming from {os.path.basename(path)} "
                           f"(global step {state['global_step']})")
                (report or (lambda text: print(text, file=sys.stderr, flush=True)))(message)
            return path, state
        raise CvmError("\n".join([f"no usable checkpoint in {self.directory}: {'; '.join(damaged)}. Nothing was "
                                  "written; restore the files, or move them away to start the run afresh",
                                  *details[0]]))

    @staticmethod
    def restore(path: str, model, optimizer=None) -> dict:
        """Assign every variable from `path`; refuse a checkpoint that does not match the model.

        Raises CvmError for a file that cannot be read (missing, truncated, empty, a damaged member, an
        unreadable loop state), and for one that does not match: listing the missing variables (in the
        model, not in the checkpoint), the unexpected ones (in the checkpoint, not in the model) and
        shape mismatches. Nothing is assigned unless everything reads and matches.
        """
        state = CheckpointManager.read_state(path)
        try:
            with np.load(path, allow_pickle=False) as stored:
                files = [k for k in stored.files if optimizer is not None or k.startswith("model/")]
                arrays = {k: stored[k] for k in files}
        except _READ_ERRORS as exc:
            raise CvmError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
        wanted = _entries("model", model.variables)
        if optimizer is not None:
            wanted += _entries("optimizer", optimizer.variables)
        by_signature = {_signature(k): k for k in files}
        wanted = [(by_signature.get(_signature(k), k), v) for k, v in wanted]
        keys = set(files)
        missing = [_describe(k, v.shape) for k, v in wanted if k not in keys]
        unexpected = [_describe(k, arrays[k].shape) for k in sorted(keys - {k for k, _ in wanted})]
        mismatched = [f"{k.split(':', 1)[1]}: checkpoint {arrays[k].shape}, model {tuple(v.shape)}"
                      for k, v in wanted if k in keys and tuple(arrays[k].shape) != tuple(v.shape)]
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
            variable.assign(arrays[key])
        return state

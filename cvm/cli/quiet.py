"""Keep TensorFlow's own start-up lines out of the terminal (every `cvm VERB` unless --verbose).

Importing TensorFlow on a machine without a GPU prints, before anything of cvm's, "WARNING: All log
messages before absl::InitializeLog() ..." and `cudart_stub.cc` lines (twice), and probing the devices
logs `E0000 ... cuda_platform.cc ... failed call to cuInit` at ERROR level, which TF_CPP_MIN_LOG_LEVEL=2
does not hide. `install()` puts a one-shot import hook in front of the first `import tensorflow`
(wherever it happens: a verb module, cvm.models, a lazy import inside a verb): that import and the
device probe (`tf.config.list_physical_devices()`, which does not initialise the devices, so memory
growth and logical devices can still be configured) run with file descriptor 2 captured. Lines in the
format of TensorFlow / absl C++ logging are held back; every other line (Python warnings, fatal `F`
lines, anything unknown) goes through at once. If the import fails, the held-back lines are replayed
before the error. `cvm VERB --verbose` installs no hook and lowers cvm's default TF_CPP_MIN_LOG_LEVEL
(2) to 0, so everything TensorFlow says is shown; a TF_CPP_MIN_LOG_LEVEL set by the user is kept.
"""

from __future__ import annotations

import importlib.abc
import os
import re
import sys
import threading

# TensorFlow / absl C++ log lines below FATAL ("I0000 00:00:1796160568.227713    7069 cudart_stub.cc:31] ...",
# "E0000 ... cuda_platform.cc:52] failed call to cuInit: ..."), absl's pre-InitializeLog notice and
# the CPU-feature guard's follow-up line.
CHATTER = re.compile(
    r"^(?:[IWE]\d{4} [\d:.]+\s+\d+ [\w.\-/]+:\d+\] "
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags)"
)


class CapturedStderr:
    """Context manager: file descriptor 2 goes through a filter while inside.

    Lines matching CHATTER are kept in `held` (not shown); all others are written to the real
    stderr as they come. On an exception inside, the held lines are written out first.
    """

    def __init__(self, pattern=CHATTER):
        self.pattern = pattern
        self.held = []
        self._saved = None

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        read_end, write_end = os.pipe()
        try:  # a roomy pipe: C++ may write while holding the GIL, which the reader thread needs
            import fcntl

            fcntl.fcntl(write_end, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except (ImportError, OSError):
            pass
        os.dup2(write_end, 2)
        os.close(write_end)
        self._thread = threading.Thread(target=self._pump, args=(read_end,), name="cvm-quiet-stderr", daemon=True)
        self._thread.start()
        return self

    def _pump(self, read_end: int) -> None:
        pending = b""
        try:
            while True:
                chunk = os.read(read_end, 1 << 16)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._line(line + b"\n")
            if pending:
                self._line(pending)
        finally:
            os.close(read_end)

    def _line(self, raw: bytes) -> None:
        if self.pattern.match(raw.decode("utf-8", "replace")):
            self.held.append(raw)
        else:
            os.write(self._saved, raw)

    def __exit__(self, exc_type, exc, tb):
        try:
            sys.stderr.flush()
        finally:
            os.dup2(self._saved, 2)  # closes the pipe's write end: the reader sees the end
            self._thread.join()
            if exc_type is not None:
                for raw in self.held:
                    os.write(self._saved, raw)
            os.close(self._saved)
        return False


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """One-shot finder: the real spec of `tensorflow`, whose loader runs under CapturedStderr."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        uninstall()
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if find is not None:
                spec = find(fullname, path, target)
                if spec is not None:
                    break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        real_exec = spec.loader.exec_module

        def exec_module(module):
            with CapturedStderr():
                real_exec(module)
                try:  # the CUDA probe (cuInit) logs at ERROR level on machines without a GPU
                    module.config.list_physical_devices()
                except Exception:  # noqa: BLE001  (a probe failure surfaces again where devices are used)
                    pass

        spec.loader.exec_module = exec_module
        return spec


_HOOK = _QuietTensorFlowImport()


def install() -> None:
    """Quiet the first `import tensorflow` of this process (no-op if TensorFlow is already imported)."""
    if "tensorflow" not in sys.modules and _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


def uninstall() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


def verbose_requested(args) -> bool:
    """Whether the command line turns --verbose on (absl boolean syntax; the last one wins)."""
    verbose = False
    for arg in args:
        if arg == "--":
            break
        if not arg.startswith("-"):
            continue
        name, _, value = arg.lstrip("-").partition("=")
        if name == "verbose":
            verbose = value.lower() not in ("false", "0", "f", "no") if value else True
        elif name == "noverbose":
            verbose = False
    return verbose


def configure(args) -> bool:
    """Set up start-up output for a verb run with `args`; returns whether --verbose was given."""
    verbose = verbose_requested(args)
    if verbose:
        import cvm

        if not cvm.TF_LOG_LEVEL_FROM_USER:
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        install()
    return verbose

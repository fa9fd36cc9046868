"""Atomic file writes: write to a temporary name beside the target, fsync, then rename.

A killed or crashing run never leaves half a file under the final name: readers see the old file or the
new one. Every file cvm writes that a later step or a resume reads goes through here.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Callable, Iterator, Optional


def fsync_directory(directory: str) -> None:
    """Make a rename inside DIRECTORY durable (POSIX: the directory entry itself must be synced)."""
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:  # some file systems (and Windows) refuse to open directories: best effort
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_name(path: str, suffix: str = ".tmp") -> str:
    """The temporary name used for PATH; it keeps PATH's extension last so writers that dispatch on it
    (Keras' `.keras`, OpenCV's image encoders) still recognise the format."""
    root, extension = os.path.splitext(path)
    return f"{root}{suffix}{extension}"


@contextlib.contextmanager
def replacing(path: str, fsync: bool = True, after_write: Optional[Callable[[], None]] = None) -> Iterator[str]:
    """Context manager yielding a temporary path to write; on success it is renamed onto PATH.

    On an exception the temporary file is removed and PATH is left untouched. AFTER_WRITE runs between
    the write and the rename (fault-injection kill points use it).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        if fsync and os.path.isfile(tmp):
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        if after_write is not None:
            after_write()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    if fsync:
        fsync_directory(folder)


def write_bytes(path: str, data: bytes, fsync: bool = True) -> str:
    """Write DATA to PATH atomically; returns PATH."""
    with replacing(path, fsync=fsync) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return path


def write_text(path: str, text: str, fsync: bool = True) -> str:
    """Write TEXT (UTF-8) to PATH atomically; returns PATH."""
    return write_bytes(path, text.encode("utf-8"), fsync=fsync)


def write_json(path: str, values: Any, indent: int = 1, fsync: bool = True,
               default: Optional[Callable[[Any], Any]] = None) -> str:
    """json.dump VALUES to PATH atomically (with a final newline); returns PATH."""
    return write_text(path, json.dumps(values, indent=indent, default=default) + "\n", fsync=fsync)

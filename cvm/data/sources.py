"""Where the official dataset files come from, what a dataset root must hold, and the errors that say so.

None of the real datasets is redistributed: users obtain them from their authors. Every "file not
found" error therefore names the expected absolute path, what the file is, and where it comes from,
so that a user with a misplaced folder knows what to fix without reading code.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from cvm.errors import CvmError

README_HINT = "see README 'Datasets'"


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """Provenance and expected layout of one dataset.

    Attributes:
      title: display name ("CVUSA").
      origin: where the official files come from (one sentence or two, for errors and the README).
      expected_files: (relative path or name pattern, what it is) pairs describing a valid root.
      root_hint: what the root folder is, phrased to complete "Pass ...".
    """

    title: str
    origin: str
    expected_files: tuple
    root_hint: str


def source(dataset: str) -> DatasetSource:
    """The provenance of a dataset with official files (cvm.data.registry holds them)."""
    from cvm.data import registry

    entry = registry.DATASETS.get(dataset)
    if entry is None or entry.source is None:
        known = sorted(name for name, d in registry.DATASETS.items() if d.source is not None)
        raise CvmError(f"Unknown dataset {dataset!r}; known datasets with official files: {', '.join(known)}.")
    return entry.source


def describe(dataset: str) -> str:
    """Multi-line text for the README / `cvm data` help: origin and expected files of a dataset."""
    src = source(dataset)
    lines = [f"{src.title}: {src.origin}", "Expected files under the dataset root:"]
    width = max(len(path) for path, _ in src.expected_files)
    lines += [f"  {path:<{width}}  {what}" for path, what in src.expected_files]
    return "\n".join(lines)


def missing_root_error(dataset: str, root: str) -> CvmError:
    src = source(dataset)
    expected = ", ".join(path for path, _ in src.expected_files)
    return CvmError(
        f"{src.title} root folder not found: {os.path.abspath(root)}. Pass {src.root_hint} "
        f"(expected files: {expected}). {src.origin} See README 'Datasets'."
    )


def missing_file_error(dataset: str, path: str, what: str, comes_from: str) -> CvmError:
    """Error for a missing split or meta file.

    Args:
      what: what the file is ("split file", "meta file").
      comes_from: completes "It ..." with where the file comes from, e.g. "comes with the
        CVPR_subset archive (splits.tar.gz) that the CVUSA authors send on request".
    """
    src = source(dataset)
    return CvmError(f"{src.title} {what} not found: {os.path.abspath(path)}. It {comes_from}; {README_HINT}.")


def require_root(dataset: str, root: Optional[str]) -> str:
    """The absolute dataset root, or a CvmError saying what the root must be and where it comes from."""
    if root is None or str(root) == "":
        src = source(dataset)
        raise CvmError(f"No {src.title} root folder given. Pass {src.root_hint}. {src.origin} See README 'Datasets'.")
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.isdir(root):
        raise missing_root_error(dataset, root)
    return root


def read_split_rows(dataset: str, path: str, field_names: tuple, restore_hint: str) -> list:
    """The rows of a comma-separated split file as (1-based line number, stripped fields) tuples.

    Empty lines at the end of the file are ignored (many copies end with one or more newlines); an
    empty line followed by more rows, or a row without non-empty values for all of `field_names`
    (the leading fields; more fields are allowed), raises a CvmError naming the file and line.

    Args:
      field_names: names of the required leading fields, for the message (e.g. ("aerial", "ground")).
      restore_hint: what to do about a malformed file (e.g. "restore it from splits.tar.gz").
    """
    title = source(dataset).title
    try:
        # utf-8-sig: a file re-saved by a spreadsheet program starts with a byte-order mark.
        with open(path, "r", encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise CvmError(f"{title} split file {path} is not a UTF-8 text file ({e}); {restore_hint}.") from None
    except OSError as e:
        raise CvmError(f"Cannot read {title} split file {path}: {e.strerror or e}.") from None

    while lines and not lines[-1].strip():
        lines.pop()
    expected = f"at least {len(field_names)} comma-separated fields ({', '.join(field_names)})"
    rows = []
    for lineno, line in enumerate(lines, start=1):
        fields = [field.strip() for field in line.split(",")]
        problem = None
        if not line.strip():
            problem = "got an empty line"
        elif len(fields) < len(field_names):
            problem = f"got {len(fields)} ({line.strip()!r})"
        else:
            empty = [name for name, field in zip(field_names, fields) if not field]
            if empty:
                problem = f"the {empty[0]} field is empty ({line.strip()!r})"
        if problem:
            raise CvmError(
                f"Malformed {title} split file {path}, line {lineno}: expected {expected}, {problem}; {restore_hint}."
            )
        rows.append((lineno, fields))
    return rows

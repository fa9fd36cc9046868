"""`cvm data check`: verify that a dataset folder holds every file of every split, readable and at the official size.

For each listed file: does it exist, is it a file, is it non-empty and readable, does it decode
(`records.read_bgr`, which also rejects truncated JPEG/PNG files), and does it have the official size.
Missing or unreadable files make the dataset unusable; a wrong size is only a warning (the pipeline
resizes every image) but means the data differ from the official release, so results are not
comparable with published ones.

The printed report gives the count of each kind of fault (missing; each reason a file is unreadable;
wrong size) and names the first MAX_LISTED files of each; the complete list, one `path<TAB>reason`
line per faulty file, is always written to a report file (`write_fault_list`; by default
ROOT/cvm_check_<dataset>.txt, else ./cvm_check_<dataset>.txt, else the temp folder), whose path the
output gives.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import inspect
import os
import sys
import tempfile
from typing import Callable, Optional, Sequence

from cvm import atomic
from cvm.data import registry, sources
from cvm.data.registry import SQUARE
from cvm.data.records import Split, read_bgr, unreadable_reason
from cvm.errors import CvmError

# How many files of each kind of fault (missing, each unreadable reason, wrong size) a report names per
# split before "... and N more"; the report file lists them all.
MAX_LISTED = 20
# Default name of the report file listing every faulty file (see `write_fault_list`).
REPORT_NAME = "cvm_check_{dataset}.txt"


@dataclasses.dataclass
class SplitReport:
    """The result of checking one split.

    Attributes:
      pairs: pairs listed by the split file.
      checked_pairs: pairs whose files were checked (fewer than `pairs` with a limit).
      files: distinct files checked.
      missing / missing_ground / missing_aerial / missing_segmaps: files that do not exist (segmentation
        maps: synthesis checks only, `check_synthesis`).
      first_missing: path of the first missing file in split order.
      missing_files: (path, "ground" | "aerial") of every missing file, in split order.
      unreadable: (path, reason) of empty, truncated, undecodable or unreadable files and of
        directories (or other non-files) where a file should be.
      wrong_size: (path, (h, w) found, expected size) of decodable files of a non-official size.
      error: why the split could not be listed (missing or malformed split file), else None.
      official_pairs: pairs of the official split, if known.
      sizes_checked: whether an official size was expected for the ground or aerial images.
    """

    dataset: str
    name: str
    pairs: int = 0
    checked_pairs: int = 0
    files: int = 0
    missing: int = 0
    missing_ground: int = 0
    missing_aerial: int = 0
    missing_segmaps: int = 0
    first_missing: Optional[str] = None
    missing_files: list = dataclasses.field(default_factory=list)
    unreadable: list = dataclasses.field(default_factory=list)
    wrong_size: list = dataclasses.field(default_factory=list)
    error: Optional[str] = None
    official_pairs: Optional[int] = None
    sizes_checked: bool = False

    @property
    def usable(self) -> bool:
        return self.error is None and self.pairs > 0 and self.missing == 0 and not self.unreadable

    def problems(self) -> str:
        """Short summary of what makes the split unusable ("" if usable)."""
        if self.error is not None:
            return "cannot be listed"
        if self.pairs == 0:
            return "lists no pairs"
        parts = []
        if self.missing:
            parts.append(f"{self.missing} missing")
        if self.unreadable:
            parts.append(f"{len(self.unreadable)} unreadable")
        return " and ".join(parts) + (" file(s)" if parts else "")

    def format_lines(self) -> list:
        if self.error is not None:
            return [f"  {self.name}: cannot be listed: {self.error}"]
        counted = f"{self.pairs} pairs"
        if self.official_pairs is not None and self.pairs != self.official_pairs:
            counted += f" (official: {self.official_pairs})"
        if self.checked_pairs < self.pairs:
            counted += f", first {self.checked_pairs} checked"
        if self.pairs == 0:
            return [f"  {self.name}: 0 pairs: the split file lists no pairs"]
        findings = []
        if self.missing:
            findings.append(f"{self.missing} missing")
        if self.unreadable:
            findings.append(f"{len(self.unreadable)} unreadable")
        if self.wrong_size:
            findings.append(f"{len(self.wrong_size)} of wrong size")
        status = ", ".join(findings) if findings else "all present and readable"
        if not findings and self.sizes_checked:
            status += ", of the official size"
        lines = [f"  {self.name}: {counted}, {self.files} files: {status}"]
        if self.missing:
            maps = f", {self.missing_segmaps} segmentation map" if self.missing_segmaps else ""
            lines.append(f"    {self.missing} missing file(s) ({self.missing_ground} ground, "
                         f"{self.missing_aerial} aerial{maps}):")
            lines += _listed("missing", [f"{path} ({kind})" for path, kind in self.missing_files])
        if self.unreadable:
            by_reason = {}
            for path, reason in self.unreadable:
                by_reason.setdefault(reason, []).append(path)
            counts = "; ".join(f"{len(paths)} {reason}" for reason, paths in by_reason.items())
            lines.append(f"    {len(self.unreadable)} unreadable file(s): {counts}")
            for reason, paths in by_reason.items():
                lines += _listed("unreadable", [f"{path} ({reason})" for path in paths], reason)
        if self.wrong_size:
            lines.append(f"    {len(self.wrong_size)} file(s) of wrong size:")
            lines += _listed(
                "wrong size",
                [f"{path} is {_size_text(found)}, expected {_size_text(want)}"
                 for path, found, want in self.wrong_size],
            )
        return lines

    def fault_lines(self) -> list:
        """(path, reason) of every faulty file of the split: missing, unreadable, then wrong size."""
        faults = [(path, f"missing ({kind})") for path, kind in self.missing_files]
        faults += list(self.unreadable)
        faults += [(path, f"wrong size: {_size_text(found)}, expected {_size_text(want)}")
                   for path, found, want in self.wrong_size]
        return faults


@dataclasses.dataclass
class DatasetReport:
    """The result of checking every split of a dataset; `format()` is what `cvm data check` prints."""

    dataset: str
    root: str
    splits: list
    limit: Optional[int] = None
    error: Optional[str] = None  # set when no split could be listed, for one shared reason
    notes: list = dataclasses.field(default_factory=list)  # printed before the verdict; no effect on `usable`

    @property
    def usable(self) -> bool:
        return self.error is None and bool(self.splits) and all(s.usable for s in self.splits)

    def format(self, report_path: Optional[str] = None) -> str:
        """The printed report; `report_path` (where `write_fault_list` wrote) is named before the verdict."""
        title = sources.source(self.dataset).title
        header = f"{title} at {self.root}"
        if self.limit is not None:
            header += f" (quick check: first {self.limit} pairs of each split)"
        lines = [header]
        if self.error is not None:
            lines.append(f"  cannot be listed: {self.error}")
        else:
            for split in self.splits:
                lines += split.format_lines()
        if report_path is not None:
            faults = len(self.fault_lines())
            if faults:
                lines.append(f"The complete list of the {faults} faulty file(s), one path and reason per line: "
                             f"{report_path}")
            elif self.error is not None or any(split.error is not None for split in self.splits):
                lines.append(f"No faulty files in the splits that could be listed; report (empty): {report_path}")
            else:
                lines.append(f"No faulty files; report (empty): {report_path}")
        lines += [f"Note: {note}" for note in self.notes]
        lines.append(self._verdict(title))
        return "\n".join(lines)

    def fault_lines(self) -> list:
        """(path, reason) of every faulty file of every split, each file once (the report file's lines)."""
        seen, faults = set(), []
        for split in self.splits:
            for path, reason in split.fault_lines():
                if path not in seen:
                    seen.add(path)
                    faults.append((path, reason))
        return faults

    def _verdict(self, title: str) -> str:
        if not self.usable:
            if self.error is not None:
                return f"{title} is NOT usable: its splits cannot be listed; fix the error above."
            reasons = "; ".join(f"{s.name} {s.problems()}" for s in self.splits if not s.usable)
            return f"{title} is NOT usable: {reasons}. Fix or restore the files named above; see README 'Datasets'."
        scope = "all files are"
        if self.limit is not None:
            scope = f"the files of the first {self.limit} pairs of each split are"
        wrong = sum(len(s.wrong_size) for s in self.splits)
        if wrong:
            return (
                f"{title} is usable ({scope} present and readable), but {wrong} image(s) differ from the "
                f"official size: they will be resized, and the data do not match the official release."
            )
        sized = " and of the official size" if any(s.sizes_checked for s in self.splits) else ""
        return f"{title} is usable: {scope} present, readable{sized}."


def check_split(
    split: Split,
    expected_ground=None,
    expected_aerial=None,
    workers: Optional[int] = None,
    progress: bool = False,
    limit: Optional[int] = None,
) -> SplitReport:
    """Check every file of a file-backed split (existence, non-empty, decodes, size).

    Args:
      expected_ground / expected_aerial: (height, width), SQUARE, or None for any size.
      workers: decoding threads (cv2 releases the GIL); default min(32, cpu_count + 4).
      progress: show a tqdm progress bar on stderr.
      limit: check only the first `limit` pairs.
    """
    pairs = split.pairs if limit is None else split.pairs[: max(0, int(limit))]
    report = SplitReport(dataset=split.dataset, name=split.name, pairs=len(split), checked_pairs=len(pairs))

    # Distinct files in split order; a file listed twice is decoded once.
    files = {}
    for pair in pairs:
        files.setdefault(pair.ground_path, "ground")
        files.setdefault(pair.aerial_path, "aerial")
    report.sizes_checked = expected_ground is not None or expected_aerial is not None
    _check_files(report, files, {"ground": expected_ground, "aerial": expected_aerial}, workers, progress,
                 f"{split.dataset}/{split.name}")
    return report


def _check_files(report: SplitReport, files: dict, expected: dict, workers: Optional[int], progress: bool,
                 desc: str) -> None:
    """Inspect each {path: kind} ("ground", "aerial", "segmentation map") into `report`."""
    report.files = len(files)
    workers = workers or min(32, (os.cpu_count() or 1) + 4)
    counters = {"ground": "missing_ground", "aerial": "missing_aerial", "segmentation map": "missing_segmaps"}
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_inspect, files)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(files), desc=desc, unit="img", file=sys.stderr)
        for (path, kind), (status, detail) in zip(files.items(), results):
            if status == "missing":
                report.missing += 1
                setattr(report, counters[kind], getattr(report, counters[kind]) + 1)
                if report.first_missing is None:
                    report.first_missing = path
                report.missing_files.append((path, kind))
            elif status == "unreadable":
                report.unreadable.append((path, detail))
            elif not _size_matches(detail, expected.get(kind)):
                report.wrong_size.append((path, detail, expected.get(kind)))


def check_synthesis(root: str, direction: str, *, splits: Optional[Sequence[str]] = None,
                    split_file: Optional[str] = None, aerial_seg_dir: Optional[str] = None,
                    limit: Optional[int] = None, workers: Optional[int] = None,
                    progress: bool = False) -> DatasetReport:
    """Check what a CVUSA synthesis run in `direction` reads: each split's list (for g2a Regmi's
    splits/{split}_xfork_cvusa.txt unless `split_file` / `aerial_seg_dir` say otherwise:
    cvm.data.synthesis.load_cvusa_synthesis) and every input, target and target segmentation map it names.
    """
    from cvm.data.synthesis import cvusa_split_file, load_cvusa_synthesis

    if direction not in ("a2g", "g2a"):
        raise CvmError(f"--direction must be a2g (aerial -> ground) or g2a (ground -> aerial), got {direction!r}")
    spec = registry.get("cvusa", "check")
    splits = tuple(splits) if splits else spec.splits
    for name in splits:
        if name not in spec.split_names:
            raise CvmError(f"Unknown cvusa split {name!r}; valid splits: {', '.join(spec.split_names)}.")
    if limit is not None and int(limit) < 1:
        raise CvmError(f"The check limit must be a positive number of pairs, got {limit}.")
    root = sources.require_root("cvusa", root)
    ground_size, aerial_size = spec.sizes[(None, None)]
    expected = {"ground": ground_size, "aerial": aerial_size, "segmentation map": None}
    reports = []
    for name in splits:
        label = f"{name} ({direction} synthesis, {cvusa_split_file(name, split_file, direction, True, aerial_seg_dir)})"
        try:
            split = load_cvusa_synthesis(root, name, direction, segmaps=True, split_file=split_file,
                                         aerial_seg_dir=aerial_seg_dir)
        except CvmError as e:
            reports.append(SplitReport(dataset="cvusa", name=label, error=str(e)))
            continue
        samples = split.samples if limit is None else split.samples[: int(limit)]
        report = SplitReport(dataset="cvusa", name=label, pairs=len(split), checked_pairs=len(samples),
                             official_pairs=spec.official_pairs.get(name), sizes_checked=True)
        input_kind, target_kind = ("aerial", "ground") if direction == "a2g" else ("ground", "aerial")
        files = {}
        for sample in samples:
            files.setdefault(sample.input_path, input_kind)
            files.setdefault(sample.target_path, target_kind)
            files.setdefault(sample.target_seg_path, "segmentation map")
        _check_files(report, files, expected, workers, progress, f"cvusa/{name} ({direction})")
        reports.append(report)
    errors = {r.error for r in reports}
    shared_error = errors.pop() if len(errors) == 1 and len(reports) > 1 and None not in errors else None
    return DatasetReport(dataset="cvusa", root=root, splits=reports, limit=limit, error=shared_error)


def _xfork_list_note(root: str) -> Optional[str]:
    """A note for a plain CVUSA check: whether Regmi's panorama -> aerial X-Fork lists are there."""
    from cvm.data.synthesis import XFORK_SPLIT_FILES

    missing = [name for name in XFORK_SPLIT_FILES.values() if not os.path.isfile(os.path.join(root, "splits", name))]
    if not missing:
        return None
    listed = ", ".join(f"splits/{name}" for name in missing)
    return (f"{listed} not found: retrieval does not need it, but panorama -> aerial synthesis "
            "(--method xfork_pano2aerial, --direction g2a) reads its aerial segmentation targets from column 3 "
            "of Regmi's train_xfork_cvusa.txt (not published in github.com/kregmi/cross-view-image-matching); "
            "`cvm data check --dataset cvusa --direction g2a` checks that list and its files, --split_file / "
            "--aerial_seg_dir point at yours.")


def check_dataset(
    dataset: str,
    root: str,
    *,
    splits: Optional[Sequence[str]] = None,
    limit: Optional[int] = None,
    workers: Optional[int] = None,
    progress: bool = False,
    **adapter_options,
) -> DatasetReport:
    """Check every split of a dataset (or the given `splits`) under `root`.

    A split whose file is missing or malformed is reported (with the adapter's message) and the
    other splits are still checked. `adapter_options` go to the adapter (CVACT: layout, aerial,
    mat_path).

    Raises:
      CvmError: unknown dataset or split name, missing root, or an option the adapter does not take.
    """
    spec = registry.get(dataset, "check")
    splits = tuple(splits) if splits else spec.splits
    for name in splits:
        if name not in spec.split_names:
            raise CvmError(f"Unknown {dataset} split {name!r}; valid splits: {', '.join(spec.split_names)}.")
    _check_options(dataset, spec.adapter, adapter_options)
    if limit is not None and int(limit) < 1:
        raise CvmError(f"The check limit must be a positive number of pairs, got {limit}.")
    if getattr(spec, "check", None) is not None:  # a dataset's own check (VIGOR: cvm.data.vigor.check_vigor)
        return spec.check(root, splits=splits, limit=limit, workers=workers, progress=progress, **adapter_options)
    root = sources.require_root(dataset, root)

    reports = []
    for name in splits:
        try:
            split = spec.adapter(root, name, **adapter_options)
        except CvmError as e:
            reports.append(SplitReport(dataset=dataset, name=name, error=str(e)))
            continue
        key = (getattr(split, "layout", None), getattr(split, "aerial_kind", None))
        ground_size, aerial_size = spec.sizes.get(key, (None, None))
        report = check_split(split, ground_size, aerial_size, workers=workers, progress=progress, limit=limit)
        report.official_pairs = spec.official_pairs.get(name)
        reports.append(report)

    # One shared reason (missing ACT_data.mat, wrong root) is stated once instead of per split.
    errors = {r.error for r in reports}
    shared_error = errors.pop() if len(errors) == 1 and len(reports) > 1 and None not in errors else None
    notes = []
    if dataset == "cvusa" and shared_error is None:
        note = _xfork_list_note(root)
        if note:
            notes.append(note)
    return DatasetReport(dataset=dataset, root=root, splits=reports, limit=limit, error=shared_error, notes=notes)


def main_check(
    dataset: str,
    root: str,
    *,
    splits: Optional[Sequence[str]] = None,
    limit: Optional[int] = None,
    workers: Optional[int] = None,
    progress: Optional[bool] = None,
    out=None,
    report_path: Optional[str] = None,
    direction: Optional[str] = None,
    split_file: Optional[str] = None,
    aerial_seg_dir: Optional[str] = None,
    **adapter_options,
) -> int:
    """Print the report of `check_dataset`, write its complete fault list, return 0 if usable, else 1.

    `progress=None` shows progress bars when stderr is a terminal. `report_path`: where the list of
    every faulty file goes (`write_fault_list`; None: its default). `direction` (cvusa only): check what
    synthesis in that direction reads instead (`check_synthesis`, with `split_file` / `aerial_seg_dir`).
    CvmErrors for usage mistakes (unknown dataset, missing root, bad option, an unwritable
    `report_path`) propagate to the CLI.
    """
    if progress is None:
        progress = sys.stderr.isatty()
    if report_path:  # an unwritable --report fails before a long check, not after it
        write_fault_list(DatasetReport(dataset=dataset, root=str(root), splits=[]), report_path)
    if direction is not None:
        if dataset != "cvusa":
            raise CvmError(f"--direction checks CVUSA's synthesis lists; --dataset {dataset} has none (its synthesis "
                           "samples are the files `cvm data check` checks already)")
        report = check_synthesis(root, direction, splits=splits, split_file=split_file, aerial_seg_dir=aerial_seg_dir,
                                 limit=limit, workers=workers, progress=progress)
    else:
        report = check_dataset(
            dataset, root, splits=splits, limit=limit, workers=workers, progress=progress, **adapter_options
        )
    written = write_fault_list(report, report_path)
    print(report.format(report_path=written), file=out or sys.stdout)
    return 0 if report.usable else 1


def write_fault_list(report: DatasetReport, path: Optional[str] = None) -> str:
    """Write one `path<TAB>reason` line per faulty file of `report`; returns the file written.

    Without `path`: REPORT_NAME in the dataset root if it can be written there, else in the current
    directory, else in the temp folder. The file is replaced atomically (and written even when there
    are no faults, so an old list never outlives a fix).

    Raises:
      CvmError: `path` was given and cannot be written.
    """
    text = "".join(f"{file}\t{reason}\n" for file, reason in report.fault_lines())
    if path:
        candidates = [path]
    else:
        name = REPORT_NAME.format(dataset=report.dataset)
        candidates = [os.path.join(report.root, name), os.path.join(os.getcwd(), name),
                      os.path.join(tempfile.gettempdir(), name)]
    error = None
    for candidate in candidates:
        try:
            _write_atomic(candidate, text)
            return os.path.abspath(candidate)
        except OSError as e:
            error = e
    if path:
        raise CvmError(f"cannot write the check report --report {path}: {error.strerror or error}; "
                       "pass a writable file")
    raise CvmError(f"cannot write the check report ({', '.join(candidates)}): {error.strerror or error}; "
                   "pass --report FILE")


def _write_atomic(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):  # the report goes into an existing folder (atomic.replacing would make it)
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), folder)
    atomic.write_text(path, text)


def _inspect(path: str):
    """("missing", None) | ("unreadable", reason) | ("ok", (h, w)) for one file."""
    if not os.path.lexists(path):
        return "missing", None
    if os.path.isdir(path):
        return "unreadable", "a directory, not a file"
    if not os.path.exists(path):
        return "unreadable", "a broken symbolic link"
    if not os.path.isfile(path):  # a FIFO or device: opening it could block
        return "unreadable", "not a regular file"
    image = read_bgr(path)
    if image is None:
        return "unreadable", _why_unreadable(path)
    return "ok", tuple(image.shape[:2])


# The checker's wording of records.unreadable_reason.
_UNREADABLE = {"empty": "empty file, 0 bytes", "truncated": "truncated: no end-of-image marker",
               "corrupt": "cannot be decoded: corrupt or not an image", "missing": "missing"}


def _why_unreadable(path: str) -> str:
    reason = unreadable_reason(path)
    return _UNREADABLE.get(reason, reason)


def _size_matches(found, expected) -> bool:
    if expected is None:
        return True
    if expected == SQUARE:
        return found[0] == found[1]
    return tuple(found) == tuple(expected)


def _size_text(size) -> str:
    if size == SQUARE:
        return "square"
    return f"{size[0]}x{size[1]} (h x w)"


def _listed(label: str, items: list, detail: str = "") -> list:
    lines = [f"    {label}: {item}" for item in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        lines.append(f"    ... and {len(items) - MAX_LISTED} more {label}" + (f" ({detail})" if detail else ""))
    return lines


def _check_options(dataset: str, adapter: Callable, options: dict) -> None:
    params = list(inspect.signature(adapter).parameters)[2:]  # after (root, split)
    unknown = sorted(set(options) - set(params))
    if unknown:
        accepted = ", ".join(params) if params else "none"
        raise CvmError(f"Dataset {dataset!r} takes no option {unknown[0]!r}; its options: {accepted}.")

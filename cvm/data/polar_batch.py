"""Precompute SAFA polar maps for a whole dataset (`cvm data polar`), in parallel and resumable.

Where the maps go (the folders the adapters read with their polar option, as SAFA's loaders did):
  CVUSA  bingmap/19/NNNNNNN.jpg                   -> OUT/polarmap/19/NNNNNNN.png   (load_cvusa(aerial="polar"))
  CVACT  satview_polish/{id}_satView_polish.jpg    -> OUT/polarmap/{id}_satView_polish.png
  UCF-OP <aerial path as listed in the split file> -> OUT/polarmap/<same path>.png
OUT is the dataset root unless `out_dir` is given. CVACT as distributed (ANU_data_small: 832x1664
panoramas) needs a separate OUT, which becomes SAFA's preprocessed `CVACT/` folder, as its
data_preparation.py made it: besides polarmap/ it gets streetview/{id}_grdView.png (rows 208..623 of
the panorama, INTER_AREA-resized to 616x112) and a copy of ACT_data.mat, so that
load_cvact(OUT, split, aerial="polar") reads it.

Each map is computed from the full-resolution aerial (cvm.data.polar.polar_transform), written to a
temporary file in the target folder and renamed into place, so an interrupted run never leaves a
partial PNG; a rerun skips every output that exists and decodes at the expected size, and redoes the
others. Unreadable input images are reported by name; they never stop the run. A row whose output
would land outside OUT (a symbolic link under it pointing out) is refused before anything is written
(`cvm.data.outputs.output_path`).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shutil
import time
from typing import Optional, Sequence

import cv2

from cvm import atomic
from cvm.data import registry
from cvm.data.outputs import output_path
from cvm.data.parallel import progress_bar
from cvm.data.polar import POLAR_HEIGHT, POLAR_WIDTH, polar_transform
from cvm.data.records import read_bgr, unreadable_reason
from cvm.errors import CvmError

POLAR_FOLDER = "polarmap"
# SAFA's preprocessed CVACT panorama: the central half of the rows, resized to 616 x 112 (width, height).
CVACT_GROUND_SIZE = (112, 616)
# Default splits: CVACT_test lives in another folder (ANU_data_test), so it is covered only on request.
DEFAULT_SPLITS = {"cvusa": ("train", "val"), "cvact": ("train", "val"), "ucfop": ("train", "test")}
_REASONS = {"missing": "missing file", "empty": "zero-byte file", "truncated": "truncated image",
            "corrupt": "not a decodable image"}


@dataclasses.dataclass
class PolarSummary:
    """What a `precompute_polar` run did.

    Attributes:
      total: distinct outputs of the requested splits (polar maps, plus CVACT ground crops).
      written: outputs computed and written by this run.
      skipped: outputs that already existed and decoded at the expected size.
      redone: existing outputs that could not be read (or had another size) and were rewritten.
      failed: (input path, reason) of every input image that could not be turned into its output.
      out_dir: the folder the outputs were written under (OUT above).
      seconds: wall time.
    """

    total: int = 0
    written: int = 0
    skipped: int = 0
    redone: int = 0
    failed: list = dataclasses.field(default_factory=list)
    out_dir: str = ""
    seconds: float = 0.0


def polar_target(dataset: str, root: str, aerial_path: str, out_dir: str, row: Optional[str] = None) -> str:
    """Output path of the polar map of one aerial image (see the module docstring).

    CvmError (naming `row`, default the aerial path) if it would resolve outside `out_dir`
    (`cvm.data.outputs.output_path`: e.g. a symbolic link under OUT/polarmap/ pointing out).
    """
    rel = os.path.relpath(os.path.abspath(aerial_path), os.path.abspath(root))
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        # listed outside the root (UCF-OP split files may hold absolute paths)
        rel = os.path.splitdrive(os.path.abspath(aerial_path))[1].lstrip(os.sep)
    if dataset == "cvusa":
        from cvm.data.cvusa import polar_path

        name = polar_path(rel)
    else:
        parts = rel.split(os.sep)
        if dataset == "cvact" and parts[0] == "satview_polish":
            parts = parts[1:]
        parts[-1] = os.path.splitext(parts[-1])[0] + ".png"
        name = os.path.join(POLAR_FOLDER, *parts)
    return output_path(out_dir, name, row=row or f"aerial image {aerial_path}")


def polar_jobs(dataset: str, root: str, splits: Optional[Sequence[str]] = None, out_dir: Optional[str] = None,
               **options) -> list:
    """[(kind, input path, output path)] of the distinct outputs of `splits`; kind "polar" or "ground".

    Default splits: CVUSA train and val, CVACT train and val (CVACT_test is in another folder,
    ANU_data_test: pass splits=["test"] with that root), UCF-OP train and test. CVACT in the
    distributed layout adds SAFA's ground crops ("ground" jobs) and needs an `out_dir` other than
    the root (raises CvmError otherwise).
    """
    from cvm.data import load_split

    registry.get(dataset, "polar")
    jobs, seen = [], set()
    for name in list(splits or DEFAULT_SPLITS[dataset]):
        split = load_split(dataset, name, root, **options)
        out = os.path.abspath(out_dir) if out_dir else split.root
        ground_crops = dataset == "cvact" and getattr(split, "layout", None) == "distributed"
        if ground_crops and out == os.path.abspath(split.root):
            raise CvmError(
                f"{split.root} is CVACT as distributed (832x1664 panoramas); SAFA's polar input is read from a "
                f"preprocessed folder (streetview/*.png, polarmap/*.png): pass --out with another folder, e.g. "
                f"--out {os.path.join(os.path.dirname(split.root), 'CVACT')}")
        for i, pair in enumerate(split):
            row = f"{dataset} {name} row {i + 1} (id {pair.id!r})"
            if pair.aerial_path not in seen:
                seen.add(pair.aerial_path)
                jobs.append(("polar", pair.aerial_path,
                             polar_target(dataset, split.root, pair.aerial_path, out, row=row)))
            if ground_crops and pair.ground_path not in seen:
                seen.add(pair.ground_path)
                stem = os.path.splitext(os.path.basename(pair.ground_path))[0]
                jobs.append(("ground", pair.ground_path,
                             output_path(out, os.path.join("streetview", stem + ".png"), row=row)))
    return jobs


def _decodes_at(path: str, shape: tuple) -> Optional[bool]:
    """None if `path` does not exist, True if it decodes at `shape`, False otherwise."""
    if not os.path.exists(path):
        return None
    image = read_bgr(path)
    return image is not None and image.shape == shape


def _one(job):
    """Worker: ('skipped' | 'written' | 'redone' | 'failed', input path, reason or '')."""
    try:
        return _make_one(*job)
    except Exception as error:  # one bad image must not stop the others
        return "failed", job[1], f"{type(error).__name__}: {error}"


def cvact_ground_crop(panorama):
    """SAFA data_preparation.py: rows H/4 .. 3H/4 (208..623 of 832), INTER_AREA-resized to 616x112."""
    start = panorama.shape[0] // 4
    band = panorama[start:start + panorama.shape[0] // 2]
    return cv2.resize(band, (CVACT_GROUND_SIZE[1], CVACT_GROUND_SIZE[0]), interpolation=cv2.INTER_AREA)


def _make_one(kind: str, source: str, target: str, height: int, width: int, stretch: bool):
    shape = (height, width, 3) if kind == "polar" else (*CVACT_GROUND_SIZE, 3)
    previous = _decodes_at(target, shape)
    if previous:
        return "skipped", source, ""
    image = read_bgr(source)
    if image is None:
        reason = unreadable_reason(source)
        return "failed", source, _REASONS.get(reason, reason)
    if kind == "polar":
        if image.shape[0] != image.shape[1]:
            return "failed", source, (f"not square ({image.shape[0]}x{image.shape[1]}): the polar transform "
                                      "needs a square aerial image")
        output = polar_transform(image, height, width, stretch=stretch)
    else:
        output = cvact_ground_crop(image)
    ok, encoded = cv2.imencode(".png", output)
    if not ok:
        return "failed", source, "PNG encoding failed"
    try:
        # Atomic: readers see no file, the old one or the whole new one. No fsync per map (tens of
        # thousands of small files): a map lost to a crash is redone by the rerun, which re-decodes each.
        atomic.write_bytes(target, encoded.tobytes(), fsync=False)
    except OSError as error:
        return "failed", source, f"cannot write {target}: {error.strerror or error}"
    return ("written" if previous is None else "redone"), source, ""


def precompute_polar(dataset: str, root: str, out_dir: Optional[str] = None, splits: Optional[Sequence[str]] = None,
                     workers: Optional[int] = None, stretch: bool = True, height: int = POLAR_HEIGHT,
                     width: int = POLAR_WIDTH, progress: bool = True, **options) -> PolarSummary:
    """Write the SAFA polar map of every aerial image of a dataset (see the module docstring).

    Args:
      dataset: "cvusa", "cvact" or "ucfop".
      root: the dataset root (as for the adapters).
      out_dir: where polarmap/ is written (default: the root, where the adapters look; CVACT as
        distributed needs another folder, which becomes SAFA's preprocessed CVACT folder).
      splits: split names to cover (default: see `polar_jobs`).
      workers: worker processes (default: all cores).
      stretch: per-image min-max stretch as SAFA's published maps (scipy.misc.imsave); False keeps
        the interpolated values (rounded).
      height, width: polar map size (112 x 616 in SAFA).
      progress: show a tqdm progress bar.
      **options: adapter options (CVACT: layout, mat_path).

    Returns:
      A PolarSummary; failures are listed in it, not raised.

    Example:
    ```python
    summary = precompute_polar("cvusa", "/data/CVPR_subset", workers=8)
    summary.written, summary.failed
    ```
    """
    start = time.perf_counter()
    jobs = polar_jobs(dataset, root, splits, out_dir, **options)
    summary = PolarSummary(total=len(jobs))
    summary.out_dir = os.path.abspath(out_dir or root)
    if dataset == "cvact" and any(kind == "ground" for kind, _, _ in jobs):
        _copy_act_data(root, summary.out_dir, options.get("mat_path"))
    tasks = [(kind, source, target, int(height), int(width), bool(stretch)) for kind, source, target in jobs]
    workers = max(1, min(int(workers or os.cpu_count() or 1), max(1, len(tasks))))
    bar = progress_bar(len(tasks), f"polar {dataset}", "img", progress)

    def consume(results):
        for status, source, reason in results:
            if status == "failed":
                summary.failed.append((source, reason))
            else:
                setattr(summary, status, getattr(summary, status) + 1)
            bar.update(1)

    try:
        if workers == 1:
            consume(map(_one, tasks))
        else:
            # spawn: workers start clean, without a copy of a parent that may hold TensorFlow threads.
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                chunk = max(1, min(16, len(tasks) // (4 * workers)))
                consume(pool.imap_unordered(_one, tasks, chunksize=chunk))
    finally:
        bar.close()
    summary.failed.sort()
    summary.seconds = time.perf_counter() - start
    return summary


def _copy_act_data(root: str, out_dir: str, mat_path: Optional[str]) -> None:
    """ACT_data.mat beside the preprocessed folder, where load_cvact looks by default."""
    source = os.path.abspath(mat_path) if mat_path else os.path.join(os.path.abspath(root), "ACT_data.mat")
    target = os.path.join(out_dir, "ACT_data.mat")
    if os.path.abspath(source) != os.path.abspath(target):
        with atomic.replacing(target) as tmp:
            shutil.copyfile(source, tmp)

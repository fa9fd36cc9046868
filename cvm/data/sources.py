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


SOURCES = {
    "cvusa": DatasetSource(
        title="CVUSA",
        origin=(
            "The CVUSA dataset is obtained on request from its authors (Workman, Souvenir & Jacobs, "
            "'Wide-Area Image Geolocalization with Aerial Reference Imagery', ICCV 2015) via the "
            "CVUSA project page at mvrl.cse.wustl.edu; the pairs and split CSVs used here are its "
            "'CVPR_subset' archive (split CSVs in splits.tar.gz)."
        ),
        expected_files=(
            ("bingmap/19/NNNNNNN.jpg", "aerial images, 750x750"),
            ("streetview/panos/NNNNNNN.jpg", "panoramas, 1232 wide x 224 high"),
            ("splits/train-19zl.csv", "training split, 35,532 rows"),
            ("splits/val-19zl.csv", "test split (reported as 'test'), 8,884 rows"),
        ),
        root_hint="the extracted CVPR_subset folder, which holds bingmap/, streetview/ and splits/",
    ),
    "cvact": DatasetSource(
        title="CVACT",
        origin=(
            "The CVACT images are obtained by e-mail request to their authors (Liu & Li, 'Lending "
            "Orientation to Neural Networks for Cross-view Geo-localization', CVPR 2019: "
            "ANU_data_small for train/val, ANU_data_test for test); the meta file ACT_data.mat is "
            "distributed inside the CVFT, SAFA and DSM repositories under "
            "OriNet_CVACT/CVACT_orientations/ACT_data.mat."
        ),
        expected_files=(
            ("ACT_data.mat", "panoIds, utm, trainSet/valSet/valSetAll indices"),
            ("streetview/{id}_grdView.jpg", "panoramas, 1664 wide x 832 high (as distributed)"),
            ("satview_polish/{id}_satView_polish.jpg", "aerial images, 1200x1200 (as distributed)"),
            ("streetview/{id}_grdView.png", "cropped panoramas, 616x112 (SAFA/CVFT preprocessed)"),
            ("satview_polish/{id}_satView_polish.png", "aerial images (SAFA/CVFT preprocessed)"),
            ("polarmap/{id}_satView_polish.png", "polar-transformed aerial, 616x112 (SAFA preprocessed)"),
        ),
        root_hint="the folder that holds streetview/ and satview_polish/ (ANU_data_small or ANU_data_test)",
    ),
    "ucfop": DatasetSource(
        title="UCF-OP",
        origin=(
            "The UCF-OP (Orlando-Pittsburgh) dataset is obtained from the Google Drive link in the "
            "README of github.com/kregmi/cross-view-image-matching (Regmi & Shah, 'Bridging the "
            "Domain Gap for Ground-to-Aerial Image Matching', ICCV 2019)."
        ),
        expected_files=(
            ("splits/train_split.txt", "training pairs: aerial, ground, (unused), (unused) per line"),
            ("splits/test_split.txt", "test pairs: aerial, ground per line"),
            ("<lat>_<lon>_nadir.png", "aerial images (paths as listed in the split files)"),
            ("<lat>_<lon>.png", "ground images (paths as listed in the split files)"),
        ),
        root_hint="the extracted UCF-OP folder, which holds splits/ and the images",
    ),
    "dayton": DatasetSource(
        title="Dayton",
        origin=(
            "The Dayton images are the GT-CrossView dataset of Vo & Hays (ECCV 2016, "
            "github.com/lugiavn/gt-crossview); the segmentation maps Regmi & Borji made with a "
            "Cityscapes RefineNet are shared through the 'Dayton SegMaps' link in the README of "
            "github.com/kregmi/cross-view-image-synthesis, and the name lists train_split.txt "
            "(55,000) and test_split.txt (21,048) are that repository's datasets/dayton_split folder. "
            "Each training file is a 256x1024 concatenation A|B|As|Bs (street view, aerial, street-view "
            "segmap, aerial segmap, 256x256 each) made as pix2pix's scripts/combine_A_and_B.py does."
        ),
        expected_files=(
            ("train_split.txt", "training names, 55,000 lines (also found under dayton_split/ or splits/)"),
            ("test_split.txt", "test names, 21,048 lines (also found under dayton_split/ or splits/)"),
            ("train/<name>.jpg", "training files, 256x1024: street view | aerial | street segmap | aerial segmap"),
            ("test/<name>.jpg", "test files, same layout (a folder named val/ is accepted too)"),
        ),
        root_hint="the folder that holds train/, test/ (or val/) and the two split files",
    ),
}


def source(dataset: str) -> DatasetSource:
    try:
        return SOURCES[dataset]
    except KeyError:
        raise CvmError(
            f"Unknown dataset {dataset!r}; known datasets with official files: {', '.join(sorted(SOURCES))}."
        ) from None


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

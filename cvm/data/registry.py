"""The datasets cvm knows: one entry each, which every other module reads (adapters, checks, flags, errors).

An entry says how to load a split (the adapter), which splits exist, what `cvm data check` expects (image
sizes, official pair counts), where the official files come from, and what the dataset serves ("retrieval",
"synthesis", "polar": `cvm data polar`, "check": `cvm data check`, "regmi_iccv19": the pipeline). Adding a
dataset is one `register(Dataset(...))` (here or in its adapter module) plus the adapter.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from cvm.data import cvact, cvusa, dayton, ucfop, vigor
from cvm.data.sources import DatasetSource
from cvm.errors import CvmError

# An expected image size for `cvm data check`: (height, width), SQUARE (any h == w), or None (any image).
SQUARE = "square"
USES = ("retrieval", "synthesis", "polar", "check", "regmi_iccv19")
USE_TEXT = {"retrieval": "retrieval training", "synthesis": "image synthesis", "polar": "`cvm data polar`",
            "check": "`cvm data check`", "regmi_iccv19": "the regmi_iccv19 pipeline"}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One dataset.

    Attributes:
      name: the --dataset value.
      uses: what it serves (USES).
      adapter: `load_xxx(root, split, **options) -> Split` (None: the synthetic world, rendered in memory).
      splits: the distinct splits (`cvm data check` checks these; aliases such as CVUSA "test" left out).
      split_names: every split name the adapter accepts, aliases included.
      sizes: (layout, aerial kind) -> (ground size, aerial size) the check expects; the key is read from the
        split's `layout` / `aerial_kind` attributes, (None, None) for datasets with a single layout.
      official_pairs: split -> number of pairs of the official split file (a differing count is reported).
      source: where the official files come from and what a root holds (None: nothing to download).
      check: the dataset's own `cvm data check` (`check(root, splits=, limit=, workers=, progress=, **options)
        -> cvm.data.check.DatasetReport`) instead of the per-split one (None: the per-split one).
    """

    name: str
    uses: frozenset
    adapter: Optional[Callable] = None
    splits: tuple = ()
    split_names: tuple = ()
    sizes: dict = dataclasses.field(default_factory=dict)
    official_pairs: dict = dataclasses.field(default_factory=dict)
    source: Optional[DatasetSource] = None
    check: Optional[Callable] = None


DATASETS: dict = {}


def register(dataset: Dataset) -> Dataset:
    """Add a dataset (an adapter module may call this for itself)."""
    unknown = set(dataset.uses) - set(USES)
    if unknown:
        raise ValueError(f"dataset {dataset.name!r}: unknown uses {sorted(unknown)}")
    if dataset.name in DATASETS and DATASETS[dataset.name] is not dataset:
        raise ValueError(f"dataset {dataset.name!r} is registered twice")
    DATASETS[dataset.name] = dataset
    return dataset


def names(use: Optional[str] = None) -> tuple:
    """The dataset names (those serving `use`), in registration order."""
    return tuple(name for name, d in DATASETS.items() if use is None or use in d.uses)


def get(name: str, use: Optional[str] = None, flag: str = "--dataset") -> Dataset:
    """The entry of `name`; a CvmError naming the valid datasets (for `use`) otherwise."""
    entry = DATASETS.get(name)
    if entry is None or (use is not None and use not in entry.uses):
        what = f" for {USE_TEXT[use]}" if use else ""
        raise CvmError(f"unknown {flag} {name!r}{what}; valid: {', '.join(names(use))}")
    return entry


register(Dataset(
    name="synthetic",
    uses=frozenset({"retrieval", "synthesis", "regmi_iccv19"}),
))
register(Dataset(
    name="cvusa",
    uses=frozenset({"retrieval", "synthesis", "polar", "check", "regmi_iccv19"}),
    adapter=cvusa.load_cvusa,
    splits=("train", "val"),
    split_names=tuple(cvusa.SPLIT_FILES),
    sizes={(None, None): ((224, 1232), (750, 750))},
    official_pairs={"train": 35532, "val": 8884},
    source=DatasetSource(
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
))
register(Dataset(
    name="cvact",
    uses=frozenset({"retrieval", "synthesis", "polar", "check"}),
    adapter=cvact.load_cvact,
    splits=("train", "val", "test"),
    split_names=tuple(cvact.SPLIT_FIELDS),
    sizes={
        ("distributed", "satview"): ((832, 1664), (1200, 1200)),
        ("preprocessed", "satview"): ((112, 616), SQUARE),
        ("preprocessed", "polar"): ((112, 616), (112, 616)),
    },
    official_pairs={"train": 35532, "val": 8884, "test": 92802},
    source=DatasetSource(
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
))
register(Dataset(
    name="ucfop",
    uses=frozenset({"retrieval", "synthesis", "polar", "check", "regmi_iccv19"}),
    adapter=ucfop.load_ucfop,
    splits=("train", "test"),
    split_names=tuple(ucfop.SPLIT_FILES),
    sizes={(None, None): (None, None)},
    source=DatasetSource(
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
))
# One 4-panel file per pair (ground and aerial path are the same file, counted as "ground").
register(Dataset(
    name="dayton",
    uses=frozenset({"synthesis", "check"}),
    adapter=dayton.load_dayton,
    splits=dayton.SPLITS,
    split_names=tuple(dayton.SPLIT_FILES),
    sizes={(None, None): (dayton.FILE_SIZE, dayton.FILE_SIZE)},
    official_pairs=dict(dayton.OFFICIAL_PAIRS),
    source=DatasetSource(
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
))
# VIGOR: queries against a larger reference set, with semi-positives (cvm.data.vigor; its own check).
register(Dataset(
    name="vigor",
    uses=frozenset({"retrieval", "check"}),
    adapter=vigor.load_vigor,
    splits=("train", "test"),
    split_names=vigor.SPLIT_NAMES,
    sizes={(None, None): (vigor.PANORAMA_SIZE, vigor.TILE_SIZE)},
    source=vigor.SOURCE,
    check=vigor.check_vigor,
))

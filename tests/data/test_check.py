"""`cvm data check` on tiny dataset folders with missing, empty, truncated and wrong-size images."""

import io
import os

import cv2
import numpy as np
import pytest
import scipy.io

from cvm.data.check import SQUARE, check_dataset, check_split, main_check
from cvm.data.records import Pair, Split
from cvm.errors import CvmError

CVUSA_GROUND = (224, 1232)
CVUSA_AERIAL = (750, 750)


def write_image(path, size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)


def make_cvusa(root, train_ids=("0000001", "0000002", "0000003"), val_ids=("0000004", "0000005")):
    """A CVUSA folder with official-size images for every listed pair."""
    for csv, ids in (("train-19zl.csv", train_ids), ("val-19zl.csv", val_ids)):
        rows = [f"bingmap/19/{i}.jpg,streetview/panos/{i}.jpg,streetview/annotations/{i}.png" for i in ids]
        os.makedirs(root / "splits", exist_ok=True)
        (root / "splits" / csv).write_text("\n".join(rows) + "\n")
        for i in ids:
            write_image(root / "bingmap" / "19" / f"{i}.jpg", CVUSA_AERIAL)
            write_image(root / "streetview" / "panos" / f"{i}.jpg", CVUSA_GROUND)
    return root


@pytest.fixture
def broken_cvusa(tmp_path):
    root = make_cvusa(tmp_path / "cvusa")
    missing = root / "streetview" / "panos" / "0000001.jpg"
    empty = root / "bingmap" / "19" / "0000002.jpg"
    truncated = root / "streetview" / "panos" / "0000003.jpg"
    wrong_size = root / "bingmap" / "19" / "0000004.jpg"
    os.remove(missing)
    empty.write_bytes(b"")
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    write_image(wrong_size, (100, 120))
    return root, {"missing": missing, "empty": empty, "truncated": truncated, "wrong_size": wrong_size}


def test_clean_cvusa_is_usable(tmp_path):
    root = make_cvusa(tmp_path / "cvusa")
    out = io.StringIO()
    assert main_check("cvusa", str(root), out=out, progress=False) == 0
    text = out.getvalue()
    assert "train: 3 pairs (official: 35532), 6 files: all present and readable, of the official size" in text
    assert text.strip().splitlines()[-1].startswith("CVUSA is usable")


def test_broken_cvusa_names_every_bad_file(broken_cvusa):
    root, bad = broken_cvusa
    report = check_dataset("cvusa", root, workers=3)
    train, val = report.splits
    assert (train.pairs, train.files, train.missing, train.missing_ground) == (3, 6, 1, 1)
    assert train.first_missing == str(bad["missing"])
    assert dict(train.unreadable) == {
        str(bad["empty"]): "empty file, 0 bytes",
        str(bad["truncated"]): "truncated: no end-of-image marker",
    }
    assert val.usable and val.wrong_size == [(str(bad["wrong_size"]), (100, 120), CVUSA_AERIAL)]
    assert not train.usable and not report.usable

    out = io.StringIO()
    assert main_check("cvusa", root, out=out, progress=False) == 1
    text = out.getvalue()
    for path in bad.values():
        assert str(path) in text
    assert "100x120 (h x w), expected 750x750 (h x w)" in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("CVUSA is NOT usable") and "train 1 missing and 2 unreadable file(s)" in last


def test_wrong_size_alone_is_a_warning(tmp_path):
    root = make_cvusa(tmp_path / "cvusa", train_ids=("0000001",), val_ids=("0000002",))
    write_image(root / "streetview" / "panos" / "0000002.jpg", (100, 400))
    out = io.StringIO()
    assert main_check("cvusa", root, out=out, progress=False) == 0
    assert "1 image(s) differ from the official size" in out.getvalue()


def test_limit_checks_only_the_first_pairs(broken_cvusa):
    root, bad = broken_cvusa
    report = check_dataset("cvusa", root, limit=1)
    train = report.splits[0]
    assert (train.pairs, train.checked_pairs, train.files, train.missing, train.unreadable) == (3, 1, 2, 1, [])
    assert "first 1 pairs of each split" in report.format()
    assert not report.usable  # the first train pair already misses its panorama


def test_missing_split_file_is_reported_and_other_splits_checked(tmp_path):
    root = make_cvusa(tmp_path / "cvusa", train_ids=("0000001",), val_ids=("0000002",))
    os.remove(root / "splits" / "val-19zl.csv")
    out = io.StringIO()
    assert main_check("cvusa", root, out=out, progress=True) == 1
    text = out.getvalue()
    assert "train: 1 pairs" in text
    assert f"val: cannot be listed: CVUSA split file not found: {root / 'splits' / 'val-19zl.csv'}" in text


def test_shared_error_is_reported_once(tmp_path):
    root = tmp_path / "act"
    os.makedirs(root)
    report = check_dataset("cvact", root)
    assert not report.usable and "ACT_data.mat" in report.error
    assert report.format().count("OriNet_CVACT") == 1


def test_cvact_preprocessed_sizes(tmp_path):
    root = tmp_path / "act"
    ids = ["a", "b", "c"]
    os.makedirs(root)
    scipy.io.savemat(
        str(root / "ACT_data.mat"),
        {
            "panoIds": np.array(ids, dtype=object).reshape(-1, 1),
            "utm": np.zeros((3, 2)),
            "trainSet": {"trainInd": np.array([[1.0], [2.0]])},
            "valSet": {"valInd": np.array([[3.0]])},
            "valSetAll": {"valInd": np.array([[3.0]])},
        },
    )
    for i in ids:
        write_image(root / "streetview" / f"{i}_grdView.png", (112, 616))
        write_image(root / "satview_polish" / f"{i}_satView_polish.png", (64, 64))
    write_image(root / "satview_polish" / "b_satView_polish.png", (64, 60))  # not square
    report = check_dataset("cvact", root)
    train = report.splits[0]
    not_square = str(root / "satview_polish" / "b_satView_polish.png")
    assert report.usable and train.wrong_size == [(not_square, (64, 60), SQUARE)]
    assert "expected square" in report.format()


def test_long_lists_are_cut(tmp_path):
    pairs = []
    for i in range(25):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(b"")
        pairs.append(Pair(str(path), str(path), str(i)))
    report = check_split(Split("cvusa", "train", str(tmp_path), pairs))
    assert len(report.unreadable) == 25
    text = "\n".join(report.format_lines())
    assert text.count("unreadable: ") == 20 and "... and 5 more unreadable" in text


def test_usage_errors_raise(tmp_path):
    with pytest.raises(CvmError, match="cvusa, cvact, ucfop"):
        check_dataset("kitti", tmp_path)
    with pytest.raises(CvmError, match="layout"):
        check_dataset("cvusa", tmp_path, layout="distributed")
    with pytest.raises(CvmError, match=str(tmp_path / "missing")):
        main_check("ucfop", tmp_path / "missing")

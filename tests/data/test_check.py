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


# --- every fault named: `cvm data synth` folders with several faults of each kind --------------------

@pytest.fixture(scope="module")
def synth_cvusa(tmp_path_factory):
    """A clean 16-pair `cvm data synth` CVUSA folder (12 train, 4 val), copied per test by `faulty_cvusa`."""
    from cvm.data.synthetic import write_dataset

    root = tmp_path_factory.mktemp("synth") / "cvusa"
    write_dataset(str(root), layout="cvusa", pairs=16, seed=3, val_fraction=0.25, progress=False, segmaps=False)
    return root


def _deny_reads(monkeypatch, paths):
    """Make `paths` unreadable: chmod 000, or (as root, who reads anyway) an open() that raises EACCES."""
    if os.geteuid() != 0:
        for path in paths:
            os.chmod(path, 0)
        return
    import builtins

    from cvm.data import records

    denied = {str(p) for p in paths}
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if str(file) in denied:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(records, "open", guarded_open, raising=False)


@pytest.fixture
def faulty_cvusa(synth_cvusa, tmp_path, monkeypatch):
    """The synth folder with two or more faults of every kind in train; returns (root, {path: reason})."""
    import shutil

    root = tmp_path / "cvusa"
    shutil.copytree(synth_cvusa, root)
    pano = lambda i: root / "streetview" / "panos" / f"{i:07d}.jpg"  # noqa: E731
    aerial = lambda i: root / "bingmap" / "19" / f"{i:07d}.jpg"  # noqa: E731
    expected = {}
    for path in (pano(1), pano(2), aerial(3)):
        os.remove(path)
    expected.update({str(pano(1)): "missing (ground)", str(pano(2)): "missing (ground)",
                     str(aerial(3)): "missing (aerial)"})
    for path in (aerial(4), aerial(5), pano(6)):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        expected[str(path)] = "truncated: no end-of-image marker"
    for path in (pano(4), aerial(6)):
        path.write_bytes(b"")
        expected[str(path)] = "empty file, 0 bytes"
    for path in (pano(7), aerial(7)):
        path.write_bytes(b"GIF89a this is not an image at all")
        expected[str(path)] = "cannot be decoded: corrupt or not an image"
    for path in (pano(8), aerial(8)):
        os.remove(path)
        os.mkdir(path)
        expected[str(path)] = "a directory, not a file"
    _deny_reads(monkeypatch, [pano(9), aerial(9)])
    expected[str(pano(9))] = expected[str(aerial(9))] = "cannot be read: Permission denied"
    write_image(pano(10), (100, 400))
    write_image(aerial(11), (64, 64))
    expected[str(pano(10))] = "wrong size: 100x400 (h x w), expected 224x1232 (h x w)"
    expected[str(aerial(11))] = "wrong size: 64x64 (h x w), expected 750x750 (h x w)"
    yield root, expected
    for path in (pano(9), aerial(9)):
        os.chmod(path, 0o644)


def test_every_fault_of_every_kind_is_named_and_listed(faulty_cvusa, tmp_path):
    root, expected = faulty_cvusa
    out = io.StringIO()
    report_file = tmp_path / "reports" / "check.txt"
    os.makedirs(report_file.parent)
    assert main_check("cvusa", str(root), out=out, progress=False, workers=2, report_path=str(report_file)) == 1
    text = out.getvalue()
    for path in expected:
        assert path in text, path
    assert "train: 12 pairs (official: 35532), 24 files: 3 missing, 11 unreadable, 2 of wrong size" in text
    assert "3 missing file(s) (2 ground, 1 aerial):" in text
    # Each reason is counted (in the order first met in the split) and its files named.
    assert ("11 unreadable file(s): 2 empty file, 0 bytes; 3 truncated: no end-of-image marker; 2 cannot be "
            "decoded: corrupt or not an image; 2 a directory, not a file; 2 cannot be read: Permission denied"
            ) in text
    assert "2 file(s) of wrong size:" in text
    assert f"The complete list of the {len(expected)} faulty file(s), one path and reason per line: {report_file}" in text
    assert text.strip().splitlines()[-1].startswith("CVUSA is NOT usable: train 3 missing and 11 unreadable")

    lines = report_file.read_text().splitlines()
    assert len(lines) == len(expected)
    assert dict(line.split("\t") for line in lines) == expected


def test_long_fault_lists_are_cut_per_kind_and_the_report_has_them_all(tmp_path):
    pairs = []
    for i in range(25):  # 25 missing panoramas, 22 truncated aerials
        ground = tmp_path / f"g{i}.jpg"
        aerial = tmp_path / f"a{i}.jpg"
        if i < 22:
            write_image(aerial, (8, 8))
            data = aerial.read_bytes()
            aerial.write_bytes(data[:-20])
        else:
            write_image(aerial, (8, 8))
        pairs.append(Pair(str(ground), str(aerial), str(i)))
    split_report = check_split(Split("cvusa", "train", str(tmp_path), pairs))
    text = "\n".join(split_report.format_lines())
    assert split_report.missing == 25 and len(split_report.missing_files) == 25
    assert text.count("    missing: ") == 20 and "... and 5 more missing" in text
    assert text.count("    unreadable: ") == 20 and "... and 2 more unreadable (truncated" in text
    for i in range(20):
        assert str(tmp_path / f"g{i}.jpg") in text
    assert str(tmp_path / "g20.jpg") not in text

    from cvm.data.check import DatasetReport, write_fault_list

    path = write_fault_list(DatasetReport("cvusa", str(tmp_path), [split_report]), str(tmp_path / "all.txt"))
    lines = open(path).read().splitlines()
    assert len(lines) == 47
    assert sum(line.endswith("\tmissing (ground)") for line in lines) == 25


def test_default_report_file_is_in_the_root_else_the_current_directory(tmp_path, monkeypatch):
    from cvm.data import check as check_module

    root = make_cvusa(tmp_path / "cvusa", train_ids=("0000001",), val_ids=("0000002",))
    os.remove(root / "bingmap" / "19" / "0000002.jpg")
    out = io.StringIO()
    assert main_check("cvusa", str(root), out=out, progress=False) == 1
    in_root = root / "cvm_check_cvusa.txt"
    assert f"one path and reason per line: {in_root}" in out.getvalue()
    assert in_root.read_text() == f"{root / 'bingmap' / '19' / '0000002.jpg'}\tmissing (aerial)\n"

    # A read-only dataset folder (simulated: root may write anywhere): the report goes to the current directory.
    cwd = tmp_path / "cwd"
    os.makedirs(cwd)
    monkeypatch.chdir(cwd)
    real_write = check_module._write_atomic

    def read_only_root(path, text):
        if os.path.dirname(os.path.abspath(path)) == str(root):
            raise PermissionError(13, "Permission denied", path)
        real_write(path, text)

    monkeypatch.setattr(check_module, "_write_atomic", read_only_root)
    out = io.StringIO()
    assert main_check("cvusa", str(root), out=out, progress=False) == 1
    assert f"one path and reason per line: {cwd / 'cvm_check_cvusa.txt'}" in out.getvalue()
    assert (cwd / "cvm_check_cvusa.txt").read_text().count("\n") == 1

    # A clean dataset still gets its (empty) report, so an old list never outlives the fix.
    make_cvusa(root, train_ids=("0000001",), val_ids=("0000002",))
    out = io.StringIO()
    assert main_check("cvusa", str(root), out=out, progress=False, report_path=str(cwd / "r.txt")) == 0
    assert f"No faulty files; report (empty): {cwd / 'r.txt'}" in out.getvalue()
    assert (cwd / "r.txt").read_text() == ""
    with pytest.raises(CvmError, match="--report"):
        main_check("cvusa", str(root), out=io.StringIO(), progress=False, report_path=str(cwd / "no" / "r.txt"))


def test_cvusa_synthesis_check_reads_regmis_list_and_names_it_when_missing(tmp_path):
    """`cvm data check --dataset cvusa --direction g2a`: the X-Fork list, and every file it names."""
    from cvm.data.synthetic import write_dataset

    root = tmp_path / "cvusa"
    write_dataset(str(root), "cvusa", 4, seed=0, val_fraction=0.25, progress=False, workers=1)
    out = io.StringIO()
    assert main_check("cvusa", str(root), out=out, progress=False, direction="g2a") == 0
    text = out.getvalue()
    assert "train (g2a synthesis, splits/train_xfork_cvusa.txt): 3 pairs (official: 35532), 9 files" in text
    os.remove(root / "bingmap" / "annotations" / "0000002.png")
    out = io.StringIO()
    assert main_check("cvusa", str(root), out=out, progress=False, direction="g2a") == 1
    text = out.getvalue()
    assert "1 missing file(s) (0 ground, 0 aerial, 1 segmentation map)" in text
    assert f"{root / 'bingmap' / 'annotations' / '0000002.png'} (segmentation map)" in text
    # --aerial_seg_dir reads the official CSVs and DIR/<stem>.png; a2g reads the official CSVs' column 3.
    out = io.StringIO()
    assert main_check("cvusa", str(root), out=out, progress=False, direction="g2a",
                      aerial_seg_dir="bingmap/annotations", splits=["val"]) == 0
    assert "val (g2a synthesis, splits/val-19zl.csv)" in out.getvalue()
    out = io.StringIO()
    assert main_check("cvusa", str(root), out=out, progress=False, direction="a2g", splits=["val"]) == 0
    # Without the lists: the split cannot be listed, and the error says which file, whose, and the flags.
    for name in ("train_xfork_cvusa.txt", "val_xfork_cvusa.txt"):
        os.remove(root / "splits" / name)
    out = io.StringIO()
    assert main_check("cvusa", str(root), out=out, progress=False, direction="g2a", splits=["train"]) == 1
    text = out.getvalue()
    assert f"cannot be listed: CVUSA split file not found: {root / 'splits' / 'train_xfork_cvusa.txt'}" in text
    assert "train_xfork_pano2aerial.lua" in text and "--split_file" in text
    # The plain (retrieval) check is still usable and notes the missing lists.
    out = io.StringIO()
    assert main_check("cvusa", str(root), out=out, progress=False) == 0
    text = out.getvalue()
    assert "Note: splits/train_xfork_cvusa.txt, splits/val_xfork_cvusa.txt not found" in text
    assert "--direction g2a" in text and text.strip().splitlines()[-1].startswith("CVUSA is usable")
    with pytest.raises(CvmError, match="--direction checks CVUSA's synthesis lists"):
        main_check("dayton", str(root), out=io.StringIO(), progress=False, direction="g2a")


def test_cli_synthesis_check_flags_are_refused_where_they_do_nothing(tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def cvm_data(*argv):
        return subprocess.run([sys.executable, "-m", "cvm.cli.main", "data", *argv], capture_output=True, text=True,
                              timeout=300, cwd=root, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))

    done = cvm_data("check", "--dataset=cvact", f"--root={tmp_path}", "--direction=g2a")
    assert done.returncode == 2 and "--direction has no effect: only --dataset cvusa" in done.stderr
    done = cvm_data("check", "--dataset=cvusa", f"--root={tmp_path}", "--split_file=x.txt")
    assert done.returncode == 2 and "--split_file has no effect: it places the files of a synthesis check" in done.stderr
    done = cvm_data("check", "--dataset=cvusa", f"--root={tmp_path}", "--direction=a2g", "--aerial_seg_dir=m")
    assert done.returncode == 2 and "--aerial_seg_dir has no effect: --direction a2g" in done.stderr
    done = cvm_data("check", "--dataset=cvusa", f"--root={tmp_path}", "--direction=g2a", "--splits=train")
    assert done.returncode == 1 and "train_xfork_cvusa.txt" in done.stdout

"""Adapters for the official datasets, on tiny folders written in tmp_path."""

import os

import cv2
import numpy as np
import pytest
import scipy.io

from cvm.data.cvact import load_cvact
from cvm.data.cvusa import load_cvusa
from cvm.data.ucfop import load_ucfop
from cvm.errors import CvmError


def write_image(path, h=8, w=16):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), np.full((h, w, 3), 128, np.uint8))


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


# ---------------------------------------------------------------- CVUSA

CVUSA_IDS = ["0000019", "0000003", "0000152"]


def cvusa_row(pid, annotation=True):
    row = f"bingmap/19/{pid}.jpg,streetview/panos/{pid}.jpg"
    return row + (f",streetview/annotations/{pid}.png" if annotation else "")


@pytest.fixture
def cvusa_root(tmp_path):
    root = tmp_path / "CVPR_subset"
    # Trailing newlines, a row without the annotation column; images only for the first pair.
    rows = [cvusa_row(CVUSA_IDS[0]), cvusa_row(CVUSA_IDS[1], annotation=False), cvusa_row(CVUSA_IDS[2])]
    write_text(root / "splits" / "train-19zl.csv", "\n".join(rows) + "\n\n\n")
    write_text(root / "splits" / "val-19zl.csv", "\r\n".join(rows[::-1]) + "\r\n")
    write_image(root / "bingmap" / "19" / f"{CVUSA_IDS[0]}.jpg")
    return root


def test_cvusa_parses_rows_in_order_with_absolute_paths(cvusa_root):
    split = load_cvusa(str(cvusa_root), "train")
    assert (split.dataset, split.name, len(split)) == ("cvusa", "train", 3)
    assert split.ids == CVUSA_IDS
    first = split[0]
    assert first.aerial_path == os.path.join(str(cvusa_root), "bingmap", "19", "0000019.jpg")
    assert first.ground_path == os.path.join(str(cvusa_root), "streetview", "panos", "0000019.jpg")
    assert all(os.path.isabs(p.ground_path) and os.path.isabs(p.aerial_path) for p in split)
    assert split.location_kind is None and split.locations() is None and split.ground_rows is None
    assert "CVUSA" in split.source


def test_cvusa_relative_root_gives_absolute_paths(cvusa_root, monkeypatch):
    monkeypatch.chdir(cvusa_root.parent)
    split = load_cvusa("CVPR_subset", "val")
    assert split.root == str(cvusa_root)
    assert split[0].aerial_path == os.path.join(str(cvusa_root), "bingmap", "19", "0000152.jpg")


def test_cvusa_test_is_an_alias_of_val(cvusa_root):
    val, test = load_cvusa(cvusa_root, "val"), load_cvusa(cvusa_root, "test")
    assert test.name == "test"
    assert test.ids == val.ids == CVUSA_IDS[::-1]
    assert [p.aerial_path for p in test] == [p.aerial_path for p in val]


def test_cvusa_malformed_row_names_file_and_line(cvusa_root):
    path = cvusa_root / "splits" / "train-19zl.csv"
    write_text(path, f"{cvusa_row('0000001')}\nbingmap/19/0000002.jpg\n{cvusa_row('0000003')}\n")
    with pytest.raises(CvmError) as err:
        load_cvusa(cvusa_root, "train")
    msg = str(err.value)
    assert str(path) in msg and "line 2" in msg
    assert "expected at least 2 comma-separated fields (aerial, ground), got 1" in msg


def test_cvusa_empty_line_inside_file_is_malformed(cvusa_root):
    write_text(cvusa_root / "splits" / "train-19zl.csv", f"{cvusa_row('0000001')}\n\n{cvusa_row('0000003')}\n")
    with pytest.raises(CvmError, match="line 2"):
        load_cvusa(cvusa_root, "train")


def test_cvusa_missing_root_names_path_and_source(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(CvmError) as err:
        load_cvusa(missing, "train")
    msg = str(err.value)
    assert str(missing) in msg and "CVUSA" in msg and "Workman" in msg and "CVPR_subset" in msg


def test_cvusa_missing_split_file_names_path_and_source(cvusa_root):
    os.remove(cvusa_root / "splits" / "val-19zl.csv")
    with pytest.raises(CvmError) as err:
        load_cvusa(cvusa_root, "test")
    msg = str(err.value)
    assert str(cvusa_root / "splits" / "val-19zl.csv") in msg
    assert "split file" in msg and "splits.tar.gz" in msg and "README" in msg


def test_cvusa_unknown_split_lists_valid_ones(cvusa_root):
    with pytest.raises(CvmError, match="'train', 'val', 'test'"):
        load_cvusa(cvusa_root, "validation")


# ---------------------------------------------------------------- CVACT

ACT_IDS = ["__-DFIFxvZBCn1873qkqXA", "__0Lbk2vJg4SgcIqGyHSkw", "_1Mo0dHhYygsoZBwAd6Dzw", "_2GD6ot0EfQ7u6_t1t1EOA"]
ACT_UTM = np.array([[690000.5, 6090000.0], [690100.0, 6090100.25], [690200.0, 6090200.0], [690300.0, 6090300.0]])


def write_act_mat(path, ids=ACT_IDS, utm=ACT_UTM, train=(3, 1), val=(2,), val_all=(4, 2, 1), char_matrix=False):
    """ACT_data.mat as in the original: cell array of ids, structs of 1-based column vectors."""
    pano_ids = np.array(ids) if char_matrix else np.array(ids, dtype=object).reshape(-1, 1)
    col = lambda ind: np.asarray(ind, dtype=np.float64).reshape(-1, 1)  # MATLAB doubles
    mat = {"panoIds": pano_ids, "utm": np.asarray(utm)}
    if train is not None:
        mat["trainSet"] = {"trainInd": col(train)}
    if val is not None:
        mat["valSet"] = {"valInd": col(val)}
    if val_all is not None:
        mat["valSetAll"] = {"valInd": col(val_all)}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    scipy.io.savemat(str(path), mat)


@pytest.fixture
def act_distributed(tmp_path):
    root = tmp_path / "ANU_data_small"
    write_act_mat(root / "ACT_data.mat")
    for pid in ACT_IDS[:2]:
        write_image(root / "streetview" / f"{pid}_grdView.jpg", 16, 32)
        write_image(root / "satview_polish" / f"{pid}_satView_polish.jpg", 12, 12)
    return root


@pytest.fixture
def act_preprocessed(tmp_path):
    root = tmp_path / "ANU_data_prep"
    write_act_mat(root / "ACT_data.mat")
    for pid in ACT_IDS:
        write_image(root / "streetview" / f"{pid}_grdView.png", 8, 44)
        write_image(root / "satview_polish" / f"{pid}_satView_polish.png", 10, 10)
        write_image(root / "polarmap" / f"{pid}_satView_polish.png", 8, 44)
    return root


def test_cvact_distributed_layout_is_detected(act_distributed):
    split = load_cvact(act_distributed, "train")
    assert (split.dataset, split.name, split.layout, split.aerial_kind) == ("cvact", "train", "distributed", "satview")
    assert split.ids == [ACT_IDS[2], ACT_IDS[0]]  # trainInd order (3, 1), 1-based
    assert split.ground_rows == (0.25, 0.75)
    assert split[1].ground_path == os.path.join(str(act_distributed), "streetview", f"{ACT_IDS[0]}_grdView.jpg")
    assert split[1].aerial_path == os.path.join(
        str(act_distributed), "satview_polish", f"{ACT_IDS[0]}_satView_polish.jpg"
    )
    assert split.location_kind == "utm"
    np.testing.assert_array_equal(split.locations(), ACT_UTM[[2, 0]])
    assert split[1].location == (690000.5, 6090000.0)


def test_cvact_preprocessed_layout_and_polar_aerial(act_preprocessed):
    split = load_cvact(act_preprocessed, "test")
    assert split.layout == "preprocessed" and split.ground_rows is None
    assert split.ids == [ACT_IDS[3], ACT_IDS[1], ACT_IDS[0]]  # valSetAll.valInd
    assert split[0].ground_path.endswith(os.path.join("streetview", f"{ACT_IDS[3]}_grdView.png"))
    assert split[0].aerial_path.endswith(os.path.join("satview_polish", f"{ACT_IDS[3]}_satView_polish.png"))
    polar = load_cvact(act_preprocessed, "val", aerial="polar")
    assert polar.ids == [ACT_IDS[1]]  # valSet.valInd
    assert polar[0].aerial_path == os.path.join(str(act_preprocessed), "polarmap", f"{ACT_IDS[1]}_satView_polish.png")


def test_cvact_polar_needs_preprocessed_layout(act_distributed):
    with pytest.raises(CvmError, match="polar"):
        load_cvact(act_distributed, "train", aerial="polar")


def test_cvact_forced_layout_lists_pairs_without_files(tmp_path):
    root = tmp_path / "empty_act"
    write_act_mat(root / "ACT_data.mat")
    with pytest.raises(CvmError) as err:  # auto cannot decide without any file
        load_cvact(root, "train")
    assert "layout" in str(err.value) and f"{ACT_IDS[2]}_grdView.jpg" in str(err.value)
    split = load_cvact(root, "train", layout="preprocessed")
    assert split.ids == [ACT_IDS[2], ACT_IDS[0]] and not os.path.exists(split[0].ground_path)
    assert load_cvact(root, "train", layout="distributed").ground_rows == (0.25, 0.75)


def test_cvact_char_matrix_ids_and_mat_path(tmp_path):
    root = tmp_path / "act"
    os.makedirs(root)
    mat = tmp_path / "meta" / "ACT_data.mat"
    write_act_mat(mat, ids=["id1", "id22", "id333", "id4"], char_matrix=True)
    split = load_cvact(root, "test", layout="distributed", mat_path=str(mat))
    assert split.ids == ["id4", "id22", "id1"]


def test_cvact_missing_mat_names_path_and_source(act_distributed):
    os.remove(act_distributed / "ACT_data.mat")
    with pytest.raises(CvmError) as err:
        load_cvact(act_distributed, "train")
    msg = str(err.value)
    assert str(act_distributed / "ACT_data.mat") in msg and "OriNet_CVACT/CVACT_orientations" in msg
    assert "mat_path" in msg


def test_cvact_missing_root_names_path_and_source(tmp_path):
    with pytest.raises(CvmError) as err:
        load_cvact(tmp_path / "ANU_data_small", "val")
    assert str(tmp_path / "ANU_data_small") in str(err.value) and "Liu & Li" in str(err.value)


def test_cvact_bad_mat_content_names_file_and_field(tmp_path):
    root = tmp_path / "act"
    write_act_mat(root / "ACT_data.mat", val=(2, 9))
    with pytest.raises(CvmError) as err:
        load_cvact(root, "val", layout="distributed")
    msg = str(err.value)
    assert str(root / "ACT_data.mat") in msg and "valSet.valInd" in msg and "9" in msg

    write_act_mat(root / "ACT_data.mat", val_all=None)
    with pytest.raises(CvmError, match="valSetAll"):
        load_cvact(root, "test", layout="distributed")
    load_cvact(root, "train", layout="distributed")  # the other splits still load

    write_act_mat(root / "ACT_data.mat", utm=ACT_UTM[:3])
    with pytest.raises(CvmError, match="'utm'"):
        load_cvact(root, "train", layout="distributed")

    write_text(root / "ACT_data.mat", "not a mat file")
    with pytest.raises(CvmError, match="ACT_data.mat"):
        load_cvact(root, "train")


def test_cvact_unknown_options_list_valid_ones(act_distributed):
    with pytest.raises(CvmError, match="'train', 'val', 'test'"):
        load_cvact(act_distributed, "validation")
    with pytest.raises(CvmError, match="'distributed'"):
        load_cvact(act_distributed, "train", layout="raw")


# ---------------------------------------------------------------- UCF-OP


@pytest.fixture
def ucfop_root(tmp_path):
    root = tmp_path / "UCF-OP"
    outside = tmp_path / "elsewhere"
    train = [
        "aerial/28.5383_-81.3792_nadir.png,ground/28.538336_-81.379234.png,fake/28.5383_-81.3792.png,"
        "ground/28.538336_-81.379234.png",
        f"{outside}/40.4406_-79.9959_nadir.png,{outside}/40.440625_-79.995886.png,x.png,y.png",
    ]
    test = ["28.6_-81.2_nadir.png, 28.600001_-81.200002.png"]
    write_text(root / "splits" / "train_split.txt", "\n".join(train) + "\n")
    write_text(root / "splits" / "test_split.txt", "\n".join(test) + "\n\n")
    return root


def test_ucfop_parses_first_two_fields_and_coordinates(ucfop_root, tmp_path):
    split = load_ucfop(ucfop_root, "train")
    assert (split.dataset, split.name, len(split), split.location_kind) == ("ucfop", "train", 2, "latlon")
    assert split.ids == ["28.5383_-81.3792_nadir", "40.4406_-79.9959_nadir"]
    assert split[0].aerial_path == os.path.join(str(ucfop_root), "aerial", "28.5383_-81.3792_nadir.png")
    assert split[0].ground_path == os.path.join(str(ucfop_root), "ground", "28.538336_-81.379234.png")
    assert split[1].ground_path == str(tmp_path / "elsewhere" / "40.440625_-79.995886.png")  # absolute kept
    np.testing.assert_allclose(split.locations(), [[28.5383, -81.3792], [40.4406, -79.9959]])


def test_ucfop_val_is_an_alias_of_test(ucfop_root):
    test, val = load_ucfop(ucfop_root, "test"), load_ucfop(ucfop_root, "val")
    assert val.name == "val" and val.ids == test.ids == ["28.6_-81.2_nadir"]
    assert test[0].ground_path == os.path.join(str(ucfop_root), "28.600001_-81.200002.png")


def test_ucfop_malformed_lines(ucfop_root):
    path = ucfop_root / "splits" / "test_split.txt"
    write_text(path, "28.6_-81.2_nadir.png,28.6_-81.2.png\n28.7_-81.2_nadir.png\n")
    with pytest.raises(CvmError) as err:
        load_ucfop(ucfop_root, "test")
    assert str(path) in str(err.value) and "line 2" in str(err.value)
    write_text(path, "28.6_-81.2_nadir.png,28.6_-81.2.png\naerial.png,ground.png\n")
    with pytest.raises(CvmError, match=r"line 2: expected an aerial file named <lat>_<lon>_nadir.png"):
        load_ucfop(ucfop_root, "test")


def test_ucfop_missing_split_file_names_path_and_source(ucfop_root):
    os.remove(ucfop_root / "splits" / "train_split.txt")
    with pytest.raises(CvmError) as err:
        load_ucfop(ucfop_root, "train")
    assert str(ucfop_root / "splits" / "train_split.txt") in str(err.value)
    assert "kregmi/cross-view-image-matching" in str(err.value)

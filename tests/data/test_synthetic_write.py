"""Writing CVUSA / CVACT folders from the synthetic world, and the in-memory SyntheticSplit."""

import csv
import os
import re

import cv2
import numpy as np
import pytest
import scipy.io

from cvm.data.records import Split
from cvm.data.synthetic import SyntheticSplit, make_synthetic_split, render_aerial, write_dataset
from cvm.data.synthetic.dataset import shared_world
from cvm.data.synthetic.world import world_size_for
from cvm.errors import CvmError

PAIRS = 6


def test_write_cvusa(tmp_path):
    out = tmp_path / "cvusa"
    summary = write_dataset(str(out), "cvusa", PAIRS, seed=2, progress=False, workers=2)
    assert summary["layout"] == "cvusa" and summary["pairs"] == PAIRS
    assert (summary["train"], summary["val"]) == (5, 1) and summary["out_dir"] == str(out)
    ids = [f"{i:07d}" for i in range(1, PAIRS + 1)]
    rows = []
    for name in ("train-19zl.csv", "val-19zl.csv"):
        with open(out / "splits" / name, newline="") as f:
            rows.append(list(csv.reader(f)))
    assert [len(r) for r in rows] == [5, 1]
    for row, i in zip(rows[0] + rows[1], ids):
        assert row == [f"bingmap/19/{i}.jpg", f"streetview/panos/{i}.jpg", f"streetview/annotations/{i}.png"]
        assert cv2.imread(str(out / row[0])).shape == (750, 750, 3)
        assert cv2.imread(str(out / row[1])).shape == (224, 1232, 3)
        assert cv2.imread(str(out / row[2])).shape == (224, 1232, 3)  # panorama segmentation map
        assert cv2.imread(str(out / "bingmap" / "annotations" / f"{i}.png")).shape == (750, 750, 3)
    assert sorted(os.listdir(out / "bingmap" / "19")) == [f"{i}.jpg" for i in ids]


def test_write_cvact(tmp_path):
    out = tmp_path / "cvact"
    summary = write_dataset(str(out), "cvact", PAIRS, seed=2, val_fraction=0.5, progress=False, workers=1)
    assert (summary["train"], summary["val"]) == (3, 3)
    mat = scipy.io.loadmat(str(out / "ACT_data.mat"))
    pano_ids = [str(x) for x in mat["panoIds"]]
    assert len(pano_ids) == PAIRS == len(set(pano_ids))
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", x) for x in pano_ids)
    utm = mat["utm"]
    assert utm.shape == (PAIRS, 2) and utm.dtype == np.float64
    assert np.all((utm[:, 0] > 690000) & (utm[:, 0] < 692000) & (utm[:, 1] > 6090000) & (utm[:, 1] < 6092000))
    train = mat["trainSet"]["trainInd"][0][0].ravel()
    val = mat["valSet"]["valInd"][0][0].ravel()
    val_all = mat["valSetAll"]["valInd"][0][0].ravel()
    assert sorted(np.concatenate([train, val])) == list(range(1, PAIRS + 1))  # 1-based partition
    assert np.array_equal(val, val_all) and list(train) == [1, 2, 3]
    for pid in pano_ids:
        assert cv2.imread(str(out / "streetview" / f"{pid}_grdView.jpg")).shape == (832, 1664, 3)
        assert cv2.imread(str(out / "satview_polish" / f"{pid}_satView_polish.jpg")).shape == (1200, 1200, 3)


def test_write_is_deterministic_across_workers(tmp_path):
    a = write_dataset(str(tmp_path / "a"), "cvusa", 3, seed=4, progress=False, workers=1)["out_dir"]
    b = write_dataset(str(tmp_path / "b"), "cvusa", 3, seed=4, progress=False, workers=2)["out_dir"]
    for rel in ("bingmap/19/0000002.jpg", "streetview/panos/0000003.jpg", "splits/train-19zl.csv"):
        with open(os.path.join(a, rel), "rb") as fa, open(os.path.join(b, rel), "rb") as fb:
            assert fa.read() == fb.read()


def test_write_rejects_bad_arguments(tmp_path):
    with pytest.raises(CvmError):
        write_dataset(str(tmp_path), "kitti", 4, seed=0, progress=False)
    with pytest.raises(CvmError):
        write_dataset(str(tmp_path), "cvusa", 1, seed=0, progress=False)


def test_synthetic_split():
    train = make_synthetic_split("train", pairs=10, seed=3)
    val = make_synthetic_split("val", pairs=10, seed=3, ground_size=(64, 256), aerial_size=128)
    assert isinstance(train, SyntheticSplit) and isinstance(train, Split)
    assert (len(train), len(val)) == (8, 2) and train.location_kind == "metres" and train.dataset == "synthetic"
    assert train.ids == [f"{i:07d}" for i in range(1, 9)] and val.ids == ["0000009", "0000010"]
    assert train.pairs[0].ground_path == "synthetic://3/1/ground"
    assert train.world is val.world  # one world, unseen locations for val
    world = shared_world(3, world_size_for(10))
    assert np.array_equal(np.concatenate([train.locations(), val.locations()]), world.sample_locations(10, seed=3))
    ground, aerial = train.read_ground(0), train.read_aerial(0)
    assert ground.shape == (128, 512, 3) and ground.dtype == np.uint8
    assert aerial.shape == (256, 256, 3) and aerial.dtype == np.uint8
    assert val.read_ground(1).shape == (64, 256, 3) and val.read_aerial(1).shape == (128, 128, 3)
    assert np.array_equal(aerial, render_aerial(world, train.pairs[0].location, 256, 172.5 / 256))
    sub = train.subset([2, 0], name="mini")
    assert sub.ids == ["0000003", "0000001"] and np.array_equal(sub.read_aerial(1), aerial)
    with pytest.raises(CvmError):
        make_synthetic_split("test", pairs=10, seed=3)


def test_write_cvusa_segmaps_match_rendered_classes(tmp_path):
    from cvm.data.synthetic.dataset import SEG_COLOURS_BGR
    from cvm.data.synthetic.render import render_panorama
    from cvm.data.synthetic.world import CLASSES

    out = tmp_path / "seg"
    write_dataset(str(out), "cvusa", 2, seed=5, progress=False, workers=1)
    world = shared_world(5, world_size_for(2))
    xy = world.sample_locations(2, seed=5)[1]
    pano_seg = cv2.imread(str(out / "streetview" / "annotations" / "0000002.png"))
    aerial_seg = cv2.imread(str(out / "bingmap" / "annotations" / "0000002.png"))
    # Every map pixel is exactly one class colour, and the map is the class render enlarged 2x nearest.
    _, pano_classes = render_panorama(world, xy, height_px=112, width_px=616, vfov_deg=224 / 1232 * 360.0,
                                      with_classes=True)
    assert np.array_equal(pano_seg, SEG_COLOURS_BGR[np.repeat(np.repeat(pano_classes, 2, 0), 2, 1)])
    _, aerial_classes = render_aerial(world, xy, size_px=375, metres_per_pixel=172.5 / 375, with_classes=True)
    assert np.array_equal(aerial_seg, SEG_COLOURS_BGR[np.repeat(np.repeat(aerial_classes, 2, 0), 2, 1)])
    assert len(SEG_COLOURS_BGR) == len(CLASSES) == len({tuple(c) for c in SEG_COLOURS_BGR})
    assert set(np.unique(pano_classes)) >= {CLASSES.index("sky"), CLASSES.index("road")}
    # The CVACT layout has no maps; --nosegmaps leaves the CVUSA ones out.
    plain = write_dataset(str(tmp_path / "plain"), "cvusa", 2, seed=5, progress=False, workers=1, segmaps=False)
    assert not plain["segmaps"] and not (tmp_path / "plain" / "streetview" / "annotations").exists()
    with pytest.raises(CvmError):
        write_dataset(str(tmp_path / "act"), "cvact", 2, seed=5, progress=False, segmaps=True)

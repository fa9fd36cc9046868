"""`cvm data polar`: precomputed SAFA polar maps on `cvm data synth` folders — content, the folders the
adapters read, resumption after a partial or killed run, unreadable inputs, CVACT's preprocessed folder."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from cvm.data import images
from cvm.data.cvact import load_cvact
from cvm.data.cvusa import load_cvusa
from cvm.data.pipeline import Pipeline
from cvm.data.polar import polar_transform
from cvm.data.polar_batch import cvact_ground_crop, polar_jobs, precompute_polar
from cvm.data.synthetic import write_dataset
from cvm.errors import CvmError


@pytest.fixture(scope="module")
def cvusa_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth_cvusa"))
    write_dataset(root, layout="cvusa", pairs=10, seed=3, val_fraction=0.3, progress=False, workers=1,
                  segmaps=False)
    return root


def fresh_copy(src, dst):
    """A copy of the dataset folder whose polarmap/ the test may write and damage."""
    import shutil

    shutil.copytree(src, dst)
    return str(dst)


def test_maps_land_where_the_cvusa_adapter_reads_them_and_match_the_transform(cvusa_root, tmp_path):
    root = fresh_copy(cvusa_root, tmp_path / "ds")
    summary = precompute_polar("cvusa", root, workers=1, progress=False)
    assert (summary.total, summary.written, summary.skipped, summary.failed) == (10, 10, 0, [])
    val = load_cvusa(root, "val", aerial="polar")
    plain = load_cvusa(root, "val")
    assert val.ids == plain.ids
    for polar_pair, pair in zip(val, plain):
        rel = os.path.relpath(polar_pair.aerial_path, root)
        assert rel == os.path.join("polarmap", "19", pair.id + ".png")  # SAFA: bing -> polar, jpg -> png
        expected = polar_transform(cv2.imread(pair.aerial_path), stretch=True)
        np.testing.assert_array_equal(cv2.imread(polar_pair.aerial_path), expected)
    # Training on the files gives the same aerial input as the on-the-fly transform with the stretch.
    on_the_fly = images.ImageSpec(ground_size=(112, 616), aerial_size=(112, 616), aerial_polar=True, polar_stretch=True)
    from_files = images.ImageSpec(ground_size=(112, 616), aerial_size=(112, 616))
    a, _ = next(iter(Pipeline(plain, on_the_fly, normalize=False).eval(3)))
    b, _ = next(iter(Pipeline(val, from_files, normalize=False).eval(3)))
    np.testing.assert_array_equal(np.asarray(a["aerial"]), np.asarray(b["aerial"]))
    with pytest.raises(CvmError, match="aerial kind"):
        load_cvusa(root, "val", aerial="satellite")


def test_resume_after_partial_and_killed_runs_and_unreadable_inputs(cvusa_root, tmp_path):
    root = fresh_copy(cvusa_root, tmp_path / "ds")
    first = precompute_polar("cvusa", root, splits=["val"], workers=1, progress=False)  # a partial run
    assert (first.total, first.written) == (3, 3)
    train = load_cvusa(root, "train")
    # Damage the inputs: a corrupt JPEG and a truncated one.
    corrupt, truncated = train[0].aerial_path, train[1].aerial_path
    with open(corrupt, "wb") as f:
        f.write(b"not a jpeg at all")
    data = open(truncated, "rb").read()
    with open(truncated, "wb") as f:
        f.write(data[: len(data) // 2])
    # A run killed while writing: what an interrupted non-atomic write would leave (half a PNG), and
    # the temporary file of an atomic one.
    val_maps = [p.aerial_path for p in load_cvusa(root, "val", aerial="polar")]
    good = open(val_maps[0], "rb").read()
    with open(val_maps[0], "wb") as f:
        f.write(good[: len(good) // 3])
    open(val_maps[1] + ".tmp-4242", "wb").write(b"partial")

    second = precompute_polar("cvusa", root, workers=1, progress=False)
    assert second.total == 10
    assert second.skipped == 2  # the two intact maps of the first run
    assert second.redone == 1  # the half-written map
    assert second.written == 7 - 2  # the train maps, less the two unreadable inputs
    assert second.failed == sorted([(corrupt, "not a decodable image"), (truncated, "truncated image")])
    assert open(val_maps[0], "rb").read() == good
    leftovers = [n for n in os.listdir(os.path.dirname(val_maps[0])) if (".tmp-" in n or ".tmp." in n) and not n.endswith("4242")]
    assert leftovers == []
    # A third run has nothing left to do but the two inputs that still cannot be read.
    third = precompute_polar("cvusa", root, workers=1, progress=False)
    assert (third.skipped, third.written, third.redone, len(third.failed)) == (8, 0, 0, 2)


def test_parallel_workers_write_the_same_bytes(cvusa_root, tmp_path):
    serial = fresh_copy(cvusa_root, tmp_path / "serial")
    parallel = fresh_copy(cvusa_root, tmp_path / "parallel")
    precompute_polar("cvusa", serial, splits=["val"], workers=1, stretch=False, height=28, width=154, progress=False)
    summary = precompute_polar("cvusa", parallel, splits=["val"], workers=2, stretch=False, height=28, width=154,
                               progress=False)
    assert summary.written == 3 and not summary.failed
    for pair in load_cvusa(serial, "val", aerial="polar"):
        rel = os.path.relpath(pair.aerial_path, serial)
        ours = open(os.path.join(parallel, rel), "rb").read()
        assert ours == open(pair.aerial_path, "rb").read()
        assert cv2.imread(pair.aerial_path).shape == (28, 154, 3)


def test_cvact_distributed_becomes_safa_preprocessed_folder(tmp_path):
    root = str(tmp_path / "ANU_data_small")
    write_dataset(root, layout="cvact", pairs=4, seed=2, val_fraction=0.5, progress=False, workers=1)
    with pytest.raises(CvmError, match="--out"):
        polar_jobs("cvact", root)
    out = str(tmp_path / "CVACT")
    summary = precompute_polar("cvact", root, out_dir=out, workers=1, height=28, width=154, progress=False)
    assert (summary.total, summary.written, summary.failed) == (8, 8, [])  # 4 polar maps + 4 ground crops
    distributed = load_cvact(root, "val")
    prepared = load_cvact(out, "val", aerial="polar")  # preprocessed layout, ACT_data.mat copied
    assert prepared.layout == "preprocessed" and prepared.ids == distributed.ids
    for pair, original in zip(prepared, distributed):
        ground = cv2.imread(pair.ground_path)
        assert ground.shape == (112, 616, 3)
        np.testing.assert_array_equal(ground, cvact_ground_crop(cv2.imread(original.ground_path)))
        aerial = cv2.imread(original.aerial_path)
        assert aerial.shape == (1200, 1200, 3)  # the polar map comes from the full-resolution file
        np.testing.assert_array_equal(cv2.imread(pair.aerial_path), polar_transform(aerial, 28, 154, stretch=True))


def test_cvact_ground_crop_keeps_rows_208_to_623():
    pano = np.zeros((832, 1664, 3), np.uint8)
    pano[208:624] = 200
    crop = cvact_ground_crop(pano)
    assert crop.shape == (112, 616, 3) and crop.min() == 200 and crop.max() == 200


def test_cli_reports_unreadable_inputs_by_name(cvusa_root, tmp_path):
    root = fresh_copy(cvusa_root, tmp_path / "ds")
    bad = load_cvusa(root, "val")[2].aerial_path
    open(bad, "wb").close()  # zero bytes
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run([sys.executable, "-m", "cvm.cli.main", "data", "polar", "--dataset=cvusa", f"--root={root}",
                          "--splits=val", "--workers=1", "--nostretch", "--polar_size=16,88"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 1, run.stderr
    assert f"unreadable: {bad}: zero-byte file" in run.stdout
    assert "2 written" in run.stdout and "1 failed" in run.stdout
    assert cv2.imread(os.path.join(root, "polarmap", "19", "0000008.png")).shape == (16, 88, 3)


def test_training_config_reads_precomputed_maps_like_the_on_the_fly_transform(cvusa_root, tmp_path):
    from cvm.training.config import TrainConfig
    from cvm.training.loop import load_splits

    root = fresh_copy(cvusa_root, tmp_path / "ds")
    common = dict(method="safa", dataset="cvusa", root=root, preset="safa_polar", ground_size=None,
                  aerial_size=None, aerial_polar=True, polar_stretch=True, val_split="val")
    on_the_fly = TrainConfig(**common)
    with pytest.raises(CvmError, match="cvm data polar --dataset cvusa"):  # not written yet: says what to run
        load_splits(TrainConfig(**common, precomputed_polar=True))
    precompute_polar("cvusa", root, workers=1, progress=False)
    precomputed = TrainConfig(**common, precomputed_polar=True)
    precomputed.validate()
    assert not precomputed.image_spec().aerial_polar and on_the_fly.image_spec().aerial_polar
    (_, val_fly), (_, val_files) = load_splits(on_the_fly), load_splits(precomputed)
    assert all("polarmap" in p.aerial_path for p in val_files)
    a, _ = next(iter(Pipeline(val_fly, on_the_fly.image_spec(), normalize=False).eval(3)))
    b, _ = next(iter(Pipeline(val_files, precomputed.image_spec(), normalize=False).eval(3)))
    np.testing.assert_array_equal(np.asarray(a["aerial"]), np.asarray(b["aerial"]))
    with pytest.raises(CvmError, match="precomputed_polar"):
        TrainConfig(dataset="synthetic", precomputed_polar=True).validate()

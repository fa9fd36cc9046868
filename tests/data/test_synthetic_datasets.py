"""End to end on real files: `cvm data synth` folders through the adapters, the checker and the pipeline,
with missing, zero-byte, truncated and corrupt files planted."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from cvm.data import augment, images, load_split
from cvm.data.pipeline import Pipeline
from cvm.data.synthetic import write_dataset


@pytest.fixture(scope="module")
def cvusa_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cvusa"))
    write_dataset(root, layout="cvusa", pairs=20, seed=4, val_fraction=0.25, progress=False)
    return root


def plant_faults(split):
    """Break four files of the split in four ways; returns {path: expected reason}."""
    missing, empty, truncated, corrupt = (split[1].aerial_path, split[3].ground_path,
                                          split[5].aerial_path, split[8].ground_path)
    os.remove(missing)
    open(empty, "wb").close()
    data = open(truncated, "rb").read()
    open(truncated, "wb").write(data[: len(data) // 3])
    open(corrupt, "wb").write(b"GIF89a not really")
    return {missing: "missing", empty: "zero-byte file", truncated: "truncated image", corrupt: "unreadable image"}


def test_cli_synth_writes_a_folder_the_checker_accepts(tmp_path):
    out = str(tmp_path / "syn")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    synth = subprocess.run([sys.executable, "-m", "cvm.cli.main", "data", "synth", "--out", out, "--layout", "cvusa",
                            "--pairs", "6", "--seed", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert synth.returncode == 0, synth.stderr
    assert "wrote 6 cvusa pairs" in synth.stdout
    check = subprocess.run([sys.executable, "-m", "cvm.cli.main", "data", "check", "--dataset", "cvusa", "--root", out],
                           capture_output=True, text=True, env=env, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "usable" in check.stdout
    # A folder that is not a dataset: one-line error naming the expected split file, exit 2.
    bad = subprocess.run([sys.executable, "-m", "cvm.cli.main", "data", "check", "--dataset", "cvusa", "--root",
                          str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode != 0
    assert "train-19zl.csv" in bad.stdout + bad.stderr and "Traceback" not in bad.stderr


def test_faulty_folder_is_checked_and_trained_through(cvusa_root, tmp_path):
    train = load_split("cvusa", "train", cvusa_root)
    assert len(train) == 15 and train[0].id == "0000001"
    expected = plant_faults(train)

    from cvm.data.check import main_check

    log = tmp_path / "check.txt"
    with open(log, "w") as out:
        code = main_check("cvusa", cvusa_root, splits=["train"], out=out, progress=False)
    text = log.read_text()
    assert code == 1
    for path in expected:
        assert os.path.basename(path) in text

    report = str(tmp_path / "run" / "faults.txt")
    pipe = Pipeline(train, images.preset("cvft"), augment.CVM_NET, seed=0, faults_path=report)
    seen = []
    for features, meta in pipe.train(batch_size=4, epochs=1):
        assert features["ground"].shape == (4, 112, 616, 3) and features["aerial"].shape == (4, 256, 256, 3)
        seen.extend(meta["index"].numpy().tolist())
    assert len(seen) == 8 and not set(seen) & {1, 3, 5, 8}  # 11 good pairs -> 2 full batches
    lines = dict(line.split("\t") for line in open(report).read().splitlines())
    assert {p: r[:len(expected[p])] for p, r in lines.items()} == expected


def test_cvact_folder_through_the_pipeline(tmp_path):
    root = str(tmp_path / "cvact")
    write_dataset(root, layout="cvact", pairs=6, seed=2, val_fraction=0.34, progress=False)
    train, val = load_split("cvact", "train", root), load_split("cvact", "val", root)
    assert len(train) + len(val) == 6 and train.location_kind == "utm"
    assert train.ground_rows == (0.25, 0.75)
    spec = images.preset("cvft")
    features, meta = next(iter(Pipeline(val, spec).eval(batch_size=8)))
    pair = val[0]
    pano = cv2.imread(pair.ground_path)
    assert pano.shape == (832, 1664, 3)
    expected = cv2.resize(pano[208:624], (616, 112), interpolation=cv2.INTER_AREA).astype(np.float32)
    expected -= np.array(images.CAFFE_MEAN_BGR, np.float32)
    np.testing.assert_array_equal(features["ground"][0].numpy(), expected)
    np.testing.assert_allclose(meta["location"].numpy(), val.locations())

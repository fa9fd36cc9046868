"""`cvm synthesize`: every sample written (odd-length list, partial last batch), inference-mode outputs,
resumability (only missing or unreadable files rewritten), --metrics, user errors."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from cvm.errors import CvmError
from cvm.synthesis.inference import load_generators, synthesize
from cvm.training.gan import SynthesisRun
from cvm.training.synthesis_config import SynthesisConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("synth") / "run")
    # 35 synthetic pairs: a 7-sample validation split (odd), 28 training samples.
    config = SynthesisConfig(method="xfork_pano2aerial", preset="pano2aerial_small", input_size=(32, 128),
                             target_size=(64, 64), ngf=8, ndf=8, d_layers=3, synthetic_pairs=35, batch_size=4,
                             epochs=1, steps_per_epoch=2, image_every_steps=0, model_dir=directory)
    SynthesisRun(config, progress=False).train()
    return directory


def test_every_sample_is_written_and_a_rerun_only_fills_the_gaps(model_dir, tmp_path):
    out = str(tmp_path / "generated")
    first = synthesize(model_dir, out, split="val", batch_size=2, progress=False)
    names = sorted(os.listdir(out))
    assert first["samples"] == 7 and first["written"] == 7 and first["existing"] == 0
    assert names == sorted(f for f in names if f.endswith(".jpg")) and len(names) == 7
    assert not [f for f in names if ".tmp" in f]  # no temp files left (cvm.atomic: NAME.tmp.jpg)
    assert all(cv2.imread(os.path.join(out, n)).shape == (64, 64, 3) for n in names)
    # Outputs are the generator in inference mode (BN moving statistics, no dropout): deterministic.
    _, generators, _ = load_generators(model_dir)
    from cvm.data.synthesis import SynthesisPipeline, to_uint8_bgr
    from cvm.training.gan import load_split

    config = SynthesisConfig.load(model_dir).resolved()
    images, meta = next(iter(SynthesisPipeline(load_split(config, "val", segmaps=False), config.data_spec())
                             .eval(7)))
    expected = to_uint8_bgr(generators["g"](images["input"], training=False)["image"].numpy())
    for image, name in zip(expected, meta["out_name"].numpy()):
        written = cv2.imread(os.path.join(out, name.decode())).astype(int)
        assert np.abs(written - image).mean() < 3.0  # JPEG

    kept = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in names[2:6]}
    os.remove(os.path.join(out, names[0]))
    os.remove(os.path.join(out, names[1]))
    with open(os.path.join(out, names[6]), "r+b") as f:  # a truncated (unreadable) file is redone
        f.truncate(20)
    again = synthesize(model_dir, out, split="val", batch_size=2, progress=False)
    assert (again["written"], again["existing"]) == (3, 4)
    assert sorted(os.listdir(out)) == names
    assert all(os.stat(os.path.join(out, n)).st_mtime_ns == t for n, t in kept.items())
    assert cv2.imread(os.path.join(out, names[6])) is not None
    third = synthesize(model_dir, out, split="val", progress=False)
    assert (third["written"], third["existing"]) == (0, 7)


def test_checkpoint_choices(model_dir, tmp_path):
    with pytest.raises(CvmError, match="no best model"):
        load_generators(model_dir, "best")
    with pytest.raises(CvmError, match="no such file"):
        load_generators(model_dir, str(tmp_path / "missing.npz"))
    with pytest.raises(CvmError, match="not a cvm model_dir"):
        load_generators(str(tmp_path), "latest")


def test_cli_writes_images_and_metrics(model_dir, tmp_path):
    out = tmp_path / "cli_out"
    cmd = [sys.executable, "-m", "cvm.cli.main", "synthesize", f"--model_dir={model_dir}", f"--out={out}",
           "--split=val", "--batch_size=3", "--metrics"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "7 written, 0 already there, 7 samples" in done.stdout
    assert len(os.listdir(out)) == 7
    with open(os.path.join(model_dir, "results", "synthesis_synthetic_val.json")) as f:
        results = json.load(f)
    assert results["n_images"] == 7 and 0.0 < results["metrics"]["ssim"] < 1.0
    missing = subprocess.run([sys.executable, "-m", "cvm.cli.main", "synthesize", f"--model_dir={model_dir}"],
                             capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert missing.returncode != 0 and "--out is required" in missing.stderr and "Traceback" not in missing.stderr


def test_split_file_names_the_cvusa_rows_to_synthesize_and_is_refused_elsewhere(model_dir, tmp_path):
    from cvm.data.synthetic import write_dataset

    root = str(tmp_path / "cvusa")
    write_dataset(root, "cvusa", 5, seed=0, val_fraction=0.4, progress=False, workers=1)
    with open(os.path.join(root, "splits", "mine.csv"), "w") as f:
        f.write("bingmap/19/0000005.jpg,streetview/panos/0000005.jpg\n")
    # The ICCV19 fork's default: inference mode, the official CSV's rows (val-19zl.csv: pairs 4 and 5).
    summary = synthesize(model_dir, str(tmp_path / "val"), split="val", dataset="cvusa", root=root, progress=False)
    assert summary["mode"] == "inference" and sorted(os.listdir(tmp_path / "val")) == ["0000004.jpg", "0000005.jpg"]
    summary = synthesize(model_dir, str(tmp_path / "mine"), split="val", dataset="cvusa", root=root,
                         split_file="splits/mine.csv", progress=False)
    assert summary["samples"] == 1 and os.listdir(tmp_path / "mine") == ["0000005.jpg"]
    done = subprocess.run([sys.executable, "-m", "cvm.cli.main", "synthesize", f"--model_dir={model_dir}",
                           f"--out={tmp_path / 'x'}", "--split_file=splits/mine.csv"], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 2
    assert "--split_file has no effect: only --dataset cvusa reads a split list (this run: --dataset synthetic)" in (
        done.stderr)

"""The Regmi & Shah ICCV 2019 pipeline: flagfiles, stages after synthesis, kill -9 and resume, full run.

The in-process stage tests start from synthesized aerials made by a cheap stand-in for the X-Fork GAN:
each pair's real aerial reduced to 16x16 and blown back up, plus seeded noise. Like a GAN output it
is a blurred, noisy estimate of the true aerial, correlated with its pair and not equal to it, so
every stage after synthesis runs on data of the right kind. The two full runs (synthetic world,
UCF-OP) go through the CLI with a tiny X-Fork GAN and `cvm synthesize`.
"""

import csv
import glob
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from absl import flags

from cvm.cli import pipeline as pipeline_cli
from cvm.errors import CvmError
from cvm.pipelines.regmi_iccv19 import PipelineConfig, RegmiPipeline, stage_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REGMI_FLAGFILES = sorted(glob.glob(os.path.join(ROOT, "experiments", "regmi_*.cfg")))
# Tiny sizes: 1/16-width encoders on 32x128 panoramas and 64x64 aerials, a few steps per stage.
TINY = ["--ground_size=32,128", "--aerial_size=64,64", "--backbone_width=0.0625", "--output_dim=16",
        "--batch_size=8", "--epochs=2", "--lr=1e-4", "--init=he", "--keep_prob=1.0", "--holdout_fraction=0.25",
        "--nojit_compile", "--eval_batch_size=16", "--checkpoint_every_steps=1", "--log_every_steps=1"]


def pipeline_flag_values(argv):
    fv = flags.FlagValues()
    pipeline_cli.define_flags(fv)
    fv(["cvm pipeline", *argv])
    return fv


@pytest.mark.parametrize("path", REGMI_FLAGFILES, ids=os.path.basename)
def test_regmi_flagfiles_parse_into_their_configs(path):
    name = os.path.basename(path)
    if name in ("regmi_iccv19_cvusa.cfg", "regmi_iccv19_ucfop.cfg", "regmi_iccv19_synthetic.cfg"):
        config = pipeline_cli.config_from_flags(pipeline_flag_values([f"--flagfile={path}", "--work_dir=w",
                                                                      "--root=r"]))
        assert config.dataset == name.split("_")[-1][:-4]
        assert (config.joint_ground_weight, config.joint_synthesized_weight) == (10.0, 1.0)
        assert config.two_stream and config.synthesized_zoom and not config.select_on_test
        stage_dataset = "cvusa" if config.dataset == "synthetic" else config.dataset  # written as a CVUSA folder
        for stage in (config.two_stream_flagfile, config.joint_flagfile, config.fusion_flagfile):
            stage_cfg = stage_config(stage, config.retrieval_flags)
            stage_cfg.validate()
            assert stage_cfg.dataset == stage_dataset
        return
    config = stage_config(path)
    config.validate()
    stage = name.split("_")[2]
    assert config.method == {"two": "regmi_two_stream", "joint": "regmi_joint", "fusion": "regmi_fusion"}[stage]
    assert config.lr == 1e-5 and config.alpha == 10.0 and config.holdout_fraction == 0.05
    assert config.output_dim == 1000 and config.init == "original"
    if stage == "fusion":
        assert config.batch_size == 100 and config.best_metric == "regmi_selection" and config.keep_prob == 1.0
    else:
        assert config.batch_size == (30 if stage == "two" else 24) and config.keep_prob == 0.5
        assert config.image_spec().aerial_size == (512, 512) and config.image_spec().ground_size == (224, 1232)
        assert config.augment == "cvm_net" and config.multiscale and config.best_metric == "r@1%_floor_plus_1"


def degraded_aerials(root, out):
    """The cheap synthesizer (module docstring): one image per pair, named as the aerial file."""
    for split, csv_name in (("train", "train-19zl.csv"), ("val", "val-19zl.csv")):
        os.makedirs(os.path.join(out, split), exist_ok=True)
        with open(os.path.join(root, "splits", csv_name)) as f:
            for i, row in enumerate(csv.reader(f)):
                aerial = cv2.imread(os.path.join(root, row[0]))
                small = cv2.resize(aerial, (16, 16), interpolation=cv2.INTER_AREA)
                image = cv2.resize(small, (256, 256), interpolation=cv2.INTER_LINEAR).astype(np.int16)
                image += np.random.default_rng(i).integers(-20, 21, image.shape, dtype=np.int16)
                cv2.imwrite(os.path.join(out, split, os.path.basename(row[0])), np.clip(image, 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(root, synthesized folder): 48 CVUSA-layout synthetic-world pairs (36 train, 12 val) and stand-in aerials."""
    from cvm.data.synthetic import write_dataset

    base = tmp_path_factory.mktemp("regmi")
    root = str(base / "data")
    write_dataset(root, layout="cvusa", pairs=48, seed=0, val_fraction=0.25, progress=False)
    return root, degraded_aerials(root, str(base / "synthesized"))


def pipeline_argv(world, work, *extra):
    root, synthesized = world
    return ["--dataset=cvusa", f"--root={root}", f"--work_dir={work}", f"--synthesized_dir={synthesized}",
            *[f"--retrieval_flag={f}" for f in TINY], "--fusion_flag=--epochs=4", "--fusion_flag=--lr=1e-3", *extra]


def test_stages_after_synthesis(world, tmp_path, capsys):
    work = str(tmp_path / "work")
    config = pipeline_cli.config_from_flags(pipeline_flag_values(pipeline_argv(
        world, work, "--notwo_stream", "--joint_flag=--epochs=1")))  # the slow test covers the baseline
    table = RegmiPipeline(config).run()
    assert [r["method"] for r in table["rows"]] == ["joint feature learning", "joint: synthesized aerial -> aerial",
                                                    "feature fusion", "fusion without the synthesized view (control)"]
    for row in table["rows"]:
        assert row["n_queries"] == 12 and row["k_1%"] == 1
        assert 0.0 <= row["r@1"] <= row["r@5"] <= row["r@10"] <= 1.0
        assert row["r@1%"] == row["r@1"]  # K = floor(12/100) + 1 = 1
    with open(os.path.join(work, "results", "ablation.json")) as f:
        assert json.load(f)["rows"] == table["rows"]
    for stage in ("joint", "joint_synthesized", "fusion", "fusion_control"):  # the results JSON of each row
        results = json.load(open(os.path.join(work, "results", f"{stage}.json")))
        assert results["n_queries"] == 12 and "r@1%_floor_plus_1" in results["metrics"]["ground_to_aerial"]
    assert json.load(open(os.path.join(work, "results", "fusion.json")))["method"] == "regmi_fusion"
    markdown = open(os.path.join(work, "results", "ablation.md")).read()
    assert "| feature fusion |" in markdown and "top-1%" in markdown
    train = np.load(os.path.join(work, "descriptors", "train.npz"))
    assert train["ground"].shape == train["synthesized"].shape == (36, 16)  # the whole train split, unaugmented
    np.testing.assert_allclose(np.linalg.norm(train["aerial"], axis=1), 1.0, atol=1e-5)
    # The joint row is the ground -> aerial recall of the dumped test descriptors.
    from cvm.evaluation import evaluate

    val = np.load(os.path.join(work, "descriptors", "val.npz"))
    r1 = evaluate(val["ground"], val["aerial"])["directions"]["ground_to_aerial"]["metrics"]["r@1"]
    assert table["rows"][0]["r@1"] == pytest.approx(r1)
    # Selection used the held-out quarter of the training split (9 pairs).
    assert json.load(open(os.path.join(work, "joint", "best", "metrics.json")))["epoch"] == 1
    # A complete pipeline reruns as a no-op.
    capsys.readouterr()
    RegmiPipeline(config).run()
    out = capsys.readouterr().out
    assert out.count("complete, skipped") == 4 and "running" not in out


@pytest.mark.slow
def test_killed_pipeline_resumes_in_the_stage_it_was_in(world, tmp_path, capsys):
    work = str(tmp_path / "work")
    argv = pipeline_argv(world, work)
    killed = subprocess.run([sys.executable, "-m", "cvm.cli.main", "pipeline", "regmi_iccv19", *argv,
                             "--joint_flag=--kill_after_steps=4"], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT), cwd=ROOT)
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]
    stages = os.path.join(work, "stages")
    assert sorted(os.listdir(stages)) == ["two_stream.json"]  # killed inside joint: no joint marker
    checkpoints = os.path.join(work, "joint", "checkpoints")
    assert sorted(glob.glob(os.path.join(checkpoints, "*.npz")))[-1].endswith("ckpt-000000004.npz")  # mid-epoch 2
    two_stream_done = os.path.getmtime(os.path.join(stages, "two_stream.json"))

    config = pipeline_cli.config_from_flags(pipeline_flag_values(argv))
    capsys.readouterr()
    RegmiPipeline(config).run()
    out = capsys.readouterr().out
    assert "stage two_stream: complete, skipped" in out
    assert "resuming" in out and "at epoch 2, step 1 (ckpt-000000004.npz)" in out
    # The finished stage was kept; the joint stage resumed from its step-4 checkpoint and finished:
    # 36 training pairs, 9 held out: 27 -> 3 batches of 8 per epoch, 2 epochs.
    assert os.path.getmtime(os.path.join(stages, "two_stream.json")) == two_stream_done
    with open(sorted(glob.glob(os.path.join(checkpoints, "*.json")))[-1]) as f:
        final = json.load(f)
    assert final["global_step"] == 6 and final["epoch"] == 2
    assert sorted(os.listdir(stages)) == sorted(
        f"{s}.json" for s in ("two_stream", "joint", "dump", "fusion", "evaluate"))
    table = json.load(open(os.path.join(work, "results", "ablation.json")))
    assert [r["method"] for r in table["rows"]] == ["two-stream baseline", "joint feature learning",
                                                    "joint: synthesized aerial -> aerial", "feature fusion",
                                                    "fusion without the synthesized view (control)"]
    assert os.path.isfile(os.path.join(work, "results", "two_stream.json"))


def test_pipeline_user_errors(tmp_path):
    with pytest.raises(CvmError, match="--root is required"):
        RegmiPipeline(PipelineConfig(dataset="cvusa", work_dir=str(tmp_path)))
    with pytest.raises(CvmError, match="must hold train/"):
        RegmiPipeline(PipelineConfig(dataset="cvusa", root=str(tmp_path), work_dir=str(tmp_path),
                                     synthesized_dir=str(tmp_path)))
    with pytest.raises(CvmError, match="not found"):
        stage_config("experiments/regmi_nothing.cfg")
    with pytest.raises(CvmError, match="stage flags"):
        stage_config("experiments/regmi_iccv19_joint_cvusa.cfg", ["--no_such_flag=1"])


def test_full_pipeline_on_the_synthetic_world(tmp_path):
    """Every stage, the X-Fork GAN included, through the CLI on a tiny synthetic-world dataset."""
    if not os.path.isfile(os.path.join(ROOT, "cvm", "cli", "synthesize.py")):
        pytest.skip("`cvm synthesize` is not in this checkout")
    work = str(tmp_path / "work")
    argv = ["--dataset=synthetic", "--synthetic_pairs=40", f"--work_dir={work}", "--synthesis_batch_size=2",
            "--synthesis_flag=--preset=pano2aerial_small", "--synthesis_flag=--input_size=16,64",
            "--synthesis_flag=--target_size=32,32", "--synthesis_flag=--d_layers=2",
            "--synthesis_flag=--epochs=1", "--synthesis_flag=--batch_size=2", "--synthesis_flag=--ngf=4",
            "--synthesis_flag=--ndf=4", "--synthesis_flag=--image_every_steps=0", "--synthesis_flag=--nojit_compile",
            *[f"--retrieval_flag={f}" for f in TINY]]
    result = subprocess.run([sys.executable, "-m", "cvm.cli.main", "pipeline", "regmi_iccv19", *argv],
                            capture_output=True, text=True, timeout=1800, cwd=ROOT,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT))
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert sorted(os.listdir(os.path.join(work, "stages"))) == sorted(
        f"{s}.json" for s in ("data", "xfork", "synthesize", "two_stream", "joint", "dump", "fusion", "evaluate"))
    for split in ("train", "val"):
        aerials = sorted(os.listdir(os.path.join(work, "data", "bingmap", "19")))
        synthesized = set(os.listdir(os.path.join(work, "synthesized", split)))
        assert synthesized and synthesized <= set(aerials)
    table = json.load(open(os.path.join(work, "results", "ablation.json")))
    assert [r["method"] for r in table["rows"]][-2:] == ["feature fusion",
                                                         "fusion without the synthesized view (control)"]


def ucfop_copy(root, out):
    """The CVUSA-layout world rewritten in UCF-OP's layout (split text files, <lat>_<lon>[_nadir].png names)."""
    lines = {"train": [], "test": []}
    for split, csv_name in (("train", "train-19zl.csv"), ("test", "val-19zl.csv")):
        with open(os.path.join(root, "splits", csv_name)) as f:
            for i, row in enumerate(csv.reader(f)):
                lat, lon = 28.5 + 1e-3 * i + (0.5 if split == "test" else 0.0), -81.3 - 1e-3 * i
                aerial, ground = f"aerial/{lat:.4f}_{lon:.4f}_nadir.png", f"ground/{lat:.6f}_{lon:.6f}.png"
                for rel, src in ((aerial, row[0]), (ground, row[1])):
                    os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
                    cv2.imwrite(os.path.join(out, rel), cv2.imread(os.path.join(root, src)))
                lines[split].append(f"{aerial},{ground},unused/{i}.png,{ground}" if split == "train"
                                    else f"{aerial},{ground}")
    os.makedirs(os.path.join(out, "splits"))
    for split, rows in lines.items():
        with open(os.path.join(out, "splits", f"{split}_split.txt"), "w") as f:
            f.write("\n".join(rows) + "\n")
    return out


def test_full_pipeline_on_ucfop_through_its_adapter(world, tmp_path):
    """UCF-OP (no segmentation maps) through every stage, the X-Fork GAN and `cvm synthesize` included."""
    root = ucfop_copy(world[0], str(tmp_path / "UCF-OP"))
    work = str(tmp_path / "work")
    argv = ["--flagfile=experiments/regmi_iccv19_ucfop.cfg", f"--root={root}", f"--work_dir={work}",
            "--synthesis_batch_size=4", "--synthesis_flag=--preset=pano2aerial_small",
            "--synthesis_flag=--input_size=16,64", "--synthesis_flag=--target_size=32,32",
            "--synthesis_flag=--epochs=1", "--synthesis_flag=--batch_size=4", "--synthesis_flag=--ngf=4",
            "--synthesis_flag=--ndf=4", "--synthesis_flag=--d_layers=2", "--synthesis_flag=--image_every_steps=0",
            "--synthesis_flag=--nojit_compile", "--notwo_stream", "--fusion_flag=--epochs=2",
            *[f"--retrieval_flag={f}" for f in TINY]]
    result = subprocess.run([sys.executable, "-m", "cvm.cli.main", "pipeline", "regmi_iccv19", *argv],
                            capture_output=True, text=True, timeout=900, cwd=ROOT,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT))
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    for split, expected in (("train", 36), ("val", 12)):
        names = sorted(os.listdir(os.path.join(work, "synthesized", split)))
        assert len(names) == expected and all(n.endswith("_nadir.png") for n in names)
        assert cv2.imread(os.path.join(work, "synthesized", split, names[0])).shape == (32, 32, 3)
    table = json.load(open(os.path.join(work, "results", "ablation.json")))
    assert table["dataset"] == "ucfop" and [r["n_queries"] for r in table["rows"]] == [12] * 4

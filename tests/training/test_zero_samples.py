"""A run that would train on nothing fails with a CvmError naming the split and the first reasons the
samples were dropped: retrieval, GAN, the Regmi joint stage, and the CVUSA pano -> aerial X-Fork flagfile
on a folder without Regmi's list of aerial maps or without the maps it lists. Never "done" after zero steps."""

import glob
import os
import subprocess
import sys

import pytest

from cvm.errors import CvmError
from cvm.training.config import TrainConfig
from cvm.training.synthesis_config import SynthesisConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_RETRIEVAL = dict(ground_size=(32, 128), aerial_size=(64, 64), batch_size=4, output_dim=16, clusters=4,
                      keep_prob=1.0, epochs=1, jit_compile=False, val_split="")
TINY_GAN = dict(method="xfork_pano2aerial", preset="pano2aerial_small", input_size=(32, 128),
                target_size=(64, 64), ngf=4, ndf=4, d_layers=2, batch_size=2, epochs=1, image_every_steps=0)


@pytest.fixture(scope="module")
def cvusa_folder(tmp_path_factory):
    """A 12-pair CVUSA-layout folder (9 train, 3 val) with segmentation maps, to break per test."""
    from cvm.data.synthetic import write_dataset

    root = str(tmp_path_factory.mktemp("zero") / "cvusa")
    write_dataset(root, layout="cvusa", pairs=12, seed=0, val_fraction=0.25, progress=False, workers=1)
    return root


def broken_copy(source, target, pattern, how):
    """A copy of the folder in which the files matching pattern are removed ("remove") or emptied ("empty")."""
    import shutil

    shutil.copytree(source, target)
    files = sorted(glob.glob(os.path.join(target, pattern)))
    assert files
    for path in files:
        if how == "remove":
            os.remove(path)
        else:
            open(path, "w").close()
    return target


def test_retrieval_split_without_its_aerial_files_fails_at_once(cvusa_folder, tmp_path):
    from cvm.training.loop import Run

    root = broken_copy(cvusa_folder, str(tmp_path / "cvusa"), "bingmap/19/*.jpg", "remove")
    config = TrainConfig(dataset="cvusa", root=root, model_dir=str(tmp_path / "run"), **TINY_RETRIEVAL)
    with pytest.raises(CvmError) as err:
        Run(config, progress=False)
    message = str(err.value)
    assert "the cvusa 'train' training split" in message and "has no usable sample" in message
    assert "bingmap/19/" in message and ": missing" in message


def test_retrieval_epoch_of_zero_steps_is_an_error_not_done(cvusa_folder, tmp_path, capsys):
    """Files that exist but cannot be read pass the look before training; the empty epoch then fails."""
    from cvm.training.loop import Run

    root = broken_copy(cvusa_folder, str(tmp_path / "cvusa"), "streetview/panos/*.jpg", "empty")
    config = TrainConfig(dataset="cvusa", root=root, model_dir=str(tmp_path / "run"), **TINY_RETRIEVAL)
    run = Run(config, progress=True)
    with pytest.raises(CvmError) as err:
        run.train()
    message = str(err.value)
    assert "epoch 1 ran no training step" in message and "the cvusa 'train' training split" in message
    assert "zero-byte file" in message and "streetview/panos/" in message
    assert "done:" not in capsys.readouterr().out
    assert run.checkpoints.latest() is None  # no epoch was recorded as trained


def test_gan_split_without_segmentation_maps_fails_at_once(cvusa_folder, tmp_path):
    from cvm.training.gan import SynthesisRun

    root = broken_copy(cvusa_folder, str(tmp_path / "cvusa"), "bingmap/annotations/*.png", "remove")
    config = SynthesisConfig(dataset="cvusa", root=root, model_dir=str(tmp_path / "run"), **TINY_GAN)
    with pytest.raises(CvmError) as err:
        SynthesisRun(config, progress=False)
    message = str(err.value)
    assert "the cvusa 'train' training split" in message and "has no usable sample" in message
    assert "bingmap/annotations/" in message and ": missing" in message


def test_gan_epoch_of_zero_steps_is_an_error_not_done(cvusa_folder, tmp_path):
    from cvm.training.gan import SynthesisRun

    root = broken_copy(cvusa_folder, str(tmp_path / "cvusa"), "bingmap/annotations/*.png", "empty")
    run = SynthesisRun(SynthesisConfig(dataset="cvusa", root=root, model_dir=str(tmp_path / "run"), **TINY_GAN),
                       progress=False)
    with pytest.raises(CvmError, match=r"epoch 1 ran no training step.*cvusa 'train'.*zero-byte file"):
        run.train()
    assert run.checkpoints.latest() is None


def test_gan_validation_on_no_sample_is_an_error(cvusa_folder, tmp_path):
    from cvm.training.gan import SynthesisRun

    # Pairs 10-12 are the val split: only their aerial maps go missing.
    root = broken_copy(cvusa_folder, str(tmp_path / "cvusa"), "bingmap/annotations/00000[1][0-2].png", "remove")
    config = SynthesisConfig(dataset="cvusa", root=root, model_dir=str(tmp_path / "run"), val_split="val",
                             **TINY_GAN)
    with pytest.raises(CvmError, match=r"the cvusa 'val' validation split.*no usable sample.*missing"):
        SynthesisRun(config, progress=False)


def test_regmi_joint_stage_without_synthesized_aerials_fails(cvusa_folder, tmp_path):
    from cvm.training.joint import JointRun

    synthesized = tmp_path / "synthesized"
    synthesized.mkdir()  # exists, but holds nothing
    config = TrainConfig(method="regmi_joint", dataset="cvusa", root=cvusa_folder, model_dir=str(tmp_path / "joint"),
                         backbone_width=0.0625, init="he", **TINY_RETRIEVAL)
    with pytest.raises(CvmError) as err:
        JointRun(config, synthesized_dir=str(synthesized), progress=False)
    message = str(err.value)
    assert "the cvusa 'train' training split" in message and "has no usable sample" in message
    assert str(synthesized) in message and ": missing" in message


def xfork_cvusa_error_line(root, tmp_path):
    """The last stderr line of `cvm train --flagfile=experiments/xfork_pano2aerial_cvusa.cfg` on `root`, which must
    fail with exit status 2, without a traceback and without reporting a finished run."""
    out = subprocess.run([sys.executable, "-m", "cvm.cli.main", "train",
                          "--flagfile=experiments/xfork_pano2aerial_cvusa.cfg", f"--root={root}",
                          f"--model_dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300,
                         cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "done" not in out.stdout
    return out.stderr.strip().splitlines()[-1]


def test_xfork_pano2aerial_cvusa_flagfile_on_cvusa_without_the_xfork_list(cvusa_folder, tmp_path):
    """The known case: CVUSA as distributed has no splits/train_xfork_cvusa.txt (Regmi's list of aerial maps)."""
    root = broken_copy(cvusa_folder, str(tmp_path / "cvusa"), "splits/*_xfork_cvusa.txt", "remove")
    line = xfork_cvusa_error_line(root, tmp_path)
    assert line.startswith("cvm train: error: CVUSA split file not found: "
                           f"{os.path.join(root, 'splits', 'train_xfork_cvusa.txt')}")
    assert "kregmi/cross-view-image-matching" in line and "--split_file" in line and "--aerial_seg_dir" in line


def test_xfork_pano2aerial_cvusa_flagfile_on_a_list_whose_maps_are_missing(cvusa_folder, tmp_path):
    """The list is there (`cvm data synth` writes one) but the maps of its column 3 are not: every sample drops."""
    root = broken_copy(cvusa_folder, str(tmp_path / "cvusa"), "bingmap/annotations/*.png", "remove")
    line = xfork_cvusa_error_line(root, tmp_path)
    assert line.startswith("cvm train: error: the cvusa 'train' training split")
    assert "has no usable sample" in line and os.path.join(root, "bingmap", "annotations") in line
    assert ": missing" in line


def test_evaluation_of_a_split_with_no_usable_pair_is_an_error(toy_split):
    from cvm.data import images
    from cvm.data.pipeline import Pipeline
    from cvm.evaluation.run import evaluate_encoder
    from cvm.models import build_model

    for pair in toy_split:
        open(pair.aerial_path, "w").close()
    encoder = build_model("cvm_net_i", backbone_width=0.0625, clusters=4, output_dim=8, keep_prob=1.0, init="he")
    pipeline = Pipeline(toy_split, images.ImageSpec(ground_size=(32, 128), aerial_size=(64, 64)))
    with pytest.raises(CvmError, match=r"the toy 'train' split .* no usable sample to evaluate.*zero-byte file"):
        evaluate_encoder(encoder, pipeline, 4, method="cvm_net_i", checkpoint=None)

"""The `cvm` command line: help, errors, flagfiles, and eval/export on a trained model_dir."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest
from absl import flags

from cvm.flags import train as train_flags
from cvm.training.config import TrainConfig
from cvm.training.loop import Run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def cvm(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "cvm.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def test_help_lists_verbs_and_flags():
    top = cvm("--help")
    assert top.returncode == 0
    for verb in ("data", "train", "eval", "export", "convert"):
        assert f"  {verb}" in top.stdout
    train = cvm("train", "--help")
    assert train.returncode == 0 and "--batch_size" in train.stdout and "--flagfile" in train.stdout
    unknown = cvm("fly")
    assert unknown.returncode == 2 and "unknown verb 'fly'" in unknown.stderr


def test_user_errors_are_one_line_without_traceback(tmp_path):
    out = cvm("eval", f"--model_dir={tmp_path / 'nothing'}")
    assert out.returncode != 0
    assert "config.json not found" in out.stderr and "Traceback" not in out.stderr
    bad = cvm("train", "--precision=float8")
    assert bad.returncode != 0 and "precision" in (bad.stderr + bad.stdout)
    joint = cvm("train", f"--flagfile={os.path.join(ROOT, 'experiments', 'regmi_iccv19_joint_cvusa.cfg')}",
                f"--model_dir={tmp_path / 'joint'}")
    assert joint.returncode != 0 and "cvm pipeline regmi_iccv19" in joint.stderr and "Traceback" not in joint.stderr


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "experiments", "*.cfg"))))
def test_experiment_flagfiles_parse_into_valid_configs(path):
    from cvm.models import available_methods

    method = re.search(r"^--method=(\S+)", open(path).read(), re.M)
    if method is None or method.group(1) not in available_methods():
        pytest.skip("not a retrieval-model flagfile: parsed by the tests of its own verb (synthesis, pipeline)")
    fv = flags.FlagValues()
    train_flags.define_flags(fv)
    fv(["cvm train", f"--flagfile={path}"])
    config = train_flags.config_from_flags(fv)
    config.validate()
    assert config.method in available_methods()
    assert os.path.basename(path).startswith(config.method.split("_")[0]), "flagfiles are <method>_<dataset>.cfg"
    if config.method.startswith("cvm_net") and config.dataset in ("cvusa", "cvact"):
        assert config.batch_size == 12 and config.lr == 1e-5
        assert config.image_spec().aerial_size == (512, 512)
    # The flagfile written for a run reproduces its config.
    again = flags.FlagValues()
    train_flags.define_flags(again)
    flagfile = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_roundtrip.cfg")
    try:
        with open(flagfile, "w") as f:
            f.write(train_flags.flagfile_text(config))
        again(["cvm train", f"--flagfile={flagfile}"])
    finally:
        os.remove(flagfile)
    assert train_flags.config_from_flags(again) == config


def test_eval_and_export_a_trained_model_dir(tmp_path):
    model_dir = tmp_path / "run"
    config = TrainConfig(model_dir=str(model_dir), synthetic_pairs=40, ground_size=(32, 128), aerial_size=(64, 64),
                         batch_size=4, output_dim=16, clusters=4, keep_prob=1.0, epochs=1, steps_per_epoch=2,
                         jit_compile=False)
    Run(config, progress=False).train()
    out = cvm("eval", f"--model_dir={model_dir}", "--radii=0,25")
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.load(open(model_dir / "results" / "synthetic_val.json"))
    assert results["n_queries"] == 8 and results["dataset"] == "synthetic"
    assert {"r@1", "r@5", "r@10", "r@1%_floor", "r@1%_floor_plus_1"} <= set(results["metrics"]["ground_to_aerial"])
    assert "25" in str(results["within_radius"]["ground_to_aerial"])
    assert os.path.isfile(model_dir / "results" / "synthetic_val_grid.png")
    assert os.path.isfile(model_dir / "results" / "synthetic_val_recall.png")
    # A limited-FoV, heading-unknown test set for a method trained on whole panoramas: worse than the full view
    # (a 90-degree crop keeps a quarter of the panorama) or at best equal on 8 pairs.
    limited = cvm("eval", f"--model_dir={model_dir}", "--fov_deg=90", "--unknown_orientation")
    assert limited.returncode == 0, limited.stderr[-2000:]
    cropped = json.load(open(model_dir / "results" / "synthetic_val_fov90_unknown_orientation.json"))
    assert cropped["n_queries"] == 8 and "fov_deg=90" in cropped["extra"]["augment"]
    bad = cvm("eval", f"--model_dir={model_dir}", "--fov_deg=400")
    assert bad.returncode != 0 and "--fov_deg must be in (0, 360]" in bad.stderr
    export = cvm("export", f"--model_dir={model_dir}", f"--out={tmp_path / 'sm'}")
    assert export.returncode == 0, export.stderr[-2000:]
    assert os.path.isfile(tmp_path / "sm" / "saved_model.pb")
    assert json.load(open(tmp_path / "sm" / "assets" / "cvm.json"))["descriptor_dim"] == 16

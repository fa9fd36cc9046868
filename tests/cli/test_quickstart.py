"""`cvm train` without --flagfile and --method trains experiments/sample4geo_quickstart.cfg; flags override it."""

import json
import os
import subprocess
import sys

from cvm import resources
from cvm.cli.main import QUICKSTART, with_quickstart
from cvm.flags import train as train_flags
from cvm.flags import use as flag_use
from tests.flaglib import train_flag_values


def test_the_quickstart_flagfile_comes_first_only_without_flagfile_and_method():
    path = resources.find_flagfile(QUICKSTART)
    assert with_quickstart([]) == [f"--flagfile={path}"]
    assert with_quickstart(["--epochs=3", "--model_dir", "runs/x"]) == [f"--flagfile={path}", "--epochs=3",
                                                                         "--model_dir", "runs/x"]
    for args in (["--method=cvm_net_i"], ["--method", "safa"], ["--flagfile=experiments/safa_cvusa.cfg"],
                 ["--help"], ["-flagfile", "x.cfg"]):
        assert with_quickstart(args) == args


def test_the_quickstart_is_a_valid_run_that_uses_every_flag_it_sets():
    fv = train_flag_values(f"--flagfile={resources.find_flagfile(QUICKSTART)}")
    config = train_flags.config_from_flags(fv)
    config.validate()
    flag_use.check_train(fv)  # no flag of the file is without effect
    assert (config.method, config.dataset, config.aerial_polar, config.model_dir) == (
        "sample4geo", "synthetic", True, "runs/quickstart")
    assert config.image_spec().channel_order == "rgb"


def test_cvm_train_with_flags_but_no_method_trains_the_quickstart(tmp_path):
    model_dir = tmp_path / "qs"
    out = subprocess.run([sys.executable, "-m", "cvm.cli.main", "train", f"--model_dir={model_dir}", "--epochs=2",
                          "--synthetic_pairs=40", "--batch_size=8", "--steps_per_epoch=1", "--nojit_compile",
                          "--eval_batch_size=8"],
                         capture_output=True, text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert out.returncode == 0, out.stderr[-3000:]
    config = json.load(open(model_dir / "config.json"))
    assert config["method"] == "sample4geo" and config["aerial_polar"] and config["epochs"] == 2
    assert "--method=sample4geo" in open(model_dir / "flags.cfg").read()

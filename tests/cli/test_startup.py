"""Start-up: verbs that need no TensorFlow do not import it; the others keep its start-up lines quiet."""

import os
import subprocess
import sys

import pytest

from cvm.cli import quiet

# What TensorFlow prints on import / device probing on a machine without a GPU.
CHATTER = ("cuInit", "absl::InitializeLog", "cudart_stub", "oneDNN", "cpu_feature_guard")


def env(**extra):
    """The environment of a user who set nothing (tests/conftest.py sets TF_CPP_MIN_LOG_LEVEL for pytest)."""
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    environment.update(extra)
    return environment


PROBE = """
import atexit, sys
atexit.register(lambda: print("tensorflow imported: %s" % ("tensorflow" in sys.modules), file=sys.stderr))
from cvm.cli.main import run
run(["cvm"] + sys.argv[1:])
"""


def cvm_probe(*args):
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env(),
                          timeout=120)


def test_help_data_check_and_data_synth_do_not_import_tensorflow(tmp_path):
    out = str(tmp_path / "syn")
    runs = {
        "help": cvm_probe("--help"),
        "data help": cvm_probe("data", "--help"),
        "synth": cvm_probe("data", "synth", "--out", out, "--pairs", "2", "--nosegmaps"),
        "check": cvm_probe("data", "check", "--dataset", "cvusa", "--root", out),
    }
    for name, result in runs.items():
        assert result.returncode == 0, (name, result.stdout, result.stderr)
        assert "tensorflow imported: False" in result.stderr, (name, result.stderr)
        for word in CHATTER:
            assert word not in result.stderr, (name, result.stderr)
    assert "--report" in runs["data help"].stdout
    assert "CVUSA is usable" in runs["check"].stdout
    assert os.path.isfile(os.path.join(out, "cvm_check_cvusa.txt"))


def test_import_cvm_is_light_and_cvm_models_registers_the_layers():
    code = ("import sys, cvm; assert 'tensorflow' not in sys.modules; import cvm.models, keras; "
            "print(keras.saving.get_registered_object('cvm>NetVLAD') is not None, cvm.models is sys.modules['cvm.models'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]


def test_tensorflow_verbs_keep_its_start_up_lines_out_unless_verbose(tmp_path):
    missing = str(tmp_path / "nothing")
    quiet_run = subprocess.run([sys.executable, "-m", "cvm.cli.main", "eval", f"--model_dir={missing}"],
                               capture_output=True, text=True, env=env(), timeout=300)
    assert quiet_run.returncode == 2
    assert quiet_run.stderr.strip().splitlines() == [
        f"cvm eval: error: {missing}/config.json not found: {missing} is not a cvm model_dir "
        "(run `cvm train --model_dir ...` first)"]
    verbose_run = subprocess.run([sys.executable, "-m", "cvm.cli.main", "eval", f"--model_dir={missing}", "--verbose"],
                                 capture_output=True, text=True, env=env(), timeout=300)
    assert verbose_run.returncode != 0 and "config.json not found" in verbose_run.stderr
    if not os.path.exists("/dev/nvidiactl"):  # without a GPU, TensorFlow's own lines are shown with --verbose
        assert "cuInit" in verbose_run.stderr and "absl::InitializeLog" in verbose_run.stderr


def test_captured_stderr_holds_back_tensorflow_lines_only(capfd):
    lines = [b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
             b"I0000 00:00:1796160568.227713    7069 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n",
             b"E0000 00:00:1796160573.989854    7069 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\n",
             b"UserWarning: something a user should see\n",
             b"F0000 00:00:1796160573.989854    7069 check.cc:1] a fatal line goes through\n"]
    with quiet.CapturedStderr() as capture:
        for line in lines:
            os.write(2, line)
    err = capfd.readouterr().err
    assert err == "UserWarning: something a user should see\nF0000 00:00:1796160573.989854    7069 check.cc:1] " \
                  "a fatal line goes through\n"
    assert capture.held == lines[:3]

    with pytest.raises(ImportError):  # a failed import shows what was held back
        with quiet.CapturedStderr():
            os.write(2, lines[2])
            raise ImportError("no tensorflow")
    assert "failed call to cuInit" in capfd.readouterr().err


def test_verbose_is_read_from_the_command_line():
    assert quiet.verbose_requested(["--verbose"]) and quiet.verbose_requested(["-verbose=true"])
    assert not quiet.verbose_requested(["--verbose", "--noverbose"])
    assert not quiet.verbose_requested(["--verbose=false", "--model_dir=verbose"])
    assert not quiet.verbose_requested(["--", "--verbose"])

"""A tiny trained model_dir shared by the CLI tests of test_onnx.py and test_litert.py (trained once)."""

import pytest
from export_cases import trained_model_dir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    return trained_model_dir(tmp_path_factory.mktemp("export_run") / "run")

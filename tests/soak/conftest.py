"""Soak fixtures: one uninterrupted tiny retrieval run that several soak tests compare against or start from."""

import os
import shutil

import pytest

import soaklib


@pytest.fixture(scope="session")
def retrieval_reference(tmp_path_factory):
    """An uninterrupted tiny retrieval run (soaklib.RETRIEVAL), every checkpoint kept: its model_dir."""
    model_dir = str(tmp_path_factory.mktemp("soak") / "reference")
    result = soaklib.cvm("train", f"--model_dir={model_dir}", *soaklib.RETRIEVAL, "--keep_checkpoints=20")
    assert result.returncode == 0, soaklib.tail(result)
    return model_dir


def copy_run(reference, target, keep_until=None):
    """A copy of a run folder; with keep_until, only its checkpoints up to that global step (a run that
    still has work to do)."""
    shutil.copytree(reference, target)
    if keep_until is not None:
        checkpoints = os.path.join(target, "checkpoints")
        for name in os.listdir(checkpoints):
            if int(name[5:14]) > keep_until:
                os.remove(os.path.join(checkpoints, name))
    return str(target)


@pytest.fixture(scope="session")
def gan_reference(tmp_path_factory):
    """An uninterrupted tiny GAN run (soaklib.GAN), every checkpoint kept: its model_dir."""
    model_dir = str(tmp_path_factory.mktemp("soak") / "gan_reference")
    result = soaklib.cvm("train", f"--model_dir={model_dir}", *soaklib.GAN, "--keep_checkpoints=20")
    assert result.returncode == 0, soaklib.tail(result)
    return model_dir

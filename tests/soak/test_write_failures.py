"""A model_dir that cannot take the next checkpoint (file-size limit / full disk, read-only folder): a
one-line error naming the file, the last good checkpoint intact; the same command resumes once fixed."""

import hashlib
import os
import resource
import signal

import pytest

import soaklib
from conftest import copy_run

pytestmark = pytest.mark.slow
LIMIT = 256 * 1024  # bytes: config.json, flags.cfg and TensorBoard scalars fit, a 1.5 MB checkpoint does not


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def one_error_line(result, verb="train"):
    assert result.returncode != 0 and "Traceback" not in result.stderr, soaklib.tail(result)
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"cvm {verb}: error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def test_file_size_limit_is_one_line_and_keeps_the_last_checkpoint(retrieval_reference, tmp_path):
    model_dir = copy_run(retrieval_reference, tmp_path / "run", keep_until=12)
    checkpoints = os.path.join(model_dir, "checkpoints")
    before = {name: sha(os.path.join(checkpoints, name)) for name in os.listdir(checkpoints)}
    args = ["train", f"--model_dir={model_dir}", *soaklib.RETRIEVAL, "--keep_checkpoints=20"]
    result = soaklib.cvm(*args, preexec_fn=_limit_file_size)
    error = one_error_line(result)
    new = os.path.join(checkpoints, "ckpt-000000016.npz")
    assert f"cannot write {new}: File too large" in error, error
    assert f"the last good checkpoint {os.path.join(checkpoints, 'ckpt-000000012.npz')} is intact" in error
    # Nothing half-written: the checkpoints are the ones there were, byte for byte, and no temporary file.
    assert {name: sha(os.path.join(checkpoints, name)) for name in os.listdir(checkpoints)} == before
    last = os.path.join(checkpoints, "ckpt-000000012.npz")
    found = soaklib.check_checkpoints(model_dir, {k: a.shape for k, a in soaklib.by_ordinal(last).items()})
    assert found["newest"] == 12 and found["leftovers"] == 0

    resumed = soaklib.cvm(*args)  # space again: the same command resumes and ends as the uninterrupted run
    assert resumed.returncode == 0, soaklib.tail(resumed)
    got, state = soaklib.final_checkpoint(model_dir)
    want, _ = soaklib.final_checkpoint(retrieval_reference)
    assert state["global_step"] == 18
    soaklib.assert_same_arrays(got, want)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_checkpoints_folder_is_one_line(retrieval_reference, tmp_path):
    model_dir = copy_run(retrieval_reference, tmp_path / "run", keep_until=12)
    checkpoints = os.path.join(model_dir, "checkpoints")
    os.chmod(checkpoints, 0o555)
    try:
        result = soaklib.cvm("train", f"--model_dir={model_dir}", *soaklib.RETRIEVAL, "--keep_checkpoints=20")
    finally:
        os.chmod(checkpoints, 0o755)
    error = one_error_line(result)
    assert "cannot write" in error and checkpoints in error and "Permission denied" in error
    assert "ckpt-000000012.npz is intact" in error

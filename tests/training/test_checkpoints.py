"""CheckpointManager: restores across processes whose Keras auto-names differ."""

import keras
import numpy as np

from cvm.training.checkpoints import CheckpointManager


def _model_and_optimizer(seed):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])  # auto-named sequential[_N]/dense[_N]
    optimizer = keras.optimizers.Adam(1e-2)
    with np.errstate(all="ignore"):
        optimizer.apply_gradients([(np.ones(v.shape, "float32"), v) for v in model.trainable_variables])
    return model, optimizer


def test_restore_when_keras_auto_names_moved_on(tmp_path):
    model, optimizer = _model_and_optimizer(0)
    path = CheckpointManager(str(tmp_path)).save({"global_step": 1}, model, optimizer)
    # Built later in the same process: the model, its layers and the optimizer slots carry `_N` suffixes
    # (e.g. adam/sequential_1_dense_1_kernel_momentum) that the saved names do not have.
    other, other_optimizer = _model_and_optimizer(1)
    assert other.name != model.name
    assert {v.path for v in other_optimizer.variables} != {v.path for v in optimizer.variables}
    CheckpointManager.restore(path, other, other_optimizer)
    for a, b in zip(model.variables + optimizer.variables, other.variables + other_optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_restore_newest_skips_damaged_checkpoints_and_says_so(tmp_path):
    import pytest

    from cvm.errors import CvmError

    model, optimizer = _model_and_optimizer(0)
    manager = CheckpointManager(str(tmp_path), max_to_keep=10)
    paths = [manager.save({"epoch": 0, "step": s, "global_step": s}, model, optimizer) for s in (1, 2, 3)]
    with open(paths[2], "r+b") as f:  # truncated
        f.truncate(50)
    open(paths[1], "wb").close()  # zero bytes
    said = []
    path, state = manager.restore_newest(model, optimizer, report=said.append)
    assert path == paths[0] and state["global_step"] == 1
    assert len(said) == 1 and "skipped 2 damaged checkpoint(s)" in said[0] and "ckpt-000000003.npz" in said[0]
    with open(paths[0], "r+b") as f:
        f.truncate(50)
    before = sorted(tmp_path.iterdir())
    with pytest.raises(CvmError, match="no usable checkpoint in .*Nothing was written"):
        manager.restore_newest(model, optimizer)
    assert sorted(tmp_path.iterdir()) == before


def test_save_refuses_non_finite_variables_and_names_a_failed_write(tmp_path):
    import os

    import pytest

    from cvm.errors import CvmError

    model, optimizer = _model_and_optimizer(0)
    manager = CheckpointManager(str(tmp_path))
    good = manager.save({"global_step": 1}, model, optimizer)
    model.trainable_variables[0].assign(np.full(model.trainable_variables[0].shape, np.nan, "float32"))
    with pytest.raises(CvmError, match="ckpt-000000002.npz not written .*holds NaN or infinite values"):
        manager.save({"global_step": 2}, model, optimizer)
    os.mkdir(os.path.join(str(tmp_path), "ckpt-000000003.tmp.npz"))  # the temporary file cannot be created
    model, optimizer = _model_and_optimizer(0)
    with pytest.raises(CvmError, match=f"cannot write .*ckpt-000000003.npz: .*the last good checkpoint {good} is "
                                       "intact"):
        manager.save({"global_step": 3}, model, optimizer)
    assert manager.latest() == good and sorted(os.listdir(str(tmp_path))) == [
        "ckpt-000000001.json", "ckpt-000000001.npz", "ckpt-000000003.tmp.npz"]

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

"""VGG16 tower: layout, paper shapes, freezing, dropout, and loading Keras' VGG16 weights."""

import keras
import numpy as np
import pytest

from cvm.errors import CvmError
from cvm.models import VGG16Tower, build_model

CONV_NAMES = [f"conv{b}_{i}" for b, n in [(1, 2), (2, 2), (3, 3), (4, 3), (5, 3)] for i in range(1, n + 1)]


def test_layer_names_and_paper_shapes():
    tower = VGG16Tower()
    assert [conv.name for conv in tower.convs] == CONV_NAMES
    # Four SAME pools, none after conv5_3: stride 16.
    assert tower.compute_output_spec(keras.KerasTensor((1, 512, 512, 3))).shape == (1, 32, 32, 512)
    assert tower.compute_output_spec(keras.KerasTensor((1, 224, 1232, 3))).shape == (1, 14, 77, 512)
    assert tower.compute_output_shape((None, 224, 1232, 3)) == (None, 14, 77, 512)


def test_narrow_tower_channels_and_odd_sizes():
    tower = VGG16Tower(width=0.125)
    assert [conv.filters for conv in tower.convs] == [8, 8, 16, 16, 32, 32, 32, 64, 64, 64, 64, 64, 64]
    out = tower(np.zeros((2, 33, 70, 3), "float32"))
    assert tuple(out.shape) == (2, 3, 5, 64) == tower.compute_output_shape((2, 33, 70, 3))


@pytest.mark.parametrize("freeze_blocks,frozen_convs", [(0, 0), (3, 7), (5, 13)])
def test_frozen_blocks_are_not_trainable(freeze_blocks, frozen_convs):
    tower = VGG16Tower(width=0.125, freeze_blocks=freeze_blocks)
    tower.build()
    assert len(tower.non_trainable_weights) == 2 * frozen_convs
    assert len(tower.trainable_weights) == 2 * (13 - frozen_convs)
    assert all(not conv.trainable for conv in tower.convs[:frozen_convs])


def test_dropout_only_when_training():
    tower = VGG16Tower(width=0.125, dropout_rate=0.5)
    x = np.random.default_rng(0).uniform(-50, 50, (1, 32, 32, 3)).astype("float32")
    inference = np.asarray(tower(x))
    np.testing.assert_array_equal(inference, np.asarray(tower(x, training=False)))
    assert not np.allclose(inference, np.asarray(tower(x, training=True)))


def test_weights_from_local_keras_vgg16_file(tmp_path):
    reference = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    path = str(tmp_path / "vgg16_notop.weights.h5")
    reference.save_weights(path)
    model = build_model("cvm_net_i", weights=path, clusters=2, output_dim=4)
    assert model.get_config()["weights"] == path
    for tower in (model.ground_tower, model.aerial_tower):
        for conv in tower.convs:
            block, index = conv.name[4:].split("_")
            kernel, bias = reference.get_layer(f"block{block}_conv{index}").get_weights()
            np.testing.assert_array_equal(np.asarray(conv.kernel), kernel)
            np.testing.assert_array_equal(np.asarray(conv.bias), bias)


def test_missing_weights_file_is_named(tmp_path):
    path = str(tmp_path / "nowhere.h5")
    with pytest.raises(CvmError, match="nowhere.h5"):
        build_model("cvm_net_i", weights=path, clusters=2, output_dim=4)


def test_pretrained_weights_need_full_width():
    with pytest.raises(CvmError, match="backbone_width"):
        build_model("cvm_net_ii", weights="imagenet", backbone_width=0.125)


def test_imagenet_download_failure_is_a_cvm_error(monkeypatch):
    def offline_vgg16(*args, weights=None, **kwargs):
        assert weights == "imagenet"
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- no network")

    monkeypatch.setattr(keras.applications, "VGG16", offline_vgg16)
    with pytest.raises(CvmError, match="could not download.*pass its path"):
        build_model("cvm_net_i", weights="imagenet", clusters=2, output_dim=4)

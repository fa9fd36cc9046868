"""CVM-Net-I/II: registry, descriptor contract, freezing, dropout, paper shapes, .keras round trip."""

import keras
import numpy as np
import pytest

import cvm.models
from cvm.errors import CvmError
from cvm.models import CVMNetI, CVMNetII, available_methods, build_model

SMALL = dict(backbone_width=0.125, clusters=8, output_dim=32)


def small_batch(seed=0, batch=2):
    rng = np.random.default_rng(seed)
    return {
        "ground": rng.uniform(-100, 100, (batch, 32, 128, 3)).astype("float32"),
        "aerial": rng.uniform(-100, 100, (batch, 64, 64, 3)).astype("float32"),
    }


def as_numpy(outputs):
    return {view: np.asarray(value) for view, value in outputs.items()}


def test_registry_lists_methods_and_refuses_unknown_names():
    assert {"cvm_net_i", "cvm_net_ii"} <= set(available_methods())
    with pytest.raises(CvmError, match="unknown method 'cvm_net_iii'.*cvm_net_i, cvm_net_ii"):
        build_model("cvm_net_iii")
    with pytest.raises(CvmError, match="normalize_output"):
        build_model("cvm_net_i", normalize_output=False, **SMALL)  # an option of II only
    with pytest.raises(CvmError, match="keep_prob"):
        build_model("cvm_net_i", keep_prob=0.0, **SMALL)


def test_register_refuses_what_is_not_a_two_tower_model():
    with pytest.raises(TypeError, match="TwoTowerModel"):
        @cvm.models.register("test_only_function")
        def builder(size=3):
            return size
    assert "test_only_function" not in available_methods()


@pytest.mark.parametrize(
    "method,options,normalized",
    [("cvm_net_i", {}, True), ("cvm_net_ii", {}, True), ("cvm_net_ii", {"normalize_output": False}, False)],
)
def test_descriptor_contract(method, options, normalized):
    model = build_model(method, **SMALL, **options)
    assert isinstance(model, CVMNetI if method == "cvm_net_i" else CVMNetII)
    assert model.descriptor_dim == 32 and model.l2_normalized is normalized
    batch = small_batch()
    out = as_numpy(model(batch))
    assert {view: v.shape for view, v in out.items()} == {"ground": (2, 32), "aerial": (2, 32)}
    norms = np.linalg.norm(np.concatenate([out["ground"], out["aerial"]]), axis=1)
    if normalized:
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    else:
        assert np.all(np.abs(norms - 1.0) > 1e-3)
    # Each view alone, as export and evaluation embed the galleries.
    np.testing.assert_allclose(np.asarray(model.encode_ground(batch["ground"])), out["ground"], atol=1e-6)
    np.testing.assert_allclose(np.asarray(model.encode_aerial(batch["aerial"])), out["aerial"], atol=1e-6)


@pytest.mark.parametrize("method,trainable,frozen", [("cvm_net_i", 32, 28), ("cvm_net_ii", 36, 28)])
def test_frozen_blocks(method, trainable, frozen):
    model = build_model(method, **SMALL)
    assert (len(model.trainable_weights), len(model.non_trainable_weights)) == (trainable, frozen)
    everything = build_model(method, freeze_blocks=0, **SMALL)
    assert (len(everything.trainable_weights), len(everything.non_trainable_weights)) == (trainable + frozen, 0)


@pytest.mark.parametrize("method", ["cvm_net_i", "cvm_net_ii"])
def test_dropout_only_with_training_true(method):
    model = build_model(method, keep_prob=0.5, **SMALL)
    batch = small_batch()
    inference = as_numpy(model(batch))
    np.testing.assert_array_equal(inference["ground"], as_numpy(model(batch, training=False))["ground"])
    training = as_numpy(model(batch, training=True))
    assert not np.allclose(inference["ground"], training["ground"])
    assert not np.allclose(inference["aerial"], training["aerial"])


def test_no_dropout_when_keep_prob_is_one():
    model = build_model("cvm_net_ii", keep_prob=1.0, **SMALL)
    batch = small_batch()
    np.testing.assert_allclose(
        as_numpy(model(batch, training=True))["aerial"], as_numpy(model(batch))["aerial"], atol=1e-6
    )


@pytest.mark.parametrize("method", ["cvm_net_i", "cvm_net_ii"])
def test_paper_sizes(method):
    """Shape inference only: full-width VGG16, 64 clusters, 4096-d, at the published image sizes."""
    model = build_model(method)
    spec = model.compute_output_spec(
        {"ground": keras.KerasTensor((2, 224, 1232, 3)), "aerial": keras.KerasTensor((2, 512, 512, 3))}
    )
    assert spec["ground"].shape == spec["aerial"].shape == (2, 4096)
    assert model.aerial_tower.compute_output_shape((None, 512, 512, 3)) == (None, 32, 32, 512)
    assert model.ground_tower.compute_output_shape((None, 224, 1232, 3)) == (None, 14, 77, 512)
    if method == "cvm_net_i":
        assert tuple(model.dim_reduction.kernel.shape) == (32768, 4096)
        assert model.ground_netvlad.compute_output_shape((None, 14, 77, 512)) == (None, 32768)
    else:
        assert tuple(model.netvlad.hidden1_weights.shape) == (32768, 4096)
        assert tuple(model.shared_trans_conv1.kernel.shape) == (3, 3, 512, 512)


@pytest.mark.parametrize("method,options", [("cvm_net_i", {}), ("cvm_net_ii", {"normalize_output": False})])
def test_keras_round_trip(tmp_path, method, options):
    model = build_model(method, keep_prob=0.7, freeze_blocks=2, **SMALL, **options)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model)
    assert loaded.get_config() == model.get_config()
    assert (loaded.descriptor_dim, loaded.l2_normalized) == (model.descriptor_dim, model.l2_normalized)
    assert len(loaded.trainable_weights) == len(model.trainable_weights)
    batch = small_batch(seed=3)
    expected, got = as_numpy(model(batch)), as_numpy(loaded(batch))
    for view in ("ground", "aerial"):
        np.testing.assert_array_equal(got[view], expected[view])

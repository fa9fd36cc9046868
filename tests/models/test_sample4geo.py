"""Sample4Geo model: descriptors, the learnable logit scale, shared / separate towers, options, saving."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from cvm.errors import CvmError
from cvm.losses.infonce import SymmetricInfoNCE
from cvm.models.registry import build_model, model_class
from cvm.models.sample4geo import LOGIT_SCALE_INIT, Sample4Geo

SMALL = dict(backbone="convnext_tiny", backbone_width=0.125, backbone_depths=(1, 1, 1, 1))  # 12..96 channels


def batch(seed, n=3):
    rng = np.random.default_rng(seed)
    return {"ground": rng.standard_normal((n, 35, 128, 3)).astype("float32"),
            "aerial": rng.standard_normal((n, 64, 64, 3)).astype("float32")}


def test_unit_descriptors_and_logit_scale():
    model = Sample4Geo(**SMALL)
    out = model(batch(0))
    assert out["ground"].shape == (3, 96) and out["aerial"].shape == (3, 96) and model.descriptor_dim == 96
    for view in ("ground", "aerial"):
        assert out[view].dtype == "float32"
        np.testing.assert_allclose(np.linalg.norm(np.asarray(out[view]), axis=1), 1.0, atol=1e-6)
    assert LOGIT_SCALE_INIT == pytest.approx(2.6592600)  # log(1 / 0.07)
    assert float(np.exp(model.logit_scale.numpy())) == pytest.approx(1 / 0.07, rel=1e-6)
    assert any(w is model.logit_scale for w in model.trainable_weights)


def test_shared_tower_embeds_both_views_with_one_network():
    shared = Sample4Geo(**SMALL)
    x = batch(1)["aerial"]
    out = shared({"ground": x, "aerial": x})
    np.testing.assert_array_equal(np.asarray(out["ground"]), np.asarray(out["aerial"]))
    two = Sample4Geo(share_towers=False, **SMALL)
    assert len(two.weights) == 2 * len(shared.weights) - 1  # two backbones, one logit scale
    out = two({"ground": x, "aerial": x})
    assert np.abs(np.asarray(out["ground"]) - np.asarray(out["aerial"])).max() > 1e-3


def test_one_training_step_moves_backbone_and_logit_scale():
    model = Sample4Geo(**SMALL)
    loss_fn = SymmetricInfoNCE()
    data = batch(2, n=4)
    with tf.GradientTape() as tape:
        out = model(data, training=True)
        loss = loss_fn(out["ground"], out["aerial"], logit_scale=model.logit_scale)
    grads = tape.gradient(loss, model.trainable_weights)
    assert all(g is not None for g in grads)
    by_name = {w.path: g for w, g in zip(model.trainable_weights, grads)}
    assert abs(float(by_name[model.logit_scale.path])) > 1e-4
    assert float(tf.reduce_max(tf.abs(by_name[model.ground_backbone.stem_conv.kernel.path]))) > 0
    # Random descriptors: the loss is near the chance value log(B) = log 4 with LS 0.1 (logits in [-14, 14]).
    assert 0.5 < float(loss) < 10 and math.isfinite(float(loss))


def test_save_reload_and_registry(tmp_path):
    model = build_model("sample4geo", **SMALL)
    assert model_class("sample4geo") is Sample4Geo
    model.logit_scale.assign(3.3)
    path = str(tmp_path / "s4g.keras")
    model.save(path)
    again = keras.saving.load_model(path)
    data = batch(3)
    for view in ("ground", "aerial"):
        np.testing.assert_array_equal(np.asarray(again(data)[view]), np.asarray(model(data)[view]))
    assert float(again.logit_scale.numpy()) == pytest.approx(3.3)
    assert again.get_config()["backbone_depths"] == [1, 1, 1, 1]
    help_texts = Sample4Geo.option_help()
    assert set(help_texts) == {"backbone", "weights", "backbone_width", "backbone_depths", "share_towers",
                               "drop_path_rate", "backbone_pos_grid", "pooling", "ground_size", "aerial_size"}
    assert all(help_texts.values())


def test_mixed_precision_descriptors_are_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = Sample4Geo(**SMALL)
        out = model(batch(4))
        assert out["ground"].dtype == "float32" and model.logit_scale.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_bad_options_raise_cvm_error():
    with pytest.raises(CvmError, match="backbone"):
        Sample4Geo(backbone="resnet50")
    with pytest.raises(CvmError, match="backbone_width=1.0"):
        Sample4Geo(weights="imagenet", **SMALL)
    with pytest.raises(CvmError, match="3 channels"):
        Sample4Geo(**SMALL).encode_aerial(np.zeros((1, 32, 32, 4), "float32"))
    with pytest.raises(CvmError, match="backbone_pos_grid is a DINOv2 option"):
        Sample4Geo(backbone_pos_grid=27, **SMALL)
    with pytest.raises(CvmError, match="one stage"):
        Sample4Geo(backbone="dinov2_small", backbone_width=0.125, backbone_depths=(1, 1, 1, 1))


def test_backbone_choices_include_dinov2():
    """The --backbone flag's choices come from the constructor's Literal (cvm.training.config)."""
    import typing

    choices = typing.get_args(Sample4Geo.option_parameters()["backbone"].annotation)
    assert {"convnext_base", "dinov2_small", "dinov2_base", "dinov2_large", "dinov2_small_reg4"} <= set(choices)


def test_trains_in_the_retrieval_trainer_with_the_bound_logit_scale():
    """The existing two-tower trainer drives it unchanged: the loss holds the model's logit_scale variable."""
    from cvm.training.retrieval import RetrievalTrainer

    model = Sample4Geo(**SMALL)
    trainer = RetrievalTrainer(model, SymmetricInfoNCE(logit_scale=model.logit_scale))
    trainer.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-2))
    data = batch(6, n=4)
    meta = {"location": np.zeros((4, 2), "float64")}
    before = float(model.logit_scale.numpy())
    history = trainer.fit(tf.data.Dataset.from_tensors((data, meta)).repeat(2), epochs=1, verbose=0,
                          shuffle=False)
    assert math.isfinite(history.history["loss"][-1])
    assert abs(float(model.logit_scale.numpy()) - before) > 1e-3  # AdamW moved it by ~lr per step

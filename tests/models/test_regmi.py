"""Regmi & Shah (ICCV 2019) encoder, two-stream, joint and fusion models."""

import keras
import numpy as np
import pytest

from cvm.errors import CvmError
from cvm.models import build_model
from cvm.models.regmi import RegmiEncoder

SMALL = dict(backbone_width=0.0625, output_dim=16, ground_size=(32, 128), aerial_size=(64, 64), keep_prob=1.0)


def test_encoder_lengths_at_the_paper_sizes():
    encoder = RegmiEncoder()
    # conv6 8x8x512 + conv7 4x4x512 + conv8 2x2x512; conv6 4x20x512 + conv7 2x10x512 + conv8 1x5x512.
    assert encoder.output_length((512, 512)) == 43008 == (64 + 16 + 4) * 512
    assert encoder.output_length((224, 1232)) == 53760 == (80 + 20 + 5) * 512
    assert RegmiEncoder(multiscale=False).output_length((512, 512)) == 2048
    # Symbolic shape inference of the real layer agrees (no arrays of the paper's size are made).
    for size, length in (((512, 512), 43008), ((224, 1232), 53760)):
        spec = encoder.compute_output_spec(keras.KerasTensor((None, *size, 3)))
        assert tuple(spec.shape) == (None, length)


def test_paper_models_fc_shapes():
    model = build_model("regmi_joint", output_dim=8, backbone_width=0.125)
    # FC inputs at the paper sizes, scaled by the width: 43,008 / 8 and 53,760 / 8.
    assert tuple(model.aerial_fc.kernel.shape) == (43008 // 8, 8)
    assert tuple(model.ground_fc.kernel.shape) == (53760 // 8, 8)
    assert model.synthesized_encoder.name == "VGG_grd_seg"
    assert "VGG_grd_seg/conv1" in model.synthesized_encoder.weights[0].path


def numpy_encoder(encoder, x):
    """Independent reference: SAME stride-2 4x4 convolution by explicit patches, ReLU, NHWC flatten."""
    kept = []
    for level, conv in enumerate(encoder.convs, start=1):
        w, b = (np.asarray(v) for v in (conv.kernel, conv.bias))
        n, h, wd, c = x.shape
        oh, ow = -(-h // 2), -(-wd // 2)
        pad_h, pad_w = max((oh - 1) * 2 + 4 - h, 0), max((ow - 1) * 2 + 4 - wd, 0)
        xp = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
        out = np.zeros((n, oh, ow, w.shape[-1]), np.float64)
        for i in range(oh):
            for j in range(ow):
                patch = xp[:, 2 * i:2 * i + 4, 2 * j:2 * j + 4, :]
                out[:, i, j] = np.tensordot(patch, w, axes=([1, 2, 3], [0, 1, 2]))
        x = np.maximum(out + b, 0)
        if level >= 6:
            kept.append(x.reshape(n, -1))
    return np.concatenate(kept, axis=1)


def test_two_stream_matches_a_numpy_reference():
    model = build_model("regmi_two_stream", **SMALL)
    rng = np.random.default_rng(0)
    ground = rng.uniform(-1, 1, (2, 32, 128, 3)).astype("float32")
    aerial = rng.uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    out = model({"ground": ground, "aerial": aerial})
    for view, images, encoder, fc in (("ground", ground, model.ground_encoder, model.ground_fc),
                                      ("aerial", aerial, model.aerial_encoder, model.aerial_fc)):
        features = numpy_encoder(encoder, images.astype(np.float64))
        assert features.shape[1] == encoder.output_length(images.shape[1:3])
        fc_out = features @ np.asarray(fc.kernel) + np.asarray(fc.bias)
        expected = fc_out / np.linalg.norm(fc_out, axis=1, keepdims=True)
        np.testing.assert_allclose(np.asarray(out[view]), expected, atol=2e-5)


def test_joint_synthesized_stream_shares_the_aerial_fc():
    model = build_model("regmi_joint", **SMALL)
    rng = np.random.default_rng(1)
    aerial = rng.uniform(-1, 1, (3, 64, 64, 3)).astype("float32")
    ground = rng.uniform(-1, 1, (3, 32, 128, 3)).astype("float32")
    out = model({"ground": ground, "aerial": aerial, "synthesized": aerial})
    assert set(out) == {"ground", "aerial", "synthesized"}
    assert not np.allclose(out["synthesized"], out["aerial"])  # separate encoders
    for source, target in zip(model.aerial_encoder.weights, model.synthesized_encoder.weights):
        target.assign(source)
    out = model({"ground": ground, "aerial": aerial, "synthesized": aerial})
    np.testing.assert_allclose(np.asarray(out["synthesized"]), np.asarray(out["aerial"]), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out["ground"], axis=1), 1.0, atol=1e-5)
    assert set(model({"ground": ground, "aerial": aerial})) == {"ground", "aerial"}


def test_dropout_only_in_training_and_single_scale_option():
    model = build_model("regmi_two_stream", **{**SMALL, "keep_prob": 0.5})
    aerial = np.random.default_rng(2).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    a = np.asarray(model.encode_aerial(aerial))
    np.testing.assert_array_equal(a, np.asarray(model.encode_aerial(aerial)))
    assert not np.allclose(a, np.asarray(model.encode_aerial(aerial, training=True)))
    single = build_model("regmi_two_stream", **{**SMALL, "multiscale": False})
    assert tuple(single.aerial_fc.kernel.shape) == (32, 16)  # conv8 1x1x32 only


def test_fusion_matches_numpy_and_checks_dims(tmp_path):
    model = build_model("regmi_fusion", input_dim=6, output_dim=5)
    rng = np.random.default_rng(3)
    ground, aerial = rng.normal(size=(4, 12)).astype("float32"), rng.normal(size=(4, 6)).astype("float32")
    out = model({"ground": ground, "aerial": aerial})
    for view, x, fc in (("ground", ground, model.ground_fc), ("aerial", aerial, model.aerial_fc)):
        y = x @ np.asarray(fc.kernel) + np.asarray(fc.bias)
        np.testing.assert_allclose(np.asarray(out[view]), y / np.linalg.norm(y, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(model.ground_fc.bias), np.float32(0.01))  # stored constant: exact
    with pytest.raises(CvmError, match="input_dim=6"):
        model({"ground": aerial, "aerial": aerial})
    path = str(tmp_path / "fusion.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)({"ground": ground, "aerial": aerial})
    np.testing.assert_allclose(np.asarray(reloaded["ground"]), np.asarray(out["ground"]), atol=1e-6)


def test_wrong_image_size_is_a_named_error_and_models_reload(tmp_path):
    model = build_model("regmi_joint", **SMALL)
    with pytest.raises(CvmError, match=r"aerial_size=\(96, 96\)"):
        model.encode_aerial(np.zeros((1, 96, 96, 3), "float32"))
    path = str(tmp_path / "joint.keras")
    model.save(path)
    again = keras.models.load_model(path)
    aerial = np.random.default_rng(4).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(again.encode_synthesized(aerial)),
                               np.asarray(model.encode_synthesized(aerial)), atol=1e-6)
    assert again.ground_size == (32, 128) and again.keep_prob == 1.0
    with pytest.raises(CvmError, match="keep_prob"):
        build_model("regmi_two_stream", keep_prob=0.0)

"""`--method sample4geo` through the retrieval trainer: symmetric InfoNCE on the model's own logit scale."""

import math

import numpy as np

from cvm.data import images
from cvm.training.config import TrainConfig
from cvm.training.loop import Run, build_encoder, build_loss

TINY = dict(method="sample4geo", backbone="convnext_tiny", backbone_width=0.25, backbone_depths=(1, 1, 1, 1),
            synthetic_pairs=48, ground_size=(32, 128), aerial_size=(64, 64), batch_size=8, epochs=2,
            eval_batch_size=16, jit_compile=False, lr=1e-3)


def test_sample4geo_config_takes_the_infonce_flags_and_not_the_triplet_ones():
    config = TrainConfig(**TINY)
    config.validate()
    unused = config.unused_fields()
    assert {"alpha", "include_diagonal", "mask_mode"} <= set(unused) and "infonce_smoothing" not in unused
    assert "infonce_smoothing" in TrainConfig(method="cvm_net_i").unused_fields()
    encoder = build_encoder(config)
    loss = build_loss(config, encoder)
    assert type(loss).__name__ == "SymmetricInfoNCE" and loss.label_smoothing == 0.1
    assert loss.logit_scale is encoder.logit_scale
    spec = images.preset("sample4geo")
    assert spec.channel_order == "rgb" and spec.ground_size == (140, 768) and spec.aerial_size == (384, 384)
    # ImageNet normalisation per channel: (v - mean) / std on 0..255 values, in RGB order.
    bgr = np.array([[[10, 128, 250]]], np.uint8)
    expected = (np.array([250, 128, 10]) - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])
    np.testing.assert_allclose(images.normalise(bgr, spec)[0, 0], expected, rtol=1e-6)


def test_sample4geo_trains_its_logit_scale_with_the_descriptors(tmp_path):
    config = TrainConfig(model_dir=str(tmp_path / "s4g"), **TINY)
    run = Run(config, progress=False)
    before = float(np.asarray(run.encoder.logit_scale))
    assert math.isclose(before, math.log(1 / 0.07), rel_tol=1e-6)
    state = run.train()
    after = float(np.asarray(run.encoder.logit_scale))
    assert after != before  # the temperature is learned (Adam moves it by ~lr per step)
    assert np.isfinite(state["best"]["score"]) and 0.0 <= state["best"]["score"] <= 1.0

"""Synthesis GAN networks: paper sizes, Torch layer stacks (parameter counts), the NCHW bottleneck
reshape, the fork quirk, PatchGAN receptive field (layer stack and gradient probe), init, .keras reload."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cvm.models.synthesis import EncoderDecoderGenerator, PatchDiscriminator, build_synthesis_networks


def _symbolic(model, shape):
    return model.compute_output_spec(keras.KerasTensor(shape))


@pytest.mark.parametrize("method, input_hw, target_hw, channels", [
    ("xfork", (256, 256), (256, 256), 3),
    ("xseq", (256, 256), (256, 256), 3),
    ("xpix2pix", (256, 256), (256, 256), 3),
    ("xfork_pano2aerial", (256, 1024), (512, 512), 3),
    ("xfork_pano2aerial", (256, 1024), (512, 512), 4),  # with the Canny edge channel
    ("xfork_aerial2pano", (512, 512), (256, 1024), 3),
])
def test_paper_sizes(method, input_hw, target_hw, channels):
    nets = build_synthesis_networks(method, input_hw, target_hw, input_channels=channels)
    g = nets["generators"].get("g") or nets["generators"]["g1"]
    out = _symbolic(g, (1, *input_hw, channels))
    assert tuple(out["image"].shape) == (1, *target_hw, 3)
    assert ("segmentation" in out) == method.startswith("xfork")
    if method == "xseq":
        seg = _symbolic(nets["generators"]["g2"], (1, *target_hw, 3))
        assert tuple(seg["segmentation"].shape) == (1, *target_hw, 3)
        assert set(nets["discriminators"]) == {"d1", "d2"}
        assert nets["discriminators"]["d2"].input_channels == 6
    d = nets["discriminators"].get("d") or nets["discriminators"]["d1"]
    conditional = not method.startswith("xfork_")
    assert d.input_channels == (channels + 3 if conditional else 3)
    expected_map = {"xfork_aerial2pano": (14, 62)}.get(method, (30, 30))  # 256x1024 -> 16x64 -> 15x63 -> 14x62
    assert d.output_size == expected_map
    assert tuple(_symbolic(d, (1, *target_hw, d.input_channels)).shape) == (1, *expected_map, 1)
    assert d.receptive_field() == (70 if conditional else 142)


def test_bottlenecks_of_the_iccv19_forks():
    p2a = build_synthesis_networks("xfork_pano2aerial", (256, 1024), (512, 512))["generators"]["g"]
    assert (p2a.n_down, p2a.n_up) == (7, 7)
    assert tuple(_symbolic(p2a.encoder[-1][0], (1, 4, 16, 512)).shape) == (1, 2, 8, 512)
    assert tuple(p2a.reshape.target_shape) == (4, 4, 512)
    a2p = build_synthesis_networks("xfork_aerial2pano", (512, 512), (256, 1024))["generators"]["g"]
    assert (a2p.n_down, a2p.n_up) == (7, 7) and tuple(a2p.reshape.target_shape) == (2, 8, 512)
    borji = build_synthesis_networks("xfork", (256, 256), (256, 256))["generators"]["g"]
    assert (borji.n_down, borji.n_up, borji.reshape) == (8, 8, None)


def _torch_param_count(convs, bns):
    """Kernel weights (no biases: zeroed in Torch, absent here) + BN gamma and beta."""
    return sum(16 * cin * cout for cin, cout in convs) + sum(2 * c for c in bns)


def test_parameter_counts_match_the_torch_layer_lists():
    # defineG_encoder_decoder_fork_cvusa, written out from models.lua (ngf 64).
    enc = [(3, 64), (64, 128), (128, 256), (256, 512), (512, 512), (512, 512), (512, 512)]
    dec = [(512, 512), (512, 512), (512, 512), (512, 256), (256, 128)]
    heads = 2 * [(128, 64), (64, 3)]
    bns = [128, 256, 512, 512, 512, 512] + [512, 512, 512, 256, 128] + [64, 64]
    g = build_synthesis_networks("xfork_pano2aerial", (256, 1024), (512, 512))["generators"]["g"]
    assert _trainable(g) == _torch_param_count(enc + dec + heads, bns)
    # defineG_encoder_decoder (X-Pix2pix / X-Seq G), 256x256: 8 down, 8 up.
    enc = [(3, 64), (64, 128), (128, 256), (256, 512)] + 4 * [(512, 512)]
    dec = 4 * [(512, 512)] + [(512, 256), (256, 128), (128, 64), (64, 3)]
    bns = [128, 256, 512, 512, 512, 512, 512] + [512, 512, 512, 512, 256, 128, 64]
    g = build_synthesis_networks("xpix2pix", (256, 256), (256, 256))["generators"]["g"]
    assert _trainable(g) == _torch_param_count(enc + dec, bns)
    # defineD_n_layers(3 + 3, ndf 64, n_layers 3).
    d = build_synthesis_networks("xpix2pix", (256, 256), (256, 256))["discriminators"]["d"]
    convs = [(6, 64), (64, 128), (128, 256), (256, 512), (512, 1)]
    assert _trainable(d) == _torch_param_count(convs, [128, 256, 512])


def _trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def test_bottleneck_reshape_is_torch_nchw_order():
    g = build_synthesis_networks("xfork_pano2aerial", (32, 128), (64, 64), ngf=8, ndf=8)["generators"]["g"]
    x = np.random.default_rng(0).normal(size=(2, 2, 8, 64)).astype("float32")  # NHWC bottleneck
    nchw = x.transpose(0, 3, 1, 2).reshape(2, 64, 4, 4)  # Torch nn.Reshape(C, 4, 4, true) on NCHW memory
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(g.reshape(x)), nchw.transpose(0, 2, 3, 1))


def test_iccv19_fork_keeps_the_missing_relu_and_the_fix_adds_it():
    nets = build_synthesis_networks("xfork_pano2aerial", (32, 128), (64, 64), ngf=8, ndf=8, dropout=0.0)
    fixed = build_synthesis_networks("xfork_pano2aerial", (32, 128), (64, 64), ngf=8, ndf=8, dropout=0.0,
                                     fork_relu=True)
    g, h = nets["generators"]["g"], fixed["generators"]["g"]
    assert not g.fork_relu and h.fork_relu
    assert build_synthesis_networks("xfork", (64, 64), (64, 64), ngf=8)["generators"]["g"].fork_relu
    h.set_weights(g.get_weights())
    x = np.random.default_rng(1).uniform(-1, 1, (2, 32, 128, 3)).astype("float32")
    # Batch statistics (training mode) bring activations to unit scale; the ReLU changes the heads' input.
    a, b = g(x, training=True)["image"].numpy(), h(x, training=True)["image"].numpy()
    assert np.abs(a - b).max() > 1e-2


def test_initialisation_and_batch_norm_settings():
    nets = build_synthesis_networks("xfork", (64, 64), (64, 64), ngf=16, ndf=16)
    g, d = nets["generators"]["g"], nets["discriminators"]["d"]
    kernels = np.concatenate([v.numpy().ravel() for v in g.trainable_variables + d.trainable_variables
                              if v.path.endswith("kernel")])
    assert abs(kernels.std() - 0.02) < 0.001 and abs(kernels.mean()) < 0.001
    gammas = np.concatenate([v.numpy().ravel() for v in g.trainable_variables if v.path.endswith("gamma")])
    assert abs(gammas.mean() - 1.0) < 0.005 and abs(gammas.std() - 0.02) < 0.005
    norms = [bn for _, bn in g.encoder if bn] + [bn for _, bn, _ in g.trunk] + [d.stack[1][2]]
    assert len(norms) == 5 + 4 + 1  # 64x64: 6 down (5 with BN), 6 up (4 shared), D bn2
    assert all(bn.epsilon == 1e-5 and bn.momentum == 0.9 for bn in norms)
    assert not any(v.path.endswith("bias") for v in g.trainable_variables + d.trainable_variables)
    with_bias = build_synthesis_networks("xfork", (64, 64), (64, 64), ngf=8, ndf=8, edge_bias=True)
    biased = [v.path for n in ("generators", "discriminators") for m in with_bias[n].values()
              for v in m.trainable_variables if v.path.endswith("bias")]
    # first encoder conv, the two head outputs, the D's first and last conv
    assert len(biased) == 5, biased


def test_receptive_field_by_gradient_probe():
    d = PatchDiscriminator(input_size=(96, 96), input_channels=3, ndf=4, n_layers=3)
    assert d.receptive_field() == 70
    x = tf.Variable(np.random.default_rng(2).normal(size=(1, 96, 96, 3)).astype("float32"))
    with tf.GradientTape() as tape:
        logits = d(x, training=False)
        centre = logits[0, logits.shape[1] // 2, logits.shape[2] // 2, 0]
    grad = np.abs(tape.gradient(centre, x).numpy()[0]).sum(-1)
    rows, cols = np.nonzero(grad)
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70
    assert PatchDiscriminator(input_size=(512, 512), input_channels=3, ndf=4, n_layers=4).receptive_field() == 142


def test_keras_round_trip(tmp_path):
    nets = build_synthesis_networks("xfork_pano2aerial", (32, 128), (64, 64), input_channels=4, ngf=8, ndf=8,
                                    n_layers=3)
    x = np.random.default_rng(3).uniform(-1, 1, (2, 32, 128, 4)).astype("float32")
    for model, inputs in ((nets["generators"]["g"], x),
                          (nets["discriminators"]["d"], np.zeros((2, 64, 64, 3), "float32") + 0.3)):
        path = str(tmp_path / f"{model.name}.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        assert type(loaded) is type(model) and loaded.get_config() == model.get_config()
        a, b = model(inputs, training=False), loaded(inputs, training=False)
        for key in (a if isinstance(a, dict) else [None]):
            np.testing.assert_allclose(np.asarray(b[key] if key else b), np.asarray(a[key] if key else a), atol=1e-6)


def test_dropout_is_off_in_inference_and_on_in_training():
    g = EncoderDecoderGenerator(input_size=(64, 64), target_size=(64, 64), ngf=8)
    x = np.random.default_rng(4).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_array_equal(g(x, training=False)["image"].numpy(), g(x, training=False)["image"].numpy())
    assert np.abs(g(x, training=True)["image"].numpy() - g(x, training=True)["image"].numpy()).max() > 0


def test_sizes_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="power of two"):
        build_synthesis_networks("xfork", (48, 48), (48, 48), ngf=8)
    with pytest.raises(ValueError, match="H x 4H"):
        build_synthesis_networks("xfork_pano2aerial", (32, 64), (64, 64), ngf=8)

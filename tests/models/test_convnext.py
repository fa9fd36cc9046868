"""ConvNeXt backbone: layer by layer against timm's ConvNeXt, and Keras' own ConvNeXt against both (random weights)."""

import numpy as np
import pytest

from tests.timm_import import import_timm_convnext, randomised_timm_convnext

import keras  # noqa: E402

from cvm.errors import CvmError  # noqa: E402
from cvm.export.torch_sample4geo import assign_strictly, timm_convnext_targets, to_torch  # noqa: E402
from cvm.models.backbones.convnext import (  # noqa: E402
    ConvNeXtBackbone,
    imagenet_normalize,
    load_keras_convnext_weights,
    variant_config,
)

DEPTHS, DIMS = (1, 2, 1, 1), (16, 32, 64, 128)  # tiny's widths x 1/6, a 2-block stage to check block order
# Float32 noise: the stage maps are LayerNorm-scaled values of magnitude <= ~5 after <= ~12 layers, each a sum
# of <= 512 products (relative error ~1e-6; oneDNN and PyTorch sum in different orders). Measured <= 2.3e-6
# (AMD EPYC, oneDNN on); 5e-5 leaves ~20x for other CPUs, and a tanh GELU instead of the exact one (4e-4) fails.
ATOL = 5e-5


def _torch_state(model):
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _nchw(x):
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


@pytest.fixture(scope="module")
def timm_and_ours():
    timm_model = randomised_timm_convnext(DEPTHS, DIMS, seed=1)
    ours = ConvNeXtBackbone("convnext_tiny", width=16 / 96, depths=DEPTHS)
    ours.build()
    assert ours.dims == DIMS
    assign_strictly(timm_convnext_targets(ours), _torch_state(timm_model), "timm model")
    return timm_model, ours


def test_layer_by_layer_against_timm(timm_and_ours):
    import torch

    timm_model, ours = timm_and_ours
    x = np.random.default_rng(0).standard_normal((2, 70, 100, 3)).astype(np.float32)  # odd sizes, non-square
    stages = [np.asarray(t) for t in ours.stage_outputs(x)]
    with torch.no_grad():
        t = timm_model.stem(_nchw(x))
        expected = [t]
        for stage in timm_model.stages:
            t = stage(t)
            expected.append(t)
        pooled = timm_model(_nchw(x)).numpy()  # forward_head: avg pool, head.norm (num_classes=0: no fc)
    assert [s.shape[1:3] for s in stages] == [(17, 25), (17, 25), (8, 12), (4, 6), (2, 3)]
    for name, got, want in zip(["stem", "stage 0", "stage 1", "stage 2", "stage 3"], stages, expected):
        np.testing.assert_allclose(got, np.transpose(want.numpy(), (0, 2, 3, 1)), atol=ATOL, err_msg=name)
    np.testing.assert_allclose(np.asarray(ours(x)), pooled, atol=ATOL)
    assert np.abs(pooled[0] - pooled[1]).max() > 0.1  # images differ, so do their features


def _keras_application_convnext(depths, dims):
    """Keras' own ConvNeXt builder at a small size (the public ConvNeXtTiny etc. fix depths and widths)."""
    from keras.src.applications.convnext import ConvNeXt

    return ConvNeXt(depths=list(depths), projection_dims=list(dims), include_top=False, pooling="avg",
                    include_preprocessing=False, input_shape=(None, None, 3), name="convnext_tiny")


def test_keras_applications_convnext_equals_timm_on_the_same_weights():
    """Keras' ConvNeXt (random weights) -> ours -> a timm state_dict: Keras' model and timm's agree."""
    import torch

    reference = _keras_application_convnext(DEPTHS, DIMS)
    rng = np.random.default_rng(2)
    for w in reference.weights:  # Keras' init leaves layer scale at 1e-6 as well
        w.assign((rng.standard_normal(w.shape) / np.sqrt(max(1, np.prod(w.shape[:-1])))).astype("float32")
                 + (0.5 if "gamma" in w.path and len(w.shape) == 1 else 0.0))
    ours = ConvNeXtBackbone("convnext_tiny", width=16 / 96, depths=DEPTHS)
    load_keras_convnext_weights(ours, reference)
    x = rng.standard_normal((2, 64, 96, 3)).astype(np.float32)
    keras_out = np.asarray(reference(x))
    np.testing.assert_allclose(np.asarray(ours(x)), keras_out, atol=1e-5)  # same framework, same ops

    timm_model = import_timm_convnext().ConvNeXt(depths=DEPTHS, dims=DIMS, num_classes=0).eval()
    state = {key: torch.from_numpy(np.ascontiguousarray(to_torch(np.asarray(var), layout)))
             for key, (var, layout) in timm_convnext_targets(ours).items()}
    timm_model.load_state_dict(state, strict=True)
    with torch.no_grad():
        timm_out = timm_model(_nchw(x)).numpy()
    np.testing.assert_allclose(keras_out, timm_out, atol=ATOL)
    assert np.abs(keras_out).max() > 0.5


def test_keras_weights_file_loads_through_the_public_application(tmp_path):
    """A Keras ConvNeXtTiny .weights.h5 (random here; the real one is convnext_tiny_notop.h5) -> our backbone."""
    reference = keras.applications.ConvNeXtTiny(include_top=False, pooling="avg", weights=None,
                                                input_shape=(None, None, 3), include_preprocessing=False)
    rng = np.random.default_rng(3)
    for w in reference.weights:
        if "gamma" in w.path and "layer_scale" in w.path:
            w.assign(np.full(w.shape, 0.3, "float32"))
    path = str(tmp_path / "convnext_tiny_notop.weights.h5")
    reference.save_weights(path)
    ours = ConvNeXtBackbone("convnext_tiny")
    load_keras_convnext_weights(ours, path)
    x = rng.standard_normal((1, 32, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(reference(x)), atol=1e-4)


def test_weights_errors_name_the_problem(tmp_path):
    small = ConvNeXtBackbone("convnext_tiny", width=0.25)
    with pytest.raises(CvmError, match="backbone_width=1.0"):
        load_keras_convnext_weights(small, "imagenet")
    with pytest.raises(CvmError, match="not found"):
        load_keras_convnext_weights(ConvNeXtBackbone("convnext_tiny"), str(tmp_path / "nope.h5"))
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(CvmError, match=r"\.h5"):
        load_keras_convnext_weights(ConvNeXtBackbone("convnext_tiny"), str(tmp_path / "w.npz"))
    deeper = _keras_application_convnext((1, 2, 2, 1), DIMS)
    with pytest.raises(CvmError, match="stage_2_block_1"):
        load_keras_convnext_weights(ConvNeXtBackbone("convnext_tiny", width=16 / 96, depths=DEPTHS), deeper)
    with pytest.raises(CvmError, match="unknown ConvNeXt variant"):
        variant_config("convnext_huge")
    with pytest.raises(CvmError, match="4 positive"):
        variant_config("convnext_tiny", depths=(1, 1, 1))


def test_variants_and_imagenet_normalisation():
    assert variant_config("convnext_base") == ((3, 3, 27, 3), (128, 256, 512, 1024))
    assert variant_config("convnext_tiny", 0.25) == ((3, 3, 9, 3), (24, 48, 96, 192))
    x = np.array([[[[0.0, 127.5, 255.0]]]], np.float32)
    expected = (np.array([0.0, 0.5, 1.0]) - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(np.asarray(imagenet_normalize(x))[0, 0, 0], expected, rtol=1e-6)


def test_config_round_trip():
    layer = ConvNeXtBackbone("convnext_small", width=0.125, depths=(1, 1, 1, 1), drop_path_rate=0.1)
    clone = ConvNeXtBackbone.from_config(layer.get_config())
    assert (clone.variant, clone.dims, clone.depths, clone.drop_path_rate) == (
        "convnext_small", (12, 24, 48, 96), (1, 1, 1, 1), 0.1)

"""LiteRT export of every retrieval method's two towers, run in the ai-edge-litert interpreter against Keras."""

import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from export_cases import CASES, POLAR_SIDE, cvm, keras_descriptors, photos, tiny, trained_model_dir

Interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter  # the `export` extra

from cvm.data.images import ImageSpec  # noqa: E402
from cvm.data.polar import polar_transform  # noqa: E402
from cvm.errors import CvmError  # noqa: E402
from cvm.export import towers  # noqa: E402
from cvm.export.litert import LiteRTTower, export_litert, polar_transform_f32  # noqa: E402

# The float32 error bound of the same graph on other kernels (XNNPACK here); see cvm/export/towers.py.
TOL = towers.TOLERANCE


def interpret(path, images):
    """The bare .tflite file in the LiteRT interpreter (not cvm's wrapper)."""
    interpreter = Interpreter(model_path=str(path))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(images.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, images)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


@pytest.mark.parametrize("method", sorted(CASES))
def test_every_method_exports_to_litert_equal_to_keras(tmp_path, method):
    model, spec = tiny(method)
    info = export_litert(model, spec, str(tmp_path), polar_source_size=POLAR_SIDE, metadata={"method": method})
    saved = json.load(open(tmp_path / "export.json"))
    assert saved == json.loads(json.dumps(info, default=str)) and saved["format"] == "litert"
    for tower in ("ground", "aerial"):
        size = tuple(saved[tower]["input_size"])
        assert size == ((POLAR_SIDE, POLAR_SIDE) if tower == "aerial" and spec.aerial_polar else
                        tuple(spec.ground_size if tower == "ground" else spec.aerial_size))
        assert 0 <= saved["check"][tower]["max_abs_diff"] <= TOL
        images = photos(size, seed=7)
        got = interpret(tmp_path / f"{tower}.tflite", images)
        np.testing.assert_allclose(got, keras_descriptors(model, spec, tower, images, size), atol=TOL)
        smaller = photos((size[0] * 2 // 3 + 1, size[1] * 2 // 3 + 1), seed=8)  # resized up by the wrapper
        np.testing.assert_allclose(LiteRTTower(str(tmp_path / f"{tower}.tflite")).embed(smaller, batch_size=2),
                                   keras_descriptors(model, spec, tower, smaller, size), atol=TOL)
    assert set(info["converter"].values()) <= {"keras.Model.export(format='litert')",
                                               "tf.lite.TFLiteConverter.from_concrete_functions"}


@pytest.mark.parametrize("stretch", [False, True])
def test_float32_polar_graph_rounds_as_the_numpy_transform(stretch):
    # The exact weight split decides the structural ties (dyadic weights give exact x.5 values) as float64
    # does; what is left is where float64 itself absorbs a perturbation (~5e-5 of values measured, one
    # level). A plain float32 blend is 26 values off here (0.3 %), wrong coordinates thousands.
    rng = np.random.default_rng(2)
    for side in (60, 97):
        aerials = rng.integers(0, 256, (2, side, side, 3), dtype=np.uint8)
        got = polar_transform_f32(tf.constant(aerials), 16, 88, stretch).numpy()
        expected = np.stack([polar_transform(a, 16, 88, stretch=stretch) for a in aerials])
        assert np.abs(got - expected).max() <= 1 and np.count_nonzero(got != expected) <= 2


def test_unstretched_polar_export_checks_network_and_polar_map(tmp_path):
    model, spec = tiny("safa")
    spec = dataclasses.replace(spec, polar_stretch=False)
    check = export_litert(model, spec, str(tmp_path), polar_source_size=POLAR_SIDE)["check"]["aerial"]
    assert check["max_abs_diff"] <= TOL and check["polar_max_level_diff"] <= 1
    assert check["polar_values_differing"] <= 1e-3 * check["polar_values"]
    assert check["polar_values"] == 2 * 16 * 88 * 3 and "max_abs_diff_on_numpy_polar" in check


class Bessel(keras.Model):
    """A toy tower using BesselI0e, which has no builtin TFLite kernel."""

    descriptor_dim = 3

    def __init__(self):
        super().__init__()
        self.built = True

    def _encode(self, x, training=False):
        return tf.reduce_mean(tf.math.bessel_i0e(x / 100.0), axis=[1, 2])

    encode_ground = encode_aerial = _encode


def test_an_op_without_a_builtin_kernel_is_named(tmp_path):
    with pytest.raises(CvmError, match=r"toy: the ground tower cannot be exported to LiteRT: the TensorFlow op\(s\) "
                                       r"BesselI0e have no builtin TFLite kernel"):
        export_litert(Bessel(), ImageSpec((16, 32), (16, 16)), str(tmp_path), metadata={"method": "toy"})


def test_cli_exports_a_trained_model_dir_to_litert(tmp_path, tiny_run):
    out = cvm("export", f"--model_dir={tiny_run}", f"--out={tmp_path / 'lite'}", "--format=litert")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "as litert" in out.stdout and "max abs difference from the Keras model" in out.stdout
    info = json.load(open(tmp_path / "lite" / "export.json"))
    assert info["method"] == "cvm_net_i" and info["ground"]["file"] == "ground.tflite"
    assert all(info["check"][t]["max_abs_diff"] <= TOL for t in ("ground", "aerial"))
    from cvm.training.restore import load_encoder

    encoder, config, _ = load_encoder(str(tiny_run))
    grounds = photos((48, 190), seed=10)  # resized to 32 x 128 by the wrapper
    np.testing.assert_allclose(LiteRTTower(str(tmp_path / "lite"), "ground").embed(grounds),
                               keras_descriptors(encoder, config.image_spec(), "ground", grounds, (32, 128)),
                               atol=TOL)


@pytest.mark.slow  # ~60 s: trains a polar SAFA run and exports a 256 px polar aerial tower
def test_cli_exports_a_trained_polar_model_dir_to_litert(tmp_path):
    model_dir = trained_model_dir(tmp_path / "run", method="safa", aerial_polar=True, ground_size=(16, 88),
                                  aerial_size=(16, 88), spatial_maps=2, output_dim=None, clusters=None)
    out = cvm("export", f"--model_dir={model_dir}", f"--out={tmp_path / 'lite'}", "--format=litert")
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.load(open(tmp_path / "lite" / "export.json"))
    # The synthetic world renders 256 px tiles for polar models: the aerial tower takes them whole.
    assert info["aerial"]["input_size"] == [256, 256] and info["aerial"]["polar_size"] == [16, 88]
    assert all(info["check"][t]["max_abs_diff"] <= TOL for t in ("ground", "aerial"))
    from cvm.training.restore import load_encoder

    encoder, config, _ = load_encoder(str(model_dir))
    aerials = photos((256, 256), n=2, seed=9)
    np.testing.assert_allclose(LiteRTTower(str(tmp_path / "lite"), "aerial").embed(aerials),
                               keras_descriptors(encoder, config.image_spec(), "aerial", aerials, (256, 256)),
                               atol=TOL)
    bad = cvm("export", f"--model_dir={model_dir}", f"--out={tmp_path / 'x'}", "--polar_source_size=0",
              "--format=litert")
    assert bad.returncode != 0 and "--polar_source_size must be a positive side" in bad.stderr

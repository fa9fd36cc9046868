"""ONNX export of every retrieval method's two towers, run in ONNX Runtime against the Keras model."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from export_cases import CASES, POLAR_SIDE, cvm, keras_descriptors, photos, tiny

onnxruntime = pytest.importorskip("onnxruntime")  # the `export` extra
pytest.importorskip("tf2onnx")

from cvm.data.images import ImageSpec  # noqa: E402
from cvm.errors import CvmError  # noqa: E402
from cvm.export import towers  # noqa: E402
from cvm.export.onnx import OnnxTower, export_onnx  # noqa: E402
from cvm.models import build_model  # noqa: E402

# towers.TOLERANCE (1e-4 on unit descriptors) is the float32 error bound of the same graph on other kernels
# (sqrt(K) * 2^-24 per K-term dot product, ~16 layers); see cvm/export/towers.py.
TOL = towers.TOLERANCE


@pytest.mark.parametrize("method", sorted(CASES))
def test_every_method_exports_to_onnx_equal_to_keras(tmp_path, method):
    model, spec = tiny(method)
    info = export_onnx(model, spec, str(tmp_path), polar_source_size=POLAR_SIDE, metadata={"method": method})
    saved = json.load(open(tmp_path / "export.json"))
    assert saved["format"] == "onnx" and saved["method"] == method
    for tower in ("ground", "aerial"):
        size = tuple(saved[tower]["input_size"])
        if tower == "aerial" and spec.aerial_polar:
            assert size == (POLAR_SIDE, POLAR_SIDE) and saved[tower]["polar"]  # the square aerial goes in
        else:
            assert size == tuple(spec.ground_size if tower == "ground" else spec.aerial_size)
        assert 0 <= saved["check"][tower]["max_abs_diff"] <= TOL
        # The bare ONNX file in ONNX Runtime, at its input size, against the Keras model.
        session = onnxruntime.InferenceSession(str(tmp_path / f"{tower}.onnx"), providers=["CPUExecutionProvider"])
        images = photos(size, seed=3)
        got = session.run(None, {session.get_inputs()[0].name: images})[0]
        expected = keras_descriptors(model, spec, tower, images, size)
        assert got.shape == (3, model.descriptor_dim) == expected.shape
        np.testing.assert_allclose(got, expected, atol=TOL)
        # The wrapper on larger images (a non-integer factor) resizes them as the training pipeline does.
        bigger = photos((size[0] * 3 // 2 + 1, size[1] * 3 // 2 + 1), seed=4)
        np.testing.assert_allclose(OnnxTower(str(tmp_path), tower).embed(bigger),
                                   keras_descriptors(model, spec, tower, bigger, size), atol=TOL)
    # Keras 3's own export, or tf2onnx where Keras cannot track the model (regmi's int-keyed layer dicts).
    assert set(info["converter"].values()) <= {"keras.Model.export(format='onnx')", "tf2onnx.convert.from_function"}


def test_tower_wrapper_rows_crop_bgr_and_file_paths(tmp_path):
    model, spec = tiny("cvm_net_i")
    info = export_onnx(model, spec, str(tmp_path), input_order="bgr", ground_rows=(0.25, 0.75))
    assert info["converter"]["ground"] == "keras.Model.export(format='onnx')"  # Keras 3's own export did it
    tower = OnnxTower(str(tmp_path / "ground.onnx"))  # the file alone names its tower
    assert tower.tower == "ground" and tower.input_size == (32, 128) and tower.descriptor_dim == 8
    full = photos((64 + 13, 200), seed=5)  # a CVACT-like full panorama: central rows kept, then resized
    # The client sends BGR: the reference reverses it back to the RGB the helper expects.
    expected = keras_descriptors(model, spec, "ground", full[..., ::-1], (32, 128), rows=(0.25, 0.75))
    np.testing.assert_allclose(tower.embed(list(full)), expected, atol=TOL)
    assert tower.embed(np.zeros((0, 32, 128, 3), np.uint8)).shape == (0, 8)
    with pytest.raises(CvmError, match="say which tower"):
        OnnxTower(str(tmp_path))
    with pytest.raises(CvmError, match="is the ground tower, not the aerial"):
        OnnxTower(str(tmp_path / "ground.onnx"), "aerial")
    with pytest.raises(CvmError, match="expected uint8"):
        tower.embed(np.zeros((1, 32, 128, 3), np.float32))
    with pytest.raises(CvmError, match="not found"):
        OnnxTower(str(tmp_path / "nothing.onnx"))


def test_parity_check_fails_on_a_wrong_graph(tmp_path):
    # A graph exported for BGR clients checked as if it took RGB: the check must catch the swap.
    model, spec = tiny("cvm_net_i")
    export_onnx(model, spec, str(tmp_path), input_order="bgr")
    layout = towers.tower_layout(spec)
    with pytest.raises(CvmError, match="differs from the Keras model"):
        towers.parity(OnnxTower(str(tmp_path), "aerial").run, model, spec, "aerial", "rgb", layout, TOL, "test")


class OddOps(keras.Model):
    """A toy model whose towers use one TF op: the area resize (which tf2onnx converts, wrongly, to a nearest
    resize) or BesselI0e (which tf2onnx cannot convert)."""

    descriptor_dim = 3

    def __init__(self, op):
        super().__init__()
        self.op = op
        self.scale = self.add_weight(shape=(), initializer="ones")
        self.built = True

    def _encode(self, x, training=False):
        if self.op == "area":
            x = tf.image.resize(x, (5, 7), method="area")
        else:
            x = tf.math.bessel_i0e(x / 100.0)
        return tf.reduce_mean(x, axis=[1, 2]) * self.scale

    encode_ground = encode_aerial = _encode


def test_an_unsupported_op_is_named_and_a_wrong_conversion_is_caught(tmp_path):
    spec = ImageSpec((16, 32), (16, 16))
    with pytest.raises(CvmError, match=r"toy: the ground tower cannot be exported to ONNX: .* op\(s\) BesselI0e"):
        export_onnx(OddOps("bessel"), spec, str(tmp_path / "bessel"), metadata={"method": "toy"})
    # tf2onnx maps ResizeArea to ONNX Resize(nearest): a file that runs but is wrong, which the check refuses.
    with pytest.raises(CvmError, match="toy onnx: the exported ground tower differs from the Keras model"):
        export_onnx(OddOps("area"), spec, str(tmp_path / "area"), metadata={"method": "toy"})
    assert not os.path.exists(tmp_path / "area" / "export.json")  # not loadable as a checked export


def test_regmi_fusion_takes_descriptors_and_is_refused(tmp_path):
    with pytest.raises(CvmError, match="takes descriptors, not images"):
        export_onnx(build_model("regmi_fusion", input_dim=6, output_dim=4), ImageSpec((32, 128), (64, 64)),
                    str(tmp_path))


def test_cli_exports_a_trained_model_dir_to_onnx(tmp_path, tiny_run):
    model_dir = tiny_run
    out = cvm("export", f"--model_dir={model_dir}", f"--out={tmp_path / 'onnx'}", "--format=onnx")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "as onnx" in out.stdout and "max abs difference from the Keras model" in out.stdout
    info = json.load(open(tmp_path / "onnx" / "export.json"))
    assert info["method"] == "cvm_net_i" and info["descriptor_dim"] == 8 and "best" in info["checkpoint"]
    assert all(info["check"][t]["max_abs_diff"] <= TOL for t in ("ground", "aerial"))
    from cvm.training.restore import load_encoder

    encoder, config, _ = load_encoder(str(model_dir))
    spec = config.image_spec()
    images = photos((64, 64), seed=6)
    np.testing.assert_allclose(OnnxTower(str(tmp_path / "onnx"), "aerial").embed(images),
                               keras_descriptors(encoder, spec, "aerial", images, (64, 64)), atol=TOL)


def test_cli_bad_inputs_are_one_line_errors(tmp_path):
    unknown = cvm("export", f"--model_dir={tmp_path}", f"--out={tmp_path / 'x'}", "--format=tfjs")
    assert unknown.returncode != 0 and "unknown --format 'tfjs'; valid: savedmodel, onnx, litert" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    missing = cvm("export", f"--model_dir={tmp_path / 'nothing'}", f"--out={tmp_path / 'x'}", "--format=onnx")
    assert missing.returncode != 0 and "--model_dir" in missing.stderr and "not found" in missing.stderr
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "x")

"""Sample4Geo's PyTorch checkpoints -> Keras: against timm itself (random weights), and the strictness of the load."""

import math
import os

import numpy as np
import pytest

from tests.timm_import import import_timm_convnext, randomised_timm_convnext

torch = pytest.importorskip("torch")
timm_convnext = import_timm_convnext()

import keras  # noqa: E402

from cvm.errors import CvmError  # noqa: E402
from cvm.export.torch_sample4geo import convert_torch_checkpoint, infer_backbone_options  # noqa: E402

# A tiny timm ConvNeXt of the convnext_base layout (Linear MLP, conv_mlp=False): widths 16/96 of Tiny's,
# weights drawn (randomised_timm_convnext) so that every layer shows in the descriptors.
DEPTHS, DIMS = (1, 1, 2, 1), (16, 32, 64, 128)


class TimmModel(torch.nn.Module):
    """The shape of Sample4Geo's `TimmModel` (keys model.* and logit_scale), written here (never imported)."""

    def __init__(self, seed=0):
        super().__init__()
        self.model = randomised_timm_convnext(DEPTHS, DIMS, seed)
        self.logit_scale = torch.nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

    def forward(self, images):
        return torch.nn.functional.normalize(self.model(images), dim=-1)


def randomised_model(seed=0):
    model = TimmModel(seed).eval()
    with torch.no_grad():
        model.logit_scale.fill_(3.1)
    return model


def save_state(model, path, prefix=""):
    torch.save({prefix + k: v for k, v in model.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def timm_model():
    return randomised_model()


def images(seed, n, h, w):
    return np.random.default_rng(seed).standard_normal((n, h, w, 3)).astype(np.float32)


def test_converted_model_gives_timms_descriptors(timm_model, tmp_path):
    path = save_state(timm_model, str(tmp_path / "weights_e40_98.6830.pth"), prefix="module.")  # DataParallel
    out = str(tmp_path / "s4g.keras")
    model = convert_torch_checkpoint(path, "sample4geo", out)
    assert model.descriptor_dim == 128 and model.backbone_depths == DEPTHS
    assert float(model.logit_scale.numpy()) == pytest.approx(3.1)
    ground, aerial = images(1, 2, 70, 192), images(2, 2, 64, 64)  # 70: odd maps (17, 8, 4 rows) as 140x768
    with torch.no_grad():
        expected_g = timm_model(torch.from_numpy(ground).permute(0, 3, 1, 2)).numpy()
        expected_a = timm_model(torch.from_numpy(aerial).permute(0, 3, 1, 2)).numpy()
    reloaded = keras.saving.load_model(out)
    for m in (model, reloaded):
        got = m({"ground": ground, "aerial": aerial})
        # float32 noise: ~25 layers, each a sum of <= 7*7 or 4C = 512 products (relative error ~1e-6 each, the
        # orders of summation differ between oneDNN and PyTorch), LayerNorms keep the scale O(1); unit
        # descriptors of 128 components ~0.09 each: a few 1e-7. Measured max ~1e-7 (AMD EPYC, oneDNN on);
        # 1e-5 leaves two orders of magnitude for other CPUs, and a tanh GELU (4e-5 here) still fails.
        np.testing.assert_allclose(np.asarray(got["ground"]), expected_g, atol=1e-5)
        np.testing.assert_allclose(np.asarray(got["aerial"]), expected_a, atol=1e-5)
    # The descriptors differ between images, so the comparison has teeth.
    assert np.abs(expected_g[0] - expected_g[1]).max() > 0.05


def test_options_are_read_from_the_shapes():
    def fake(depths, dims):
        state = {"model.stem.0.weight": np.zeros((dims[0], 3, 4, 4))}
        for i, (d, c) in enumerate(zip(depths, dims)):
            for j in range(d):
                state[f"model.stages.{i}.blocks.{j}.conv_dw.weight"] = np.zeros((c, 1, 7, 7))
        return state

    assert infer_backbone_options(fake((3, 3, 27, 3), (128, 256, 512, 1024))) == {
        "backbone": "convnext_base", "backbone_width": 1.0, "backbone_depths": None}
    assert infer_backbone_options(fake((3, 3, 27, 3), (96, 192, 384, 768)))["backbone"] == "convnext_small"
    assert infer_backbone_options(fake((3, 3, 9, 3), (96, 192, 384, 768)))["backbone"] == "convnext_tiny"
    with pytest.raises(CvmError, match="not a multiple"):
        infer_backbone_options(fake((1, 1, 1, 1), (16, 40, 64, 128)))


def _write(tmp_path, state, name):
    path = str(tmp_path / name)
    torch.save(state, path)
    return path


def test_missing_extra_and_misshaped_keys_are_named(timm_model, tmp_path):
    good = timm_model.state_dict()
    missing = {k: v for k, v in good.items() if k != "model.stages.2.blocks.1.gamma"}
    with pytest.raises(CvmError, match=r"missing keys: model\.stages\.2\.blocks\.1\.gamma"):
        convert_torch_checkpoint(_write(tmp_path, missing, "missing.pth"))
    extra = {**good, "model.head.fc.weight": torch.zeros(10, 128)}
    with pytest.raises(CvmError, match=r"unexpected keys: model\.head\.fc\.weight"):
        convert_torch_checkpoint(_write(tmp_path, extra, "extra.pth"))
    wrong = {**good, "model.stages.1.blocks.0.mlp.fc2.weight": torch.zeros(32, 64)}
    with pytest.raises(CvmError, match=r"wrong shapes: model\.stages\.1\.blocks\.0\.mlp\.fc2\.weight \(32, 64\) "
                                       r"\(expected \(32, 128\)\)"):
        convert_torch_checkpoint(_write(tmp_path, wrong, "wrong.pth"))
    no_scale = {k: v for k, v in good.items() if k != "logit_scale"}
    with pytest.raises(CvmError, match="missing keys: logit_scale"):
        convert_torch_checkpoint(_write(tmp_path, no_scale, "noscale.pth"))


def test_files_that_are_not_state_dicts_are_refused(tmp_path):
    with pytest.raises(CvmError, match="not found"):
        convert_torch_checkpoint(str(tmp_path / "absent.pth"))

    class Payload:  # an object pickle: weights_only=True must refuse to run it
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"x": Payload()}, str(tmp_path / "code.pth"))
    with pytest.raises(CvmError, match="weights_only=True"):
        convert_torch_checkpoint(str(tmp_path / "code.pth"))
    torch.save({"epoch": torch.tensor(3), "state_dict": {"a": torch.zeros(1)}}, str(tmp_path / "nested.pth"))
    with pytest.raises(CvmError, match="not a state_dict"):
        convert_torch_checkpoint(str(tmp_path / "nested.pth"))
    with pytest.raises(CvmError, match=r"\.keras"):
        convert_torch_checkpoint(str(tmp_path / "nested.pth"), out_path=str(tmp_path / "x.h5"))


def _cvm(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "cvm.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300)


@pytest.mark.slow  # ~25 s: a fresh interpreter imports TensorFlow and torch
def test_cli_convert_torch_checkpoint(timm_model, tmp_path):
    path = save_state(timm_model, str(tmp_path / "weights.pth"))
    out = str(tmp_path / "s4g.keras")
    done = _cvm("convert", "--torch_checkpoint", path, "--method", "sample4geo", "--out", out)
    assert done.returncode == 0, done.stderr
    assert "128-d" in done.stdout
    import cvm.models.sample4geo  # noqa: F401  (registers the class for the reload)

    model = keras.saving.load_model(out)
    x = images(5, 1, 64, 64)
    with torch.no_grad():
        expected = timm_model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(np.asarray(model.encode_aerial(x)), expected, atol=1e-5)  # see the first test


@pytest.mark.slow
def test_cli_convert_names_leftover_keys(timm_model, tmp_path):
    state = {**timm_model.state_dict(), "model.head.fc.bias": torch.zeros(10)}
    path = _write(tmp_path, state, "extra.pth")
    done = _cvm("convert", "--torch_checkpoint", path, "--method", "sample4geo", "--out", str(tmp_path / "x.keras"))
    assert done.returncode != 0 and "model.head.fc.bias" in done.stderr and "Traceback" not in done.stderr

"""Test-time mode of the synthesis generators: the CVPR 2018 scripts (test_fork.lua, test_seq.lua,
test_pix2pix.lua) never call netG:evaluate(), so X-Fork / X-Seq / X-Pix2pix generate with the batch's
BatchNorm statistics and dropout on by default; --inference_mode switches to moving statistics; the ICCV19
forks keep inference mode. The batch-1 X-Fork bottleneck: its 1x1 BatchNorm's moving variance decays as
0.9^steps, and cvm refuses inference mode once it has collapsed."""

import os
import subprocess
import sys

import cv2
import keras
import numpy as np
import pytest

from cvm.errors import CvmError
from cvm.models.synthesis import build_synthesis_networks
from cvm.models.synthesis.generation import (COLLAPSED_VARIANCE, Generation, batch_norms, collapsed_batch_norms,
                                             preserved_state)
from cvm.training.synthesis_config import SynthesisConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# 32x32 X-Fork: 5 encoder convs down to the 1x1 bottleneck (enc5_bn), ngf 4.
TINY = dict(input_size=(32, 32), target_size=(32, 32), ngf=4, ndf=4, n_layers=2)
TINY_RUN = dict(method="xfork", preset="borji64", input_size=(32, 32), target_size=(32, 32), load_size=(36, 36),
                crop_size=(32, 32), ngf=4, ndf=4, d_layers=2, dropout=0.0, synthetic_pairs=12, batch_size=2,
                epochs=1, steps_per_epoch=2, image_every_steps=0, eval_batch_size=2)


def inputs(n, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 32, 32, 3)).astype(np.float32)


def with_moving_statistics(generators, seed=1):
    """Moving statistics far from any batch's, so the two modes cannot agree by accident."""
    rng = np.random.default_rng(seed)
    for model in generators.values():
        for v in model.non_trainable_variables:
            if v.path.endswith("moving_mean"):
                v.assign(rng.normal(0, 0.5, v.shape).astype(np.float32))
            elif v.path.endswith("moving_variance"):
                v.assign(rng.uniform(0.5, 2.0, v.shape).astype(np.float32))
    return generators


def differ(a, b):
    """Far apart relative to their size (tiny untrained generators output values near 0)."""
    a, b = np.asarray(a), np.asarray(b)
    return np.abs(a - b).mean() > 0.5 * np.abs(b).mean()


def state(models):
    return [keras.ops.convert_to_numpy(v).copy() for m in models for v in m.non_trainable_variables]


def test_the_cvpr18_methods_default_to_batch_statistics_and_the_iccv19_forks_to_inference_mode():
    for method in ("xfork", "xseq", "xpix2pix"):
        assert SynthesisConfig(method=method).resolved().inference_mode is False
    for method in ("xfork_pano2aerial", "xfork_aerial2pano"):
        assert SynthesisConfig(method=method).resolved().inference_mode is True
    assert SynthesisConfig(method="xfork", inference_mode=True).resolved().inference_mode is True


@pytest.mark.parametrize("method", ["xfork", "xseq"])
def test_default_generation_uses_batch_statistics_and_the_flag_switches_to_moving_ones(method):
    generators = with_moving_statistics(build_synthesis_networks(method, dropout=0.0, **TINY)["generators"])
    first = generators.get("g") or generators["g1"]
    x = inputs(4)
    before = state(generators.values())
    out = Generation(generators, inference_mode=False, batch_size=4)(x)
    after = state(generators.values())
    assert all(np.array_equal(a, b) for a, b in zip(before, after))  # moving statistics untouched
    inference = Generation(generators, inference_mode=True, batch_size=4)(x)
    np.testing.assert_array_equal(inference["image"], first(x, training=False)["image"])
    assert differ(out["image"], inference["image"])
    with preserved_state(generators.values()):
        trained = first(x, training=True)
        np.testing.assert_allclose(out["image"], trained["image"], atol=1e-6)
        if method == "xseq":  # G2 on G1's image, both in the same mode
            seg = generators["g2"](trained["image"], training=True)["segmentation"]
            np.testing.assert_allclose(out["segmentation"], seg, atol=1e-6)
            assert differ(out["segmentation"], inference["segmentation"])


def test_dropout_is_on_in_batch_statistics_mode_only():
    generators = with_moving_statistics(build_synthesis_networks("xfork", dropout=0.5, **TINY)["generators"])
    x = inputs(4)
    batch = Generation(generators, inference_mode=False, batch_size=4)
    a, b = batch(x)["image"], batch(x)["image"]
    assert differ(a, b)  # a fresh dropout draw per call
    inference = Generation(generators, inference_mode=True)
    np.testing.assert_array_equal(inference(x)["image"], inference(x)["image"])


def test_a_short_last_batch_is_filled_with_samples_of_earlier_batches():
    generators = with_moving_statistics(build_synthesis_networks("xfork", dropout=0.0, **TINY)["generators"])
    g = generators["g"]
    x = inputs(5)
    with Generation(generators, inference_mode=False, batch_size=4) as generation:
        generation(x[:4])
        last = generation(x[4:])["image"]
        assert last.shape[0] == 1
        expected = g(np.concatenate([x[4:], x[:3]]), training=True)["image"][:1]
    np.testing.assert_allclose(last, expected, atol=1e-6)


def test_batch_one_bottleneck_moving_variance_decays_and_cvm_refuses_inference_mode_on_it():
    """X-Fork trains with batches of one (train_fork.lua): the 1x1 bottleneck BN sees one value per channel."""
    from cvm.training.gan import GANSteps

    networks = build_synthesis_networks("xfork", dropout=0.5, **TINY)
    g = networks["generators"]["g"]
    bottleneck = g.encoder[-1][1]
    assert bottleneck.name == "enc5_bn"
    initial = [keras.ops.convert_to_numpy(v).copy() for v in g.trainable_variables]
    steps = GANSteps("xfork", networks)
    rng = np.random.default_rng(0)

    def batch():
        x = rng.uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
        return {"input": x, "target": -x, "target_seg": x[..., ::-1].copy()}

    for _ in range(30):
        steps.step(batch())
    # Batch variance 0 at every step: moving variance = 0.9^steps (Keras momentum 0.9 = Torch's 0.1).
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bottleneck.moving_variance), 0.9 ** 30, rtol=1e-4)
    # That BN outputs its beta, which starts at 0 and gets no gradient through the next ReLU at 0 (Torch's
    # nn.ReLU neither): every decoder layer's input is then exactly 0, so each decoder BN sees a constant
    # too, and no generator variable gets a gradient: with batches of one the X-Fork generator never
    # changes (dropout on or off). The encoder BNs above the bottleneck keep their data's variance.
    decaying = []
    for bn in batch_norms(g):
        excess = keras.ops.convert_to_numpy(bn.moving_variance) - 0.9 ** 30
        if np.abs(excess).max() < 1e-6:
            decaying.append(bn.name)
        else:
            assert excess.min() > 1e-6, bn.name
    assert decaying == ["enc5_bn", "dec1_bn", "dec2_bn", "dec3_bn", "image_bn1", "segmentation_bn1"]
    for variable, before in zip(g.trainable_variables, initial):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), before, err_msg=variable.path)
    assert not collapsed_batch_norms({"g": g})
    for _ in range(130):  # 160 steps: 0.9^160 = 4.9e-8 < COLLAPSED_VARIANCE
        steps.step(batch())
    assert 0.9 ** 160 < COLLAPSED_VARIANCE
    for variable, before in zip(g.trainable_variables, initial):  # still the initial generator
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), before, err_msg=variable.path)
    assert [name for _, name, _ in collapsed_batch_norms({"g": g})] == decaying
    with pytest.raises(CvmError, match=r"g/enc5_bn has a moving variance below.*sqrt\(1e-05\)"):
        Generation({"g": g}, inference_mode=True)
    with pytest.raises(CvmError, match=r"--batch_size 1 with batch statistics.*enc5_bn"):
        Generation({"g": g}, inference_mode=False, batch_size=1)
    Generation({"g": g}, inference_mode=False, batch_size=2)  # the original's mode is allowed
    # A run is refused the combination up front.
    tiny = {k: v for k, v in TINY_RUN.items() if k != "batch_size"}
    with pytest.raises(CvmError, match=r"--inference_mode with --batch_size 1.*1x1 bottleneck"):
        SynthesisConfig(inference_mode=True, batch_size=1, **tiny).validate()
    with pytest.raises(CvmError, match=r"--eval_batch_size 1 with batch statistics"):
        SynthesisConfig(batch_size=1, val_split="val", **{**tiny, "eval_batch_size": 1}).validate()
    SynthesisConfig(inference_mode=True, batch_size=2, **tiny).validate()
    SynthesisConfig(method="xfork_pano2aerial", inference_mode=True, batch_size=1).validate()  # 2x8 bottleneck


def test_a_batch_one_run_with_a_1x1_bottleneck_says_its_generator_cannot_learn(tmp_path, capsys):
    from cvm.training.gan import SynthesisRun

    SynthesisRun(SynthesisConfig(model_dir=str(tmp_path / "one"), **{**TINY_RUN, "batch_size": 1}))
    out = capsys.readouterr().out
    assert "warning: --batch_size 1" in out and "enc5_bn" in out and "no gradient" in out
    SynthesisRun(SynthesisConfig(model_dir=str(tmp_path / "two"), **TINY_RUN))
    assert "warning" not in capsys.readouterr().out


def test_validation_in_batch_statistics_mode_leaves_the_run_unchanged(tmp_path):
    from cvm.training.gan import SynthesisRun

    run = SynthesisRun(SynthesisConfig(model_dir=str(tmp_path / "run"), val_split="val", **TINY_RUN), progress=False)
    assert run.config.inference_mode is False
    models = list(run.steps.generators.values())
    before = state(models)
    run.validate(0)
    assert all(np.array_equal(a, b) for a, b in zip(before, state(models)))


@pytest.fixture(scope="module")
def xfork_dir(tmp_path_factory):
    from cvm.training.gan import SynthesisRun

    directory = str(tmp_path_factory.mktemp("xfork") / "run")
    # A high learning rate for 6 steps: outputs far enough from grey that the two modes differ beyond JPEG noise.
    SynthesisRun(SynthesisConfig(model_dir=directory, **{**TINY_RUN, "lr": 5e-3, "steps_per_epoch": 6}),
                 progress=False).train()
    return directory


def test_synthesize_writes_batch_statistics_images_by_default_and_moving_statistics_ones_on_request(xfork_dir,
                                                                                                    tmp_path):
    from cvm.data.synthesis import SynthesisPipeline, to_uint8_bgr
    from cvm.synthesis.inference import load_generators, synthesize
    from cvm.training.gan import load_split

    config, generators, _ = load_generators(xfork_dir)
    g = generators["g"]
    images, meta = next(iter(SynthesisPipeline(load_split(config, "val", segmaps=False), config.data_spec()).eval(8)))
    n = int(images["input"].shape[0])
    assert n >= 2
    with preserved_state([g]):
        batch_stats = to_uint8_bgr(g(images["input"], training=True)["image"].numpy()).astype(int)
    moving = to_uint8_bgr(g(images["input"], training=False)["image"].numpy()).astype(int)
    assert np.abs(batch_stats - moving).mean() > 10  # measured 14.6

    def written(out):
        return np.stack([cv2.imread(os.path.join(out, name.decode())) for name in meta["out_name"].numpy()]).astype(int)

    def as_jpeg(images):  # what cvm synthesize's cv2.imencode(".jpg") writes of them
        return np.stack([cv2.imdecode(cv2.imencode(".jpg", im.astype(np.uint8))[1], cv2.IMREAD_COLOR)
                         for im in images]).astype(int)

    default = str(tmp_path / "default")
    summary = synthesize(xfork_dir, default, split="val", batch_size=n, progress=False)
    assert summary["mode"] == "batch statistics" and summary["written"] == n
    assert np.abs(written(default) - as_jpeg(batch_stats)).mean() < 0.5
    assert np.abs(written(default) - as_jpeg(moving)).mean() > 8.0
    # --inference_mode through the CLI.
    out = tmp_path / "inference"
    done = subprocess.run([sys.executable, "-m", "cvm.cli.main", "synthesize", f"--model_dir={xfork_dir}",
                           f"--out={out}", "--split=val", f"--batch_size={n}", "--inference_mode"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "inference)" in done.stdout
    assert np.abs(written(str(out)) - as_jpeg(moving)).mean() < 0.5
    assert np.abs(written(str(out)) - as_jpeg(batch_stats)).mean() > 8.0

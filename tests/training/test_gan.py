"""GAN trainer: the generator learns conditional synthesis on synthetic-world pairs (beats a shuffled-input
control), resumption is exact (in process and after a real kill -9), the X-Seq gradient feedback acts, mixed
precision keeps float32 losses, flagfiles parse."""

import glob
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from cvm.errors import CvmError
from cvm.training import gan as gan_lib
from cvm.training.checkpoints import CheckpointManager
from cvm.training.gan import GANSteps, SynthesisRun
from cvm.training.synthesis_config import SynthesisConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# 32x128 panoramas -> 64x64 aerials, 1/8 width, 3-layer D: ~0.15 s a step on two CPU cores.
TINY_P2A = dict(method="xfork_pano2aerial", preset="pano2aerial_small", input_size=(32, 128), target_size=(64, 64),
                ngf=8, ndf=8, d_layers=3, synthetic_pairs=100, batch_size=4, image_every_steps=0)
TINY_BORJI = dict(preset="borji64", input_size=(32, 32), target_size=(32, 32), load_size=(36, 36),
                  crop_size=(32, 32), ngf=8, ndf=8, d_layers=2, synthetic_pairs=40, batch_size=4,
                  image_every_steps=0)


def _l1_real_and_shuffled(run):
    """Per-sample L1 to the targets of the training split (eval order, uncropped) of the generator's image
    (inference mode, as test_xfork_pano2aerial.lua's netG:evaluate()) from each sample's own input and from
    the input of the next sample (np.roll: a derangement; neighbouring camera positions on the same street,
    so the control sees similar scenes and is, if anything, too kind)."""
    inputs, targets = [], []
    for images, _ in run.pipeline.eval(40):
        inputs.append(images["input"].numpy())
        targets.append(images["target"].numpy())
    x, y = np.concatenate(inputs), np.concatenate(targets)
    shuffled = np.roll(np.arange(len(x)), 1)
    own = np.abs(run.steps.generate(x)["image"].numpy() - y).mean(axis=(1, 2, 3))
    other = np.abs(run.steps.generate(x[shuffled])["image"].numpy() - y).mean(axis=(1, 2, 3))
    return own, other


def test_generator_learns_conditional_synthesis(tmp_path):
    """After 100 steps the generated aerial depends on the panorama: each sample's own panorama gives a lower
    L1 to its aerial than another sample's panorama. A generator that ignores its input (or one trained on
    misaligned pairs) lowers the L1 by learning the mean aerial and passes an L1-threshold test; here its
    two L1s are equal."""
    config = SynthesisConfig(model_dir=str(tmp_path / "run"), epochs=5, val_split="val", log_every_steps=20,
                             **{**TINY_P2A, "image_every_steps": 50})
    run = SynthesisRun(config, progress=False)
    assert run.steps_per_epoch == 20  # 80 training pairs, batches of 4: 100 steps in all
    own, other = _l1_real_and_shuffled(run)
    np.testing.assert_allclose(own, other, rtol=1e-4)  # untrained: the same image whatever the input
    state = run.train()
    own, other = _l1_real_and_shuffled(run)
    gain = other - own
    # Margin: a paired comparison over the 80 training samples. Under "the output does not depend on the
    # input" the gain is 0 for every sample (exactly, for a generator ignoring its input); we ask for a mean
    # gain above 4 standard errors (one-sided p < 1e-4 even if the gains were noise) and for most samples to
    # gain. Measured (AMD EPYC): own 0.240, shuffled 0.248, gain 0.0078 = 8.2 standard errors, 80 % of the
    # samples gain.
    standard_error = gain.std(ddof=1) / np.sqrt(len(gain))
    assert gain.mean() > 4 * standard_error, (own.mean(), other.mean(), gain.mean(), standard_error)
    assert np.mean(gain > 0) > 0.6, np.mean(gain > 0)
    # The run's own bookkeeping: validation L1 went down, best/ written, TensorBoard scalars and images.
    assert state["history"][-1]["l1"] < state["history"][0]["l1"]
    assert os.path.isfile(tmp_path / "run" / "best" / "generator_g.keras")
    events = glob.glob(str(tmp_path / "run" / "tensorboard" / "train" / "events.*"))
    assert events and os.path.getsize(events[0]) > 10_000  # scalars and the image summaries


def _final_checkpoint(model_dir):
    path = CheckpointManager(os.path.join(model_dir, "checkpoints")).latest()
    with np.load(path) as data:
        return {k: data[k] for k in data.files}, CheckpointManager.read_state(path)


class _Killed(Exception):
    pass


def test_interrupted_run_resumes_to_identical_weights(tmp_path, monkeypatch):
    common = dict(epochs=2, steps_per_epoch=3, checkpoint_every_steps=2, **{**TINY_P2A, "synthetic_pairs": 40})
    SynthesisRun(SynthesisConfig(model_dir=str(tmp_path / "straight"), **common), progress=False).train()

    def kill(pid, sig):  # what --kill_after_steps does, as an exception instead of SIGKILL
        raise _Killed()

    monkeypatch.setattr(gan_lib.os, "kill", kill)
    with pytest.raises(_Killed):
        SynthesisRun(SynthesisConfig(model_dir=str(tmp_path / "killed"), kill_after_steps=5, **common),
                     progress=False).train()
    monkeypatch.undo()
    _, state = _final_checkpoint(tmp_path / "killed")
    assert (state["epoch"], state["step"], state["global_step"]) == (1, 1, 4)  # mid epoch 2
    SynthesisRun(SynthesisConfig(model_dir=str(tmp_path / "killed"), **common), progress=False).train()
    a, state_a = _final_checkpoint(tmp_path / "straight")
    b, state_b = _final_checkpoint(tmp_path / "killed")
    assert state_a["global_step"] == state_b["global_step"] == 6
    # Keys carry Keras' per-process name suffixes; their creation-order prefix identifies them.
    a = {k.split(":")[0]: v for k, v in a.items()}
    b = {k.split(":")[0]: v for k, v in b.items()}
    assert a.keys() == b.keys() and any(k.startswith("optimizer/") for k in a)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _cli_train(model_dir, *extra):
    args = [f"--{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in TINY_P2A.items()]
    cmd = [sys.executable, "-m", "cvm.cli.main", "train", f"--model_dir={model_dir}", "--epochs=2",
           "--steps_per_epoch=5", "--checkpoint_every_steps=2", *args, "--synthetic_pairs=40", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


@pytest.mark.slow
def test_a_killed_cli_run_resumes_to_the_same_weights(tmp_path):
    """kill -9 after global step 7 (mid epoch 2; last checkpoint at step 6): resume == uninterrupted."""
    straight = _cli_train(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = _cli_train(tmp_path / "killed", "--kill_after_steps=7")
    assert killed.returncode == -9
    _, state = _final_checkpoint(tmp_path / "killed")
    assert (state["epoch"], state["step"], state["global_step"]) == (1, 1, 6)
    resumed = _cli_train(tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    a, _ = _final_checkpoint(tmp_path / "straight")
    b, _ = _final_checkpoint(tmp_path / "killed")
    a = {k.split(":")[0]: v for k, v in a.items()}
    b = {k.split(":")[0]: v for k, v in b.items()}
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    flagfile = open(tmp_path / "straight" / "flags.cfg").read()
    assert "--method=xfork_pano2aerial" in flagfile and "--lambda_seg=1.0" in flagfile


def _batch(rng, size, channels=3):
    return {k: tf.constant(rng.uniform(-1, 1, (2, *size, channels if k == "input" else 3)), tf.float32)
            for k in ("input", "target", "target_seg")}


def assert_same_update(before, got, want):
    """Two float32 computations of the same SGD(1) step agree within their rounding noise.

    The update of a weight, g = dL/dw, is a sum over every output position of a conv (B*H*W = 512
    terms for the first layer here) and passes through the BN backward (a difference of means) and the
    chain D2 -> G2 -> D1 -> G1, so two orders of the same sums (oneDNN vs Eigen kernels, graph vs eager,
    another CPU) differ by a few float32 epsilons times the sum of |terms|. The error therefore scales
    with the tensor's update, not with a fixed atol: updates here reach 26 (lambda 100, SGD(1)) on
    enc1_conv while other elements of the same kernel move by 1e-3. Measured on AMD EPYC with oneDNN on
    and off (seeds 6-8): at most 2.5e-5 of the tensor's largest update, beyond the 2 ulp of storing the
    weight itself (BN gammas near 1.0 round at 1.2e-7). A wrong step is far outside 1e-3: dropping the
    X-Seq feedback gives 1.0, updating G2 through the old D2 gives 4.4.
    """
    for w0, va, vb in zip(before, got, want):
        a, b = va.numpy(), vb.numpy()
        scale = np.abs(b - w0).max()
        ulp = np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(np.float32))
        excess = np.abs(a - b) - (2 * ulp + 1e-3 * scale)
        assert excess.max() <= 0, (f"{va.path}: {int((excess > 0).sum())} of {a.size} elements differ by up to "
                                   f"{np.abs(a - b).max():.3g}; the update's scale is {scale:.3g}")


def test_xseq_feeds_g2_input_gradient_back_into_g1():
    from cvm.models.synthesis import build_synthesis_networks

    batch = _batch(np.random.default_rng(0), (32, 32))
    weights, results = None, []
    for lambda_grads in (0.0, 0.1):
        keras.utils.set_random_seed(1)
        nets = build_synthesis_networks("xseq", (32, 32), (32, 32), ngf=4, ndf=4, n_layers=2, dropout=0.0)
        steps = GANSteps("xseq", nets, lambda_grads=lambda_grads)
        steps.step = steps._seq_step  # eager: no tracing for one step
        if weights is None:
            weights = [m.get_weights() for m in steps.models.items]
        for model, w in zip(steps.models.items, weights):
            model.set_weights(w)
        losses = steps.step(batch)
        results.append(([v.numpy() for v in nets["generators"]["g1"].trainable_variables],
                         [v.numpy() for v in nets["generators"]["g2"].trainable_variables], losses))
    (g1_a, g2_a, loss_a), (g1_b, g2_b, loss_b) = results
    # G2, D1, D2 and every reported loss are identical; only G1's update sees the feedback.
    for x, y in zip(g2_a, g2_b):
        np.testing.assert_array_equal(x, y)
    assert all(float(loss_a[k]) == float(loss_b[k]) for k in loss_a)
    assert max(np.abs(x - y).max() for x, y in zip(g1_a, g1_b)) > 0


def test_fork_step_leaves_segmentation_head_untouched_by_the_discriminator():
    """With lambda_seg = 0 the segmentation head gets no gradient at all (the D judges the image only)."""
    from cvm.models.synthesis import build_synthesis_networks

    nets = build_synthesis_networks("xfork", (32, 32), (32, 32), ngf=4, ndf=4, n_layers=2)
    steps = GANSteps("xfork", nets, lambda_seg=0.0)
    steps.step = steps._fork_step  # eager: no tracing for one step
    g = nets["generators"]["g"]
    seg_vars = [v for v in g.trainable_variables if "segmentation_" in v.path]
    img_vars = [v for v in g.trainable_variables if "image_" in v.path]
    before = [v.numpy() for v in seg_vars + img_vars]
    steps.step(_batch(np.random.default_rng(2), (32, 32)))
    after = [v.numpy() for v in seg_vars + img_vars]
    n = len(seg_vars)
    assert n == 4 and all(np.array_equal(a, b) for a, b in zip(before[:n], after[:n]))
    assert all(not np.array_equal(a, b) for a, b in zip(before[n:], after[n:]))


def test_mixed_float16_step_keeps_float32_losses():
    from cvm.models.synthesis import build_synthesis_networks

    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        nets = build_synthesis_networks("xfork_pano2aerial", (32, 128), (64, 64), ngf=4, ndf=4, n_layers=3)
        steps = GANSteps("xfork_pano2aerial", nets, precision="mixed_float16")
        assert all(isinstance(o, keras.optimizers.LossScaleOptimizer) for o in steps.optimizers.values())
        out = nets["generators"]["g"](np.zeros((1, 32, 128, 3), "float32"))
        assert out["image"].dtype == tf.float32
        batch = _batch(np.random.default_rng(3), (32, 128))
        batch["target"] = tf.image.resize(batch["target"], (64, 64))
        batch["target_seg"] = tf.image.resize(batch["target_seg"], (64, 64))
        before = [v.numpy().copy() for v in nets["generators"]["g"].trainable_variables]
        losses = steps.step(batch)
        assert all(v.dtype == tf.float32 and np.isfinite(float(v)) for v in losses.values())
        moved = max(np.abs(a - v.numpy()).max() for a, v in zip(before, nets["generators"]["g"].trainable_variables))
        assert moved > 0
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_config_errors_name_the_flag():
    with pytest.raises(CvmError, match="--direction=g2a"):
        SynthesisConfig(**{**TINY_P2A, "direction": "a2g"}).validate()
    with pytest.raises(CvmError, match="d_layers"):
        SynthesisConfig(**{**TINY_P2A, "d_layers": 5}).validate()
    with pytest.raises(CvmError, match="not a synthesis method"):
        SynthesisConfig(method="cvm_net_i").validate()
    with pytest.raises(CvmError, match="strategy"):
        SynthesisConfig(**{**TINY_P2A, "strategy": "mirrored"}).validate()
    resolved = SynthesisConfig(method="xfork_aerial2pano").resolved()
    assert (resolved.lambda_l1, resolved.lambda_seg, resolved.batch_size, resolved.epochs) == (100.0, 10.0, 4, 30)
    assert SynthesisConfig(method="xfork_pano2aerial", edge_map=True).resolved().batch_size == 16


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "experiments", "x*.cfg"))))
def test_synthesis_flagfiles_parse_into_valid_configs(path):
    from cvm.flags import synthesis as synthesis_flags, train as train_flags
    from cvm.synthesis.methods import SYNTHESIS_METHODS

    def parse(flagfile):
        fv = flags.FlagValues()
        train_flags.define_flags(fv)
        synthesis_flags.define_flags(fv)
        fv(["cvm train", f"--flagfile={flagfile}"])
        return synthesis_flags.config_from_flags(fv)

    config = parse(path)
    config.validate()
    assert config.method in SYNTHESIS_METHODS
    assert os.path.basename(path).startswith(config.method), "flagfiles are <method>_<dataset>....cfg"
    assert config.dataset in ("cvusa", "dayton") and config.lr == 2e-4 and config.beta1 == 0.5
    resolved = config.resolved()
    if config.method.startswith("xfork_"):  # ICCV19: lambda1 100, lambda2 1 (pano->aerial) or 10 (aerial->pano)
        assert resolved.lambda_seg == (10.0 if "aerial2pano" in config.method else 1.0)
        assert config.data_spec().target_size == ((512, 512) if "pano2aerial" in config.method else (256, 1024))
    else:
        assert config.data_spec().input_size == (256, 256) and resolved.epochs == 35
    written = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_roundtrip_gan.cfg")
    try:
        with open(written, "w") as f:
            f.write(synthesis_flags.flagfile_text(resolved))
        assert parse(written).resolved() == resolved
    finally:
        os.remove(written)


def test_fork_step_equals_the_torch_update_order_computed_by_hand():
    """D step (BCE(real, 0.9) + BCE(fake, 0), un-halved) then G step through the *updated* D, with SGD(1):
    every weight equals a hand-written reference of train_fork.lua's closures."""
    from cvm.models.synthesis import build_synthesis_networks

    def nets():
        return build_synthesis_networks("xfork", (32, 32), (32, 32), ngf=4, ndf=4, n_layers=2, dropout=0.0)

    a, b = nets(), nets()
    for role in ("g", "d"):
        group = "generators" if role == "g" else "discriminators"
        b[group][role].set_weights(a[group][role].get_weights())
    before = {r: [v.numpy() for v in (a["generators"] | a["discriminators"])[r].variables] for r in ("g", "d")}
    batch = _batch(np.random.default_rng(5), (32, 32))
    steps = GANSteps("xfork", a, lambda_l1=100.0, lambda_seg=7.0, optimizer_factory=lambda: keras.optimizers.SGD(1.0))
    steps.step = steps._fork_step
    steps.step(batch)

    def bce(logits, t):  # sigmoid + nn.BCECriterion, written out
        p = tf.sigmoid(logits)
        return -tf.reduce_mean(t * tf.math.log(p) + (1 - t) * tf.math.log(1 - p))

    g, d = b["generators"]["g"], b["discriminators"]["d"]
    x, y, ys = batch["input"], batch["target"], batch["target_seg"]
    with tf.GradientTape() as g_tape:
        out = g(x, training=True)
        real_ab, fake_ab = tf.concat([x, y], -1), tf.concat([x, out["image"]], -1)
        with tf.GradientTape() as d_tape:
            err_d = bce(d(real_ab, training=True), 0.9) + bce(d(tf.stop_gradient(fake_ab), training=True), 0.0)
        for v, grad in zip(d.trainable_variables, d_tape.gradient(err_d, d.trainable_variables)):
            v.assign_sub(grad)
        err_g = (bce(d(fake_ab, training=True), 0.9) + 100.0 * tf.reduce_mean(tf.abs(out["image"] - y))
                 + 7.0 * tf.reduce_mean(tf.abs(out["segmentation"] - ys)))
    for v, grad in zip(g.trainable_variables, g_tape.gradient(err_g, g.trainable_variables)):
        v.assign_sub(grad)
    for role, group in (("g", "generators"), ("d", "discriminators")):
        assert_same_update(before[role], a[group][role].variables, b[group][role].variables)


def test_xseq_step_equals_train_seq_order_computed_by_hand():
    """D2, G2, D1, G1 with SGD(1); G1's gradient adds 0.1 x (G2 loss gradient w.r.t. G2's input) as a
    vector-Jacobian product, the way netG1:backward(real_A, ... + grads_seq:mul(0.1)) does."""
    from cvm.models.synthesis import build_synthesis_networks

    def nets():
        return build_synthesis_networks("xseq", (32, 32), (32, 32), ngf=4, ndf=4, n_layers=2, dropout=0.0)

    a, b = nets(), nets()
    for group in ("generators", "discriminators"):
        for role, model in a[group].items():
            b[group][role].set_weights(model.get_weights())
    before = {role: [v.numpy() for v in model.variables] for group in ("generators", "discriminators")
              for role, model in a[group].items()}
    batch = _batch(np.random.default_rng(6), (32, 32))
    steps = GANSteps("xseq", a, lambda_l1=100.0, lambda_seg=50.0, lambda_grads=0.1,
                     optimizer_factory=lambda: keras.optimizers.SGD(1.0))
    steps.step = steps._seq_step
    steps.step(batch)

    def bce(logits, t):
        p = tf.sigmoid(logits)
        return -tf.reduce_mean(t * tf.math.log(p) + (1 - t) * tf.math.log(1 - p))

    def descend(model, grads):
        for v, grad in zip(model.trainable_variables, grads):
            v.assign_sub(grad)

    g1, g2 = b["generators"]["g1"], b["generators"]["g2"]
    d1, d2 = b["discriminators"]["d1"], b["discriminators"]["d2"]
    x, y, ys = batch["input"], batch["target"], batch["target_seg"]
    with tf.GradientTape(persistent=True) as tape1:
        fake_b = g1(x, training=True)["image"]
    fb = tf.constant(fake_b.numpy())
    with tf.GradientTape() as tape2:
        tape2.watch(fb)
        fake_bs = g2(fb, training=True)["segmentation"]
    with tf.GradientTape() as t:
        err = bce(d2(tf.concat([fb, ys], -1), training=True), 0.9) + bce(
            d2(tf.concat([fb, tf.constant(fake_bs.numpy())], -1), training=True), 0.0)
    descend(d2, t.gradient(err, d2.trainable_variables))
    with tape2:
        err_g2 = (bce(d2(tf.concat([tf.stop_gradient(fb), fake_bs], -1), training=True), 0.9)
                  + 50.0 * tf.reduce_mean(tf.abs(fake_bs - ys)))
    grads = tape2.gradient(err_g2, g2.trainable_variables + [fb])
    descend(g2, grads[:-1])
    with tf.GradientTape() as t:
        err = bce(d1(tf.concat([x, y], -1), training=True), 0.9) + bce(d1(tf.concat([x, fb], -1), training=True), 0.0)
    descend(d1, t.gradient(err, d1.trainable_variables))
    with tape1:
        err_g1 = bce(d1(tf.concat([x, fake_b], -1), training=True), 0.9) + 100.0 * tf.reduce_mean(tf.abs(fake_b - y))
    direct = tape1.gradient(err_g1, g1.trainable_variables)
    feedback = tape1.gradient(fake_b, g1.trainable_variables, output_gradients=grads[-1])
    descend(g1, [u + 0.1 * w for u, w in zip(direct, feedback)])
    for group in ("generators", "discriminators"):
        for role, model in a[group].items():
            assert_same_update(before[role], model.variables, b[group][role].variables)


def test_a_model_dir_is_loaded_only_as_its_own_kind(tmp_path):
    from cvm.training.config import TrainConfig

    SynthesisConfig(method="xfork", model_dir=str(tmp_path / "gan")).save(str(tmp_path / "gan"))
    TrainConfig(model_dir=str(tmp_path / "retrieval")).save(str(tmp_path / "retrieval"))
    assert SynthesisConfig.load(str(tmp_path / "gan")).method == "xfork"
    assert TrainConfig.load(str(tmp_path / "retrieval")).method == "cvm_net_i"
    with pytest.raises(CvmError, match="cvm synthesize"):
        TrainConfig.load(str(tmp_path / "gan"))
    with pytest.raises(CvmError, match="not a synthesis GAN"):
        SynthesisConfig.load(str(tmp_path / "retrieval"))

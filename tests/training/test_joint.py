"""Joint feature learning: the three-view data (same augmentation), the joint loss, learning, the run."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from cvm.data import augment as augment_lib
from cvm.data import images
from cvm.data.pipeline import Pipeline
from cvm.errors import CvmError
from cvm.losses import WeightedSoftMarginTripletLoss
from cvm.models import build_model
from cvm.training.joint import JointTrainer, SynthesizedViewPipeline
from cvm.training.optimizers import FusedAdam

SPEC = images.ImageSpec(ground_size=(32, 128), aerial_size=(64, 64))
SMALL = dict(backbone_width=0.0625, output_dim=16, ground_size=(32, 128), aerial_size=(64, 64), keep_prob=1.0,
             init="he")


def copy_aerials(split, folder):
    os.makedirs(folder, exist_ok=True)
    for pair in split:
        shutil.copy(pair.aerial_path, os.path.join(folder, os.path.basename(pair.aerial_path)))
    return folder


def batches(ds):
    return [({k: v.numpy() for k, v in f.items()}, {k: v.numpy() for k, v in m.items()}) for f, m in ds]


def test_synthesized_view_gets_the_real_aerials_augmentation(toy_split, tmp_path):
    folder = copy_aerials(toy_split, str(tmp_path / "synth"))
    spec = augment_lib.CVM_NET
    three = SynthesizedViewPipeline(toy_split, SPEC, folder, spec, seed=5)
    two = Pipeline(toy_split, SPEC, spec, seed=5)
    got = batches(three.train(4, epochs=2))
    want = batches(two.train(4, epochs=2))
    assert len(got) == len(want) == 6
    zoomed = 0
    for (f3, m3), (f2, m2) in zip(got, want):
        np.testing.assert_array_equal(m3["index"], m2["index"])
        np.testing.assert_array_equal(f3["ground"], f2["ground"])  # the real pair is untouched
        np.testing.assert_array_equal(f3["aerial"], f2["aerial"])
        # A synthesized image identical to the real one comes out identical: same zoom, same rotation.
        np.testing.assert_array_equal(f3["synthesized"], f3["aerial"])
    for epoch in range(2):
        for index in range(len(toy_split)):
            fraction, _ = three.draws(index, epoch, True, 96)
            zoomed += fraction is not None
    assert zoomed > 0  # the check above covered zoom-crops

    # The original's behaviour: rotation only, so exactly the zoomed samples differ.
    original = SynthesizedViewPipeline(toy_split, SPEC, folder, spec, seed=5, synthesized_zoom=False)
    for features, meta in batches(original.train(4, epochs=1)):
        for row, index in enumerate(meta["index"]):
            fraction, k = original.draws(int(index), 0, True, 96)
            same = np.array_equal(features["synthesized"][row], features["aerial"][row])
            assert same == (fraction is None), (index, fraction, k)


def test_missing_synthesized_image_skips_the_pair(toy_split, tmp_path):
    folder = copy_aerials(toy_split, str(tmp_path / "synth"))
    os.remove(os.path.join(folder, os.path.basename(toy_split[3].aerial_path)))
    pipeline = SynthesizedViewPipeline(toy_split, SPEC, folder, None, normalize=False)
    got = batches(pipeline.eval(5))
    indices = np.concatenate([m["index"] for _, m in got])
    assert list(indices) == [i for i in range(13) if i != 3]
    assert [f for f, _ in pipeline.faults.items()] == [os.path.join(folder, os.path.basename(toy_split[3].aerial_path))]
    with pytest.raises(CvmError, match="not found"):
        SynthesizedViewPipeline(toy_split, SPEC, str(tmp_path / "nowhere"))
    with pytest.raises(CvmError, match="cvm_net"):
        SynthesizedViewPipeline(toy_split, SPEC, folder, augment_lib.JOINT)


def numpy_triplet(ground, aerial, alpha=10.0):
    dist = 2 - 2 * aerial @ ground.T
    pos = np.diag(dist)
    b = len(dist)
    g2a = np.log1p(np.exp(alpha * (pos[None, :] - dist))).sum() / (b * (b - 1))
    a2g = np.log1p(np.exp(alpha * (pos[:, None] - dist))).sum() / (b * (b - 1))
    return (g2a + a2g) / 2


def test_joint_loss_is_the_weighted_mean_of_both_terms():
    rng = np.random.default_rng(0)
    unit = [rng.normal(size=(6, 8)) for _ in range(3)]
    ground, aerial, synthesized = (u / np.linalg.norm(u, axis=1, keepdims=True) for u in unit)
    model = build_model("regmi_joint", **SMALL)
    trainer = JointTrainer(model, WeightedSoftMarginTripletLoss(alpha=10.0))
    descriptors = {k: tf.constant(v, tf.float32) for k, v in
                   (("ground", ground), ("aerial", aerial), ("synthesized", synthesized))}
    got = float(trainer.global_loss(descriptors, {}))
    want = (10 * numpy_triplet(ground, aerial) + numpy_triplet(synthesized, aerial)) / 11
    assert got == pytest.approx(want, rel=1e-5)
    two_view = float(trainer.global_loss({k: descriptors[k] for k in ("ground", "aerial")}, {}))
    assert two_view == pytest.approx(numpy_triplet(ground, aerial), rel=1e-5)
    with pytest.raises(CvmError, match="weights"):
        JointTrainer(model, WeightedSoftMarginTripletLoss(), ground_weight=0, synthesized_weight=0)


def test_joint_training_step_learns_a_batch():
    rng = np.random.default_rng(1)
    features = {"ground": rng.uniform(-50, 50, (8, 32, 128, 3)).astype("float32"),
                "aerial": rng.uniform(-50, 50, (8, 64, 64, 3)).astype("float32")}
    features["synthesized"] = features["aerial"] + rng.normal(0, 20, (8, 64, 64, 3)).astype("float32")
    model = build_model("regmi_joint", **SMALL)
    trainer = JointTrainer(model, WeightedSoftMarginTripletLoss(alpha=10.0))
    trainer.compile(optimizer=FusedAdam(1e-3), jit_compile=False)
    step = tf.function(trainer.train_step)
    losses = [float(step((features, {}))["loss"]) for _ in range(25)]
    assert losses[-1] < 0.5 * losses[0], losses
    out = model(features)
    # After fitting the batch every ground finds its own aerial, every synthesized aerial its real one.
    for query in ("ground", "synthesized"):
        scores = np.asarray(out[query]) @ np.asarray(out["aerial"]).T
        assert (scores.argmax(axis=1) == np.arange(8)).mean() >= 0.75, query

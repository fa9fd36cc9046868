"""Feature fusion: descriptor dumps, the descriptor pipeline, selection, and fusion learning on descriptors."""

import os
import shutil

import numpy as np
import pytest

from cvm.data import holdout, images
from cvm.data.records import Pair, Split
from cvm.errors import CvmError
from cvm.evaluation import evaluate
from cvm.models import build_model
from cvm.training.config import TrainConfig
from cvm.training.fusion import (DescriptorPipeline, FusionRun, dump_descriptors, holdout_rows, load_dump,
                                 selection_score, write_dump)
from cvm.training.joint import SynthesizedViewPipeline


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_dump_holds_the_joint_models_descriptors(toy_split, tmp_path):
    folder = str(tmp_path / "synth")
    os.makedirs(folder)
    for pair in toy_split:
        shutil.copy(pair.ground_path, os.path.join(folder, os.path.basename(pair.aerial_path)))  # any image
    spec = images.ImageSpec(ground_size=(32, 128), aerial_size=(64, 64))
    model = build_model("regmi_joint", backbone_width=0.0625, output_dim=8, ground_size=(32, 128),
                        aerial_size=(64, 64), keep_prob=0.5)
    pipeline = SynthesizedViewPipeline(toy_split, spec, folder, None, normalize=False)
    path = str(tmp_path / "dump.npz")
    arrays = dump_descriptors(model, pipeline, 5, path)
    loaded = load_dump(path)
    assert str(loaded["split"]) == "train" and list(loaded["ids"]) == list(toy_split.ids)
    np.testing.assert_array_equal(loaded["index"], np.arange(13))
    # Row 4 against the model on the same preprocessed images, dropout off.
    i = 4
    ground = images.normalise(images.prepare_ground(toy_split.read_ground(i), spec), spec)[None]
    aerial = images.normalise(images.prepare_aerial(toy_split.read_aerial(i), spec), spec)[None]
    synthesized = images.normalise(images.prepare_aerial(
        images.resize_area(toy_split.read_ground(i), (64, 64)), spec), spec)[None]
    out = model({"ground": ground, "aerial": aerial, "synthesized": synthesized})
    for key in ("ground", "aerial", "synthesized"):
        np.testing.assert_allclose(loaded[key][i], np.asarray(out[key])[0], atol=1e-5)
        np.testing.assert_array_equal(loaded[key], arrays[key])
    with pytest.raises(CvmError, match="not found"):
        load_dump(str(tmp_path / "none.npz"))


def test_descriptor_pipeline_order_resume_and_concatenation():
    rng = np.random.default_rng(0)
    arrays = {"ground": rng.normal(size=(23, 4)), "aerial": rng.normal(size=(23, 4)),
              "synthesized": rng.normal(size=(23, 4)), "index": np.arange(100, 123)}
    pipeline = DescriptorPipeline(arrays, "train", "toy", seed=3)
    assert pipeline.steps_per_epoch(5) == 4
    full = [(f["ground"].numpy(), m["index"].numpy()) for f, m in pipeline.train(5, epochs=2)]
    assert len(full) == 8
    order = np.random.default_rng([3, 1]).permutation(23)[:5]
    np.testing.assert_array_equal(full[4][1], 100 + order)
    np.testing.assert_allclose(full[4][0], np.concatenate([arrays["ground"], arrays["synthesized"]], 1)[order],
                               rtol=1e-6)
    resumed = [m["index"].numpy() for _, m in pipeline.train(5, start_epoch=0, epochs=2, skip_batches=3)]
    assert [list(r) for r in resumed] == [list(i) for _, i in full[3:]]
    evaluated = np.concatenate([m["index"].numpy() for _, m in pipeline.eval(10)])
    np.testing.assert_array_equal(evaluated, arrays["index"])
    # The ablation's control: same rows and order, the synthesized half zeroed.
    control = DescriptorPipeline(arrays, "train", "toy", seed=3, without_synthesized=True)
    ground, index = [(f["ground"].numpy(), m["index"].numpy()) for f, m in control.train(5, epochs=2)][4]
    np.testing.assert_array_equal(index, full[4][1])
    np.testing.assert_allclose(ground[:, :4], arrays["ground"][order], rtol=1e-6)
    assert not ground[:, 4:].any()


def test_holdout_rows_are_the_image_stages_holdout():
    split = Split("toy", "train", None, [Pair(f"g{i}", f"a{i}", f"{i}") for i in range(40)])
    _, held = holdout(split, 0.25, seed=7)
    arrays = {"index": np.array([i for i in range(40) if i != 5])}  # pair 5 was unreadable
    rest_rows, held_rows = holdout_rows(arrays, 40, 0.25, seed=7)
    assert sorted(arrays["index"][held_rows]) == sorted(int(p.id) for p in held if p.id != "5")
    assert len(rest_rows) + len(held_rows) == 39


def test_selection_breaks_top1_percent_ties_like_the_original():
    a = {"r@1%_floor_plus_1": 0.50, "r@1": 0.10, "r@10": 0.30}
    b = {"r@1%_floor_plus_1": 0.50, "r@1": 0.12, "r@10": 0.30}
    c = {"r@1%_floor_plus_1": 0.51, "r@1": 0.00, "r@10": 0.00}
    n = 100  # top-1% steps by 1/N = 0.01
    assert selection_score(a, n) < selection_score(b, n) < selection_score(c, n)


def world(n, dim, noise, seed):
    """Joint-model-like descriptors: ground and synthesized are independent noisy views of the aerial."""
    rng = np.random.default_rng(seed)
    aerial = unit(rng.normal(size=(n, dim)))
    ground = unit(aerial + noise * rng.normal(size=(n, dim)) / np.sqrt(dim))
    synthesized = unit(aerial + noise * rng.normal(size=(n, dim)) / np.sqrt(dim))
    return {k: v.astype("float32") for k, v in
            (("ground", ground), ("aerial", aerial), ("synthesized", synthesized))} | {"index": np.arange(n)}


def test_fusion_learns_and_beats_its_inputs(tmp_path):
    train, val = world(800, 16, 1.6, 0), world(300, 16, 1.6, 1)
    write_dump(str(tmp_path / "train.npz"), train, "train", "toy")
    write_dump(str(tmp_path / "val.npz"), val, "val", "toy")
    config = TrainConfig(method="regmi_fusion", output_dim=16, init="original", lr=3e-3, batch_size=50, epochs=8,
                         model_dir=str(tmp_path / "fusion"), best_metric="regmi_selection", jit_compile=False,
                         eval_batch_size=300, holdout_fraction=0.0, log_every_steps=100)
    run = FusionRun(config, str(tmp_path / "train.npz"), str(tmp_path / "val.npz"), progress=False)
    state = run.train()
    assert state["best"]["metric"] == "regmi_selection"
    fused = run.encoder({"ground": np.concatenate([val["ground"], val["synthesized"]], 1), "aerial": val["aerial"]})
    r1 = {}
    for name, (g, a) in {"ground": (val["ground"], val["aerial"]), "synthesized": (val["synthesized"], val["aerial"]),
                         "fused": (np.asarray(fused["ground"]), np.asarray(fused["aerial"]))}.items():
        r1[name] = evaluate(g, a, directions=("ground_to_aerial",))["directions"]["ground_to_aerial"]["metrics"]["r@1"]
    # Two independent noisy views carry more than either: the learned fusion must beat both inputs.
    assert r1["fused"] > max(r1["ground"], r1["synthesized"]) + 0.05, r1
    # A finished run resumes as a no-op; the best model reloads.
    assert os.path.isfile(run.final_model_path())
    again = FusionRun(config, str(tmp_path / "train.npz"), str(tmp_path / "val.npz"), progress=False).train()
    assert again["epoch"] == 8 and again["best"] == state["best"]

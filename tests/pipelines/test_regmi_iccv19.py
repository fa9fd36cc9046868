"""The Regmi & Shah ICCV 2019 pipeline: flagfiles, stages after synthesis, kill -9 and resume, full run.

The in-process stage tests start from synthesized aerials made by a cheap stand-in for the X-Fork GAN:
each pair's real aerial reduced to 16x16 and blown back up, plus seeded noise. Like a GAN output it
is a blurred, noisy estimate of the true aerial, correlated with its pair and not equal to it, so
every stage after synthesis runs on data of the right kind. The two full runs (synthetic world,
UCF-OP; slow) go through the CLI with a tiny X-Fork GAN and `cvm synthesize`.

What is asserted of a run is that each stage learned: it beats its own untrained copy (the same
config, fresh weights) on the same data, and the fusion stage reads the synthesized half (its output
moves, and ranks worse, when those descriptors are replaced by noise).
"""

import csv
import glob
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from absl import flags

from cvm.cli import pipeline as pipeline_cli
from cvm.errors import CvmError
from cvm.pipelines.regmi_iccv19 import PipelineConfig, RegmiPipeline, stage_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REGMI_FLAGFILES = sorted(glob.glob(os.path.join(ROOT, "experiments", "regmi_*.cfg")))
# Tiny sizes: 1/16-width encoders on 32x128 panoramas and 64x64 aerials, a few steps per stage.
TINY = ["--ground_size=32,128", "--aerial_size=64,64", "--backbone_width=0.0625", "--output_dim=16",
        "--batch_size=8", "--epochs=2", "--lr=1e-4", "--init=he", "--keep_prob=1.0", "--holdout_fraction=0.25",
        "--nojit_compile", "--eval_batch_size=16", "--checkpoint_every_steps=1", "--log_every_steps=1"]

# Enough training for each stage to beat its untrained copy by a clear margin (figures in
# assert_stages_learned): lr 1e-3, 20 epochs of 3-4 steps, per-epoch checkpoints only, one validation
# at the end (so the stage's model is its last one: selecting among epochs on 9 held-out pairs is noise). The synthesized
# term weighs as much as the ground one (at the original's 10:1 the synthesized stream, sharing fc1 with
# the aerial one, had not learned after 30 steps: mean rank 16.5 vs 17.6 untrained, of 36). Fusion starts
# from the original's std-0.005 init: from Glorot's, 60 steps at 1e-3 cannot undo the random rotation of
# the joint descriptors (mean rank 16.6, worse than the joint ground descriptors' 5.3).
LEARNING = ["--joint_flag=--epochs=20", "--joint_flag=--lr=1e-3", "--joint_flag=--checkpoint_every_steps=0",
            "--joint_flag=--eval_every_epochs=20", "--joint_synthesized_weight=10", "--fusion_flag=--epochs=20",
            "--fusion_flag=--lr=1e-3", "--fusion_flag=--init=original", "--fusion_flag=--checkpoint_every_steps=0",
            "--fusion_flag=--eval_every_epochs=20"]
TWO_STREAM_LEARNING = ["--two_stream_flag=--epochs=20", "--two_stream_flag=--lr=1e-3",
                       "--two_stream_flag=--checkpoint_every_steps=0", "--two_stream_flag=--eval_every_epochs=20"]


def pipeline_flag_values(argv):
    fv = flags.FlagValues()
    pipeline_cli.define_flags(fv)
    fv(["cvm pipeline", *argv])
    return fv


@pytest.mark.parametrize("path", REGMI_FLAGFILES, ids=os.path.basename)
def test_regmi_flagfiles_parse_into_their_configs(path):
    name = os.path.basename(path)
    if name in ("regmi_iccv19_cvusa.cfg", "regmi_iccv19_ucfop.cfg", "regmi_iccv19_synthetic.cfg"):
        config = pipeline_cli.config_from_flags(pipeline_flag_values([f"--flagfile={path}", "--work_dir=w",
                                                                      "--root=r"]))
        assert config.dataset == name.split("_")[-1][:-4]
        assert (config.joint_ground_weight, config.joint_synthesized_weight) == (10.0, 1.0)
        assert config.two_stream and config.synthesized_zoom and not config.select_on_test
        stage_dataset = "cvusa" if config.dataset == "synthetic" else config.dataset  # written as a CVUSA folder
        for stage in (config.two_stream_flagfile, config.joint_flagfile, config.fusion_flagfile):
            stage_cfg = stage_config(stage, config.retrieval_flags)
            stage_cfg.validate()
            assert stage_cfg.dataset == stage_dataset
        return
    config = stage_config(path)
    config.validate()
    stage = name.split("_")[2]
    assert config.method == {"two": "regmi_two_stream", "joint": "regmi_joint", "fusion": "regmi_fusion"}[stage]
    assert config.lr == 1e-5 and config.alpha == 10.0 and config.holdout_fraction == 0.05
    assert config.output_dim == 1000 and config.init == "original"
    if stage == "fusion":
        assert config.batch_size == 100 and config.best_metric == "regmi_selection" and config.keep_prob == 1.0
    else:
        assert config.batch_size == (30 if stage == "two" else 24) and config.keep_prob == 0.5
        assert config.image_spec().aerial_size == (512, 512) and config.image_spec().ground_size == (224, 1232)
        assert config.augment == "cvm_net" and config.multiscale and config.best_metric == "r@1%_floor_plus_1"


def degraded_aerials(root, out):
    """The cheap synthesizer (module docstring): one image per pair, named as the aerial file."""
    for split, csv_name in (("train", "train-19zl.csv"), ("val", "val-19zl.csv")):
        os.makedirs(os.path.join(out, split), exist_ok=True)
        with open(os.path.join(root, "splits", csv_name)) as f:
            for i, row in enumerate(csv.reader(f)):
                aerial = cv2.imread(os.path.join(root, row[0]))
                small = cv2.resize(aerial, (16, 16), interpolation=cv2.INTER_AREA)
                image = cv2.resize(small, (256, 256), interpolation=cv2.INTER_LINEAR).astype(np.int16)
                image += np.random.default_rng(i).integers(-20, 21, image.shape, dtype=np.int16)
                cv2.imwrite(os.path.join(out, split, os.path.basename(row[0])), np.clip(image, 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(root, synthesized folder): 48 CVUSA-layout synthetic-world pairs (36 train, 12 val) and stand-in aerials."""
    from cvm.data.synthetic import write_dataset

    base = tmp_path_factory.mktemp("regmi")
    root = str(base / "data")
    write_dataset(root, layout="cvusa", pairs=48, seed=0, val_fraction=0.25, progress=False)
    return root, degraded_aerials(root, str(base / "synthesized"))


def pipeline_argv(world, work, *extra):
    root, synthesized = world
    return ["--dataset=cvusa", f"--root={root}", f"--work_dir={work}", f"--synthesized_dir={synthesized}",
            *[f"--retrieval_flag={f}" for f in TINY], "--fusion_flag=--epochs=20", "--fusion_flag=--lr=1e-3", *extra]


def mean_rank(query, reference):
    """Mean rank of each query's true reference (0 = first), ground -> aerial: (N - 1) / 2 for unrelated
    descriptors, 0 for perfect ones. Over every query and rank, so a few training steps already move it."""
    from cvm.evaluation import evaluate

    raw = evaluate(query, reference, directions=("ground_to_aerial",), top_k=0)
    return float(np.mean(raw["directions"]["ground_to_aerial"]["ranks"]))


def untrained_copy(model):
    """The stage's model rebuilt from its own config: same architecture, fresh random weights."""
    return type(model).from_config(model.get_config())


def joint_dump(pipe, model, split_name, path):
    """The descriptors of `model` on a split, exactly as the pipeline's dump stage computes them."""
    from cvm.data import load_split
    from cvm.training.fusion import dump_descriptors
    from cvm.training.joint import SynthesizedViewPipeline

    spec = pipe.retrieval_config("joint").image_spec()
    split = load_split(pipe.dataset, split_name, pipe.root)
    views = SynthesizedViewPipeline(split, spec, pipe.synthesized(split_name), augment=None, normalize=False)
    return dump_descriptors(model, views, 16, path)


def fused(fusion, dump, synthesized=None):
    """The fusion model's (ground, aerial) descriptors of a dump, optionally with another synthesized half."""
    half = dump["synthesized"] if synthesized is None else synthesized
    out = fusion({"ground": np.concatenate([dump["ground"], half], axis=1), "aerial": dump["aerial"]})
    return np.asarray(out["ground"]), np.asarray(out["aerial"])


def assert_stages_learned(pipe, tmp_path, informative_synthesized=True):
    """Every trained retrieval stage beats its untrained copy on the same data, and fusion uses the
    synthesized half. Returns the measured figures (printed by the tests for the record).

    informative_synthesized: the synthesized aerials carry their pair's content (the stand-in synthesizer);
    then the joint stage's synthesized stream must have learned and fusion must rank worse with noise
    in their place. A tiny X-Fork trained for one epoch makes images with little pair content, so the full
    runs check only that fusion reads the synthesized half."""
    import keras

    import cvm.models  # noqa: F401  (registers the layers the .keras files name)
    from cvm.training.fusion import load_dump

    train = load_dump(pipe.path("descriptors", "train.npz"))
    n = len(train["index"])
    # Mean ranks of n training pairs: unrelated descriptors give (n - 1) / 2 +- ~0.3 n / sqrt(n) (one
    # untrained draw); "learned" is a margin of 0.1 n below the untrained copy, ~4 of those deviations.
    margin = 0.1 * n
    figures, failed = {"pairs": n}, []

    def better(name, trained, untrained, by=margin):
        figures[name + " (trained, untrained)"] = (round(trained, 3), round(untrained, 3))
        if not trained < untrained - by:
            failed.append(name)

    # Joint stage: its train-split descriptors (the dump) against a freshly initialised copy's.
    joint = keras.models.load_model(pipe.read_marker("joint")["model"])
    fresh = joint_dump(pipe, untrained_copy(joint), "train", str(tmp_path / "untrained_joint.npz"))
    for query in ("ground", "synthesized") if informative_synthesized else ("ground",):
        better(f"joint {query} -> aerial mean rank", mean_rank(train[query], train["aerial"]),
               mean_rank(fresh[query], fresh["aerial"]))
    if "two_stream" in pipe.stages():
        from cvm.data import load_split
        from cvm.data.pipeline import Pipeline
        from cvm.evaluation.embed import embed_split

        two_stream = keras.models.load_model(pipe.read_marker("two_stream")["model"])
        config = pipe.retrieval_config("two_stream")
        split = Pipeline(load_split(pipe.dataset, "train", pipe.root), config.image_spec(), normalize=False)
        better("two-stream mean rank", *[mean_rank(e["ground"], e["aerial"]) for e in
                                         (embed_split(m, split, 16) for m in (two_stream, untrained_copy(two_stream)))])
    # Fusion stage, on the train dump: its untrained copy is a random projection of the same joint
    # descriptors, which keeps much of their ranking, so any improvement over it counts.
    fusion = keras.models.load_model(pipe.read_marker("fusion")["model"])
    ground, aerial = fused(fusion, train)
    trained_rank = mean_rank(ground, aerial)
    better("fusion mean rank", trained_rank, mean_rank(*fused(untrained_copy(fusion), train)), by=0.0)
    # ... and it uses the synthesized half: replaced by unit-norm noise, the fused ground descriptors move
    # (relative change; 0 if fc2 ignored those inputs) and rank worse.
    noise = np.random.default_rng(0).normal(size=train["synthesized"].shape).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    noisy_ground, _ = fused(fusion, train, noise)
    change = float(np.linalg.norm(noisy_ground - ground) / np.linalg.norm(ground))
    figures["fusion ground change with a noise synthesized half"] = round(change, 3)
    if not change > 0.1:
        failed.append("fusion ignores the synthesized half")
    if informative_synthesized:
        better("fusion mean rank, real vs noise synthesized half", trained_rank, mean_rank(noisy_ground, aerial))
        # The paper's point: fused descriptors rank better than the joint ground descriptors alone.
        better("fusion vs joint ground mean rank", trained_rank, mean_rank(train["ground"], train["aerial"]), by=0.0)
    assert not failed, f"{failed}: {figures}"
    return figures


def generator_l1(xfork_dir, dataset, root, untrained=False):
    """Mean L1 ([-1, 1] units) of the X-Fork stage's generated aerials against the real ones on the test split,
    generated as `cvm synthesize` does (its networks, its pipeline, its test-time mode); with `untrained`, of
    the same generators rebuilt from their configs with fresh weights."""
    import keras

    from cvm.data.synthesis import SynthesisPipeline
    from cvm.models.synthesis.generation import Generation
    from cvm.synthesis.inference import load_generators
    from cvm.training.gan import load_split

    config, generators, _ = load_generators(xfork_dir)
    if untrained:
        generators = {role: untrained_copy(g) for role, g in generators.items()}
    samples = load_split(config, "val", segmaps=False, dataset=dataset, root=root)
    pipeline = SynthesisPipeline(samples, config.data_spec(), seed=config.seed)
    total, count = 0.0, 0
    with Generation(generators, config.inference_mode, 4) as generation:
        for images, _ in pipeline.eval(4):
            image = keras.ops.convert_to_numpy(generation(images["input"], segmentation=False)["image"])
            target = keras.ops.convert_to_numpy(images["target"])
            total += float(np.abs(image - target).mean()) * len(image)
            count += len(image)
    return total / count


def assert_generator_learned(pipe):
    """The X-Fork stage beats its untrained copy: lower L1 to the real aerials on the same test pairs."""
    trained = generator_l1(pipe.synthesis_model_dir(), pipe.dataset, pipe.root)
    fresh = generator_l1(pipe.synthesis_model_dir(), pipe.dataset, pipe.root, untrained=True)
    # An untrained generator's tanh outputs sit near 0, so its L1 is about the mean |target| whatever the
    # draw; one epoch at the default lr 2e-4 does not move it either (0.2740 vs 0.2741 measured, UCF-OP
    # copy), 36-64 steps at 2e-3 do (0.238 vs 0.274 on the UCF-OP copy, 0.194 vs 0.268 on the synthetic world).
    assert trained < 0.95 * fresh, (trained, fresh)
    return {"xfork test L1 (trained, untrained)": (trained, fresh)}


def test_stages_after_synthesis(world, tmp_path, capsys):
    work = str(tmp_path / "work")
    config = pipeline_cli.config_from_flags(pipeline_flag_values(pipeline_argv(
        world, work, "--notwo_stream", *LEARNING)))  # the slow tests cover the baseline
    table = RegmiPipeline(config).run()
    assert [r["method"] for r in table["rows"]] == ["joint feature learning", "joint: synthesized aerial -> aerial",
                                                    "feature fusion", "fusion without the synthesized view (control)"]
    assert [row["n_queries"] for row in table["rows"]] == [12] * 4
    print(assert_stages_learned(RegmiPipeline(config, progress=False), tmp_path))
    with open(os.path.join(work, "results", "ablation.json")) as f:
        assert json.load(f)["rows"] == table["rows"]
    for stage in ("joint", "joint_synthesized", "fusion", "fusion_control"):  # the results JSON of each row
        results = json.load(open(os.path.join(work, "results", f"{stage}.json")))
        assert results["n_queries"] == 12 and "r@1%_floor_plus_1" in results["metrics"]["ground_to_aerial"]
    assert json.load(open(os.path.join(work, "results", "fusion.json")))["method"] == "regmi_fusion"
    markdown = open(os.path.join(work, "results", "ablation.md")).read()
    assert "| feature fusion |" in markdown and "top-1%" in markdown
    train = np.load(os.path.join(work, "descriptors", "train.npz"))
    assert train["ground"].shape == train["synthesized"].shape == (36, 16)  # the whole train split, unaugmented
    np.testing.assert_allclose(np.linalg.norm(train["aerial"], axis=1), 1.0, atol=1e-5)
    # The joint row is the ground -> aerial recall of the dumped test descriptors.
    from cvm.evaluation import evaluate

    val = np.load(os.path.join(work, "descriptors", "val.npz"))
    r1 = evaluate(val["ground"], val["aerial"])["directions"]["ground_to_aerial"]["metrics"]["r@1"]
    assert table["rows"][0]["r@1"] == pytest.approx(r1)
    # Selection used the held-out quarter of the training split (9 pairs).
    assert json.load(open(os.path.join(work, "joint", "best", "metrics.json")))["epoch"] == 20
    # A complete pipeline reruns as a no-op.
    capsys.readouterr()
    RegmiPipeline(config).run()
    out = capsys.readouterr().out
    assert out.count("complete, skipped") == 4 and "running" not in out


@pytest.mark.slow
def test_killed_pipeline_resumes_in_the_stage_it_was_in(world, tmp_path, capsys):
    work = str(tmp_path / "work")
    argv = pipeline_argv(world, work)
    killed = subprocess.run([sys.executable, "-m", "cvm.cli.main", "pipeline", "regmi_iccv19", *argv,
                             "--joint_flag=--kill_after_steps=4"], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT), cwd=ROOT)
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]
    stages = os.path.join(work, "stages")
    assert sorted(os.listdir(stages)) == ["two_stream.json"]  # killed inside joint: no joint marker
    checkpoints = os.path.join(work, "joint", "checkpoints")
    assert sorted(glob.glob(os.path.join(checkpoints, "*.npz")))[-1].endswith("ckpt-000000004.npz")  # mid-epoch 2
    two_stream_done = os.path.getmtime(os.path.join(stages, "two_stream.json"))

    config = pipeline_cli.config_from_flags(pipeline_flag_values(argv))
    capsys.readouterr()
    RegmiPipeline(config).run()
    out = capsys.readouterr().out
    assert "stage two_stream: complete, skipped" in out
    assert "resuming" in out and "at epoch 2, step 1 (ckpt-000000004.npz)" in out
    # The finished stage was kept; the joint stage resumed from its step-4 checkpoint and finished:
    # 36 training pairs, 9 held out: 27 -> 3 batches of 8 per epoch, 2 epochs.
    assert os.path.getmtime(os.path.join(stages, "two_stream.json")) == two_stream_done
    with open(sorted(glob.glob(os.path.join(checkpoints, "*.json")))[-1]) as f:
        final = json.load(f)
    assert final["global_step"] == 6 and final["epoch"] == 2
    assert sorted(os.listdir(stages)) == sorted(
        f"{s}.json" for s in ("two_stream", "joint", "dump", "fusion", "evaluate"))
    table = json.load(open(os.path.join(work, "results", "ablation.json")))
    assert [r["method"] for r in table["rows"]] == ["two-stream baseline", "joint feature learning",
                                                    "joint: synthesized aerial -> aerial", "feature fusion",
                                                    "fusion without the synthesized view (control)"]
    assert os.path.isfile(os.path.join(work, "results", "two_stream.json"))


def test_pipeline_user_errors(tmp_path):
    with pytest.raises(CvmError, match="--root is required"):
        RegmiPipeline(PipelineConfig(dataset="cvusa", work_dir=str(tmp_path)))
    with pytest.raises(CvmError, match="must hold train/"):
        RegmiPipeline(PipelineConfig(dataset="cvusa", root=str(tmp_path), work_dir=str(tmp_path),
                                     synthesized_dir=str(tmp_path)))
    with pytest.raises(CvmError, match="not found"):
        stage_config("experiments/regmi_nothing.cfg")
    with pytest.raises(CvmError, match="stage flags"):
        stage_config("experiments/regmi_iccv19_joint_cvusa.cfg", ["--no_such_flag=1"])


@pytest.mark.slow
def test_full_pipeline_on_the_synthetic_world(tmp_path):
    """Every stage, the X-Fork GAN included, through the CLI on a tiny synthetic-world dataset."""
    if not os.path.isfile(os.path.join(ROOT, "cvm", "cli", "synthesize.py")):
        pytest.skip("`cvm synthesize` is not in this checkout")
    work = str(tmp_path / "work")
    argv = ["--dataset=synthetic", "--synthetic_pairs=40", f"--work_dir={work}", "--synthesis_batch_size=2",
            "--synthesis_flag=--preset=pano2aerial_small", "--synthesis_flag=--input_size=16,64",
            "--synthesis_flag=--target_size=32,32", "--synthesis_flag=--d_layers=2",
            "--synthesis_flag=--epochs=4", "--synthesis_flag=--lr=2e-3",
            "--synthesis_flag=--batch_size=2", "--synthesis_flag=--ngf=4",
            "--synthesis_flag=--ndf=4", "--synthesis_flag=--image_every_steps=0", "--synthesis_flag=--nojit_compile",
            *[f"--retrieval_flag={f}" for f in TINY], *LEARNING, *TWO_STREAM_LEARNING]
    result = subprocess.run([sys.executable, "-m", "cvm.cli.main", "pipeline", "regmi_iccv19", *argv],
                            capture_output=True, text=True, timeout=1800, cwd=ROOT,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT))
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    pipe = RegmiPipeline(pipeline_cli.config_from_flags(pipeline_flag_values(argv)), progress=False)
    print(assert_generator_learned(pipe), assert_stages_learned(pipe, tmp_path, informative_synthesized=False))


def ucfop_copy(root, out):
    """The CVUSA-layout world rewritten in UCF-OP's layout (split text files, <lat>_<lon>[_nadir].png names)."""
    lines = {"train": [], "test": []}
    for split, csv_name in (("train", "train-19zl.csv"), ("test", "val-19zl.csv")):
        with open(os.path.join(root, "splits", csv_name)) as f:
            for i, row in enumerate(csv.reader(f)):
                lat, lon = 28.5 + 1e-3 * i + (0.5 if split == "test" else 0.0), -81.3 - 1e-3 * i
                aerial, ground = f"aerial/{lat:.4f}_{lon:.4f}_nadir.png", f"ground/{lat:.6f}_{lon:.6f}.png"
                for rel, src in ((aerial, row[0]), (ground, row[1])):
                    os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
                    cv2.imwrite(os.path.join(out, rel), cv2.imread(os.path.join(root, src)))
                lines[split].append(f"{aerial},{ground},unused/{i}.png,{ground}" if split == "train"
                                    else f"{aerial},{ground}")
    os.makedirs(os.path.join(out, "splits"))
    for split, rows in lines.items():
        with open(os.path.join(out, "splits", f"{split}_split.txt"), "w") as f:
            f.write("\n".join(rows) + "\n")
    return out


@pytest.mark.slow
def test_full_pipeline_on_ucfop_through_its_adapter(world, tmp_path):
    """UCF-OP (no segmentation maps) through every stage, the X-Fork GAN and `cvm synthesize` included."""
    root = ucfop_copy(world[0], str(tmp_path / "UCF-OP"))
    work = str(tmp_path / "work")
    argv = ["--flagfile=experiments/regmi_iccv19_ucfop.cfg", f"--root={root}", f"--work_dir={work}",
            "--synthesis_batch_size=4", "--synthesis_flag=--preset=pano2aerial_small",
            "--synthesis_flag=--input_size=16,64", "--synthesis_flag=--target_size=32,32",
            "--synthesis_flag=--epochs=4", "--synthesis_flag=--lr=2e-3",
            "--synthesis_flag=--batch_size=4", "--synthesis_flag=--ngf=4",
            "--synthesis_flag=--ndf=4", "--synthesis_flag=--d_layers=2", "--synthesis_flag=--image_every_steps=0",
            "--synthesis_flag=--nojit_compile", "--notwo_stream", *[f"--retrieval_flag={f}" for f in TINY], *LEARNING]
    result = subprocess.run([sys.executable, "-m", "cvm.cli.main", "pipeline", "regmi_iccv19", *argv],
                            capture_output=True, text=True, timeout=900, cwd=ROOT,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT))
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    table = json.load(open(os.path.join(work, "results", "ablation.json")))
    assert table["dataset"] == "ucfop" and [r["n_queries"] for r in table["rows"]] == [12] * 4
    # The UCF-OP adapter fed every stage: one synthesized aerial per pair (under its UCF-OP name), and each
    # stage learned from those pairs.
    for split, expected in (("train", 36), ("val", 12)):
        assert len([n for n in os.listdir(os.path.join(work, "synthesized", split)) if n.endswith("_nadir.png")]) \
            == expected
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)  # the --flagfile is relative to the checkout, as for the CLI run above
        pipe = RegmiPipeline(pipeline_cli.config_from_flags(pipeline_flag_values(argv)), progress=False)
    print(assert_generator_learned(pipe), assert_stages_learned(pipe, tmp_path, informative_synthesized=False))

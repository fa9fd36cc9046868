"""The Regmi & Shah (ICCV 2019) pipeline, stage by stage, resumable.

Paper: "Bridging the Domain Gap for Ground-to-Aerial Image Matching", https://arxiv.org/abs/1904.11045;
original: github.com/kregmi/cross-view-image-matching (seeds.md §3). Stages, in order, each writing
under `work_dir`:

  0. data        (--dataset synthetic only) a CVUSA-layout synthetic-world dataset: `cvm data synth`
  1. xfork       train the X-Fork panorama -> aerial GAN: `cvm train --flagfile <synthesis flagfile>`
                 (skipped with --synthesis_model_dir or --synthesized_dir)
  2. synthesize  one synthesized aerial per pair of the train and test splits: `cvm synthesize`
                 (skipped with --synthesized_dir, a folder holding train/ and val/)
  3. two_stream  the two-stream baseline (optional: --notwo_stream)
  4. joint       joint feature learning on ground, aerial and synthesized aerial
  5. dump        the joint model's descriptors of the train split (no augmentation; the original
                 had no script for it) and of the test split
  6. fusion      feature fusion on the dumps
  7. evaluate    top-1/5/10/1% of two-stream, joint and fusion on the test split, side by side
                 (results/ablation.json and results/ablation.md)

A stage is complete when its marker `work_dir/stages/<stage>.json` exists; the marker is written
last, atomically, so a killed pipeline reruns the stage it was in, and a training stage resumes
from its trainer's latest checkpoint (the GAN's `cvm train` and `cvm synthesize` resume on their
own). Model selection uses the held-out part of the training split the stage flagfiles name
(--holdout_fraction); --select_on_test selects on the test split as the original did.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time
from typing import Optional, Sequence

import numpy as np

from cvm import atomic, faultinject, resources
from cvm.errors import CvmError

STAGES = ("data", "xfork", "synthesize", "two_stream", "joint", "dump", "fusion", "evaluate")
RETRIEVAL_STAGES = ("two_stream", "joint", "fusion")
TEST_SPLIT = "val"  # CVUSA val-19zl.csv (the papers' test set); UCF-OP's "val" is its test split
# Rows of the ablation table (the paper's Table 3 ablation) by stage; each also has results/<stage>.json.
ROW_NAMES = {"two_stream": "two-stream baseline", "joint": "joint feature learning",
             "joint_synthesized": "joint: synthesized aerial -> aerial", "fusion": "feature fusion",
             "fusion_control": "fusion without the synthesized view (control)"}


@dataclasses.dataclass
class PipelineConfig:
    """Settings of one pipeline run (the flags of `cvm pipeline regmi_iccv19`)."""

    dataset: str = "cvusa"
    root: Optional[str] = None
    work_dir: str = "runs/regmi_iccv19"
    # Synthesis (stages 1-2).
    synthesis_flagfile: str = "experiments/xfork_pano2aerial_cvusa.cfg"
    synthesis_flags: Sequence[str] = ()
    synthesis_model_dir: Optional[str] = None
    synthesized_dir: Optional[str] = None
    synthesis_batch_size: int = 4
    # Retrieval stages (3-6): one flagfile each, then the shared and the per-stage overrides.
    # None: experiments/regmi_iccv19_<stage>_<dataset>.cfg (the cvusa ones for the synthetic world).
    two_stream: bool = True
    two_stream_flagfile: Optional[str] = None
    joint_flagfile: Optional[str] = None
    fusion_flagfile: Optional[str] = None
    retrieval_flags: Sequence[str] = ()
    two_stream_flags: Sequence[str] = ()
    joint_flags: Sequence[str] = ()
    fusion_flags: Sequence[str] = ()
    select_on_test: bool = False
    joint_ground_weight: float = 10.0
    joint_synthesized_weight: float = 1.0
    synthesized_zoom: bool = True
    fusion_control: bool = True  # also train fusion with the synthesized half zeroed (the ablation's control)
    dump_batch_size: int = 32
    # Stage 0 (--dataset synthetic).
    synthetic_pairs: int = 400
    synthetic_seed: int = 0

    def __post_init__(self):
        for stage in RETRIEVAL_STAGES:
            if not getattr(self, f"{stage}_flagfile"):
                setattr(self, f"{stage}_flagfile", default_stage_flagfile(stage, self.dataset))

    def validate(self) -> None:
        from cvm.data import registry

        registry.get(self.dataset, "regmi_iccv19")
        if self.dataset != "synthetic" and not self.root:
            raise CvmError(f"--root is required for --dataset {self.dataset}: the dataset's folder")
        if not self.work_dir:
            raise CvmError("--work_dir is required: the folder every stage writes into")
        if self.synthesis_model_dir and self.synthesized_dir:
            raise CvmError("pass --synthesis_model_dir (synthesize with it) or --synthesized_dir (use these "
                           "images), not both")
        if self.synthesized_dir:
            for split in ("train", TEST_SPLIT):
                if not os.path.isdir(os.path.join(self.synthesized_dir, split)):
                    raise CvmError(f"--synthesized_dir {self.synthesized_dir} must hold {split}/ (one synthesized "
                                   "aerial per pair, named as the aerial file)")
        if self.synthetic_pairs < 10:
            raise CvmError(f"--synthetic_pairs must be at least 10, got {self.synthetic_pairs}")


def default_stage_flagfile(stage: str, dataset: str) -> str:
    """The experiments/ flagfile of a retrieval stage for a dataset (the synthetic world is a CVUSA folder)."""
    return f"experiments/regmi_iccv19_{stage}_{'cvusa' if dataset == 'synthetic' else dataset}.cfg"


def resolve_flagfile(path: str) -> str:
    """A flagfile path as given, or one of cvm's shipped experiments (experiments/... from any folder)."""
    return resources.find_flagfile(path)


def stage_flag_values(flagfile: Optional[str], overrides: Sequence[str] = ()):
    """The parsed `cvm train` flags of a retrieval stage: its flagfile (None: none), then `overrides`."""
    from absl import flags

    from cvm.flags import train as train_flags

    fv = flags.FlagValues()
    train_flags.define_flags(fv)
    given = [f"--flagfile={resolve_flagfile(flagfile)}"] if flagfile else []
    try:
        fv(["cvm pipeline", *given, *overrides])
    except flags.Error as exc:
        raise CvmError(f"stage flags of {flagfile} {list(overrides)}: {exc}") from None
    return fv


def stage_config(flagfile: str, overrides: Sequence[str] = ()):
    """The TrainConfig of a retrieval stage: its flagfile, then `overrides` (--flag=value strings)."""
    from cvm.flags import train as train_flags

    return train_flags.config_from_flags(stage_flag_values(flagfile, overrides))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class RegmiPipeline:
    """Runs the stages of `PipelineConfig` in order, skipping the complete ones.

    `RegmiPipeline(config).run()` returns the evaluation table (also in work_dir/results/).
    """

    def __init__(self, config: PipelineConfig, progress: bool = True):
        config.validate()
        self.config = config
        self.progress = progress
        self.work_dir = os.path.abspath(config.work_dir)
        os.makedirs(os.path.join(self.work_dir, "stages"), exist_ok=True)
        synthetic = config.dataset == "synthetic"
        self.dataset = "cvusa" if synthetic else config.dataset
        self.root = os.path.join(self.work_dir, "data") if synthetic else os.path.abspath(config.root)
        self.check_stage_flags()

    # --- flags ----------------------------------------------------------------------------------
    def stage_flags(self, stage: str) -> tuple:
        """(flagfile, the stage's own overrides) of a retrieval stage."""
        c = self.config
        return getattr(c, f"{stage}_flagfile"), tuple(getattr(c, f"{stage}_flags"))

    def stage_unused(self, stage: str, config) -> dict:
        """{field: reason} of a retrieval stage's config: the fields its trainer does not use, and those the
        pipeline sets itself."""
        unused = dict(config.unused_fields())
        unused["root"] = "the pipeline gives every stage its own --root"
        unused["model_dir"] = f"the pipeline trains this stage in --work_dir/{stage}"
        if config.dataset != self.dataset:
            unused["dataset"] = (f"the pipeline runs every stage on its --dataset {self.config.dataset} (a "
                                 f"{self.dataset} folder); use that dataset's stage flagfiles")
        return unused

    def check_stage_flags(self) -> None:
        """Fail before any stage runs if a stage would not use a flag given to it (cvm.flags.use): a
        stage flagfile or --<stage>_flag flag that stage does not use, a --retrieval_flag that no
        retrieval stage uses, a --synthesis_flag that `cvm train` would refuse."""
        from cvm.flags import use as flag_use

        c = self.config
        shared = stage_flag_values(None, c.retrieval_flags)
        unused_everywhere = None
        for stage in RETRIEVAL_STAGES:
            if stage == "two_stream" and not c.two_stream:
                continue
            flagfile, own = self.stage_flags(stage)
            unused = self.stage_unused(stage, stage_config(flagfile, [*c.retrieval_flags, *own]))
            flag_use.check(stage_flag_values(flagfile, own), unused,
                           context=f"stage {stage}: {flagfile} and --{stage}_flag")
            reasons = {name: f"{stage}: {reason}" for name, reason in unused.items()}
            unused_everywhere = reasons if unused_everywhere is None else {
                name: f"{unused_everywhere[name]}; {reason}" for name, reason in reasons.items()
                if name in unused_everywhere}
        flag_use.check(shared, {name: f"no retrieval stage uses it ({reason})"
                                for name, reason in (unused_everywhere or {}).items()}, context="--retrieval_flag")
        if "xfork" in self.stages():
            from absl import flags

            from cvm.flags import synthesis as synthesis_flags, train as train_flags

            fv = flags.FlagValues()
            train_flags.define_flags(fv)
            synthesis_flags.define_flags(fv)
            try:
                fv(["cvm train", *self.xfork_args()])
            except flags.Error as exc:
                raise CvmError(f"stage xfork: {exc}") from None
            flag_use.check_train(fv, context=f"stage xfork: {c.synthesis_flagfile} and --synthesis_flag")

    # --- markers --------------------------------------------------------------------------------
    def marker(self, stage: str) -> str:
        return os.path.join(self.work_dir, "stages", f"{stage}.json")

    def done(self, stage: str) -> bool:
        return os.path.isfile(self.marker(stage))

    def complete(self, stage: str, info: dict) -> None:
        # Last, atomically: a killed stage has no marker.
        atomic.write_json(self.marker(stage), {"stage": stage, "completed": _now(), **info})

    def read_marker(self, stage: str) -> dict:
        with open(self.marker(stage)) as f:
            return json.load(f)

    def say(self, text: str) -> None:
        if self.progress:
            print(f"[regmi_iccv19] {text}", flush=True)

    # --- paths ----------------------------------------------------------------------------------
    def path(self, *parts) -> str:
        return os.path.join(self.work_dir, *parts)

    def synthesized(self, split: str) -> str:
        if self.config.synthesized_dir:
            return os.path.abspath(os.path.join(self.config.synthesized_dir, split))
        return self.path("synthesized", split)

    def synthesis_model_dir(self) -> str:
        given = self.config.synthesis_model_dir
        return os.path.abspath(given) if given else self.path("xfork")

    # --- the run --------------------------------------------------------------------------------
    def stages(self) -> list:
        wanted = []
        if self.config.dataset == "synthetic":
            wanted.append("data")
        if not self.config.synthesized_dir:
            if not self.config.synthesis_model_dir:
                wanted.append("xfork")
            wanted.append("synthesize")
        if self.config.two_stream:
            wanted.append("two_stream")
        return wanted + ["joint", "dump", "fusion", "evaluate"]

    def run(self) -> dict:
        for stage in self.stages():
            if self.done(stage):
                self.say(f"stage {stage}: complete, skipped ({self.marker(stage)})")
                continue
            self.say(f"stage {stage}: running")
            start = time.perf_counter()
            info = getattr(self, f"stage_{stage}")()
            info["seconds"] = round(time.perf_counter() - start, 1)
            faultinject.kill_point("stage.marker", {"global_step": 0}, stage)  # testing aid (CVM_KILL_AT)
            self.complete(stage, info)
            self.say(f"stage {stage}: done in {info['seconds']} s")
        return self.read_marker("evaluate")["table"]

    def _command(self, stage: str, args: list) -> None:
        command = [sys.executable, "-m", "cvm.cli.main", *args]
        self.say("$ " + " ".join(command[2:]))
        # The child imports this same cvm package, wherever the parent found it.
        path = os.environ.get("PYTHONPATH")
        env = dict(os.environ, PYTHONPATH=resources.PACKAGE_PARENT + (os.pathsep + path if path else ""))
        result = subprocess.run(command, env=env)
        if result.returncode != 0:
            raise CvmError(f"stage {stage} failed: `cvm {' '.join(args)}` exited with {result.returncode}; fix the "
                           f"cause and rerun the pipeline (it resumes at this stage)")

    # --- stages ---------------------------------------------------------------------------------
    def stage_data(self) -> dict:
        self._command("data", ["data", "synth", "--layout=cvusa", f"--out={self.root}",
                               f"--pairs={self.config.synthetic_pairs}", f"--seed={self.config.synthetic_seed}"])
        return {"root": self.root, "pairs": self.config.synthetic_pairs}

    def stage_xfork(self) -> dict:
        self._command("xfork", ["train", *self.xfork_args()])
        return {"model_dir": self.synthesis_model_dir()}

    def xfork_args(self) -> list:
        """The `cvm train` flags of the X-Fork stage."""
        return [f"--flagfile={resolve_flagfile(self.config.synthesis_flagfile)}", f"--dataset={self.dataset}",
                f"--root={self.root}", f"--model_dir={self.synthesis_model_dir()}", *self.config.synthesis_flags]

    def stage_synthesize(self) -> dict:
        outputs = {}
        for split in ("train", TEST_SPLIT):
            out = self.synthesized(split)
            self._command("synthesize", ["synthesize", f"--model_dir={self.synthesis_model_dir()}",
                                         f"--dataset={self.dataset}", f"--root={self.root}", f"--split={split}",
                                         f"--out={out}", f"--batch_size={self.config.synthesis_batch_size}"])
            outputs[split] = out
        return {"folders": outputs}

    def retrieval_config(self, stage: str):
        c = self.config
        flagfile, flags_ = self.stage_flags(stage)
        config = stage_config(flagfile, [*c.retrieval_flags, *flags_])
        config.dataset, config.root, config.model_dir = self.dataset, self.root, self.path(stage)
        if c.select_on_test:  # the original's selection on the test split (parity of numbers)
            config.holdout_fraction, config.val_split = 0.0, TEST_SPLIT
        return config

    def stage_two_stream(self) -> dict:
        from cvm.training.joint import JointRun

        run = JointRun(self.retrieval_config("two_stream"), progress=self.progress)
        state = run.train()
        return {"model": run.final_model_path(), "best": state.get("best")}

    def stage_joint(self) -> dict:
        from cvm.training.joint import JointRun

        c = self.config
        run = JointRun(self.retrieval_config("joint"), synthesized_dir=self.synthesized("train"),
                       ground_weight=c.joint_ground_weight, synthesized_weight=c.joint_synthesized_weight,
                       synthesized_zoom=c.synthesized_zoom, progress=self.progress)
        state = run.train()
        return {"model": run.final_model_path(), "best": state.get("best")}

    def stage_dump(self) -> dict:
        import keras

        import cvm.models  # noqa: F401  (registers the layers the .keras files name)
        from cvm.data import load_split
        from cvm.training.fusion import dump_descriptors
        from cvm.training.joint import SynthesizedViewPipeline

        joint = self.read_marker("joint")
        config = self.retrieval_config("joint")
        model = keras.models.load_model(joint["model"])
        spec = config.image_spec()
        dumps = {}
        for split_name in ("train", TEST_SPLIT):
            split = load_split(self.dataset, split_name, self.root)
            pipeline = SynthesizedViewPipeline(split, spec, self.synthesized(split_name), augment=None,
                                               faults_path=self.path("descriptors", "faults.txt"), normalize=False)
            path = self.path("descriptors", f"{split_name}.npz")
            arrays = dump_descriptors(model, pipeline, self.config.dump_batch_size, path, progress=self.progress)
            dumps[split_name] = {"path": path, "pairs": len(split), "dumped": int(len(arrays["index"]))}
        return {"model": joint["model"], "dumps": dumps}

    def stage_fusion(self) -> dict:
        from cvm.training.fusion import FusionRun

        dumps = self.read_marker("dump")["dumps"]
        joint = self.retrieval_config("joint")
        config = self.retrieval_config("fusion")
        # The fusion stage validates on the pairs the joint stage held out (same fraction and seed).
        holdout = joint.holdout_fraction if config.holdout_fraction > 0 else 0.0
        config.holdout_fraction = holdout
        run = FusionRun(config, dumps["train"]["path"], None if holdout else dumps[TEST_SPLIT]["path"],
                        n_train_pairs=dumps["train"]["pairs"], holdout_seed=joint.seed, progress=self.progress)
        state = run.train()
        marker = {"model": run.final_model_path(), "best": state.get("best")}
        if self.config.fusion_control:
            control = dataclasses.replace(config, model_dir=self.path("fusion_control"))
            run = FusionRun(control, dumps["train"]["path"], None if holdout else dumps[TEST_SPLIT]["path"],
                            n_train_pairs=dumps["train"]["pairs"], holdout_seed=joint.seed, progress=self.progress,
                            without_synthesized=True)
            state = run.train()
            marker["control"] = {"model": run.final_model_path(), "best": state.get("best")}
        return marker

    def stage_evaluate(self) -> dict:
        import keras

        import cvm.models  # noqa: F401  (registers the layers the .keras files name)
        from cvm.data import load_split
        from cvm.data.pipeline import Pipeline
        from cvm.evaluation import evaluate
        from cvm.evaluation.report import results_dict, write_results
        from cvm.evaluation.run import evaluate_encoder
        from cvm.training.fusion import DUMP_KEYS, load_dump

        out_dir = self.path("results")
        rows = []
        if "two_stream" in self.stages():
            model_path = self.read_marker("two_stream")["model"]
            config = self.retrieval_config("two_stream")
            split = load_split(self.dataset, TEST_SPLIT, self.root)
            pipeline = Pipeline(split, config.image_spec(), normalize=False)
            results = evaluate_encoder(keras.models.load_model(model_path), pipeline, config.eval_batch_size,
                                       method="regmi_two_stream", checkpoint=model_path, out_dir=out_dir,
                                       name="two_stream")
            rows.append(_row(ROW_NAMES["two_stream"], results["metrics"]["ground_to_aerial"],
                             results["n_queries"], model_path))
        dump_path = self.read_marker("dump")["dumps"][TEST_SPLIT]["path"]
        dump = load_dump(dump_path)

        def add(name, method, query, reference, model_path):
            # One results JSON per row (the design's contract), named after the stage.
            raw = evaluate(query, reference)
            write_results(os.path.join(out_dir, f"{name}.json"), results_dict(
                raw, method=method, dataset=self.dataset, split=TEST_SPLIT, n_queries=raw["n_queries"],
                n_references=raw["n_references"], checkpoint=model_path,
                extra={"descriptors": dump_path, "root": self.root}))
            rows.append(_row(ROW_NAMES[name], raw["directions"]["ground_to_aerial"]["metrics"], raw["n_queries"],
                             model_path))

        joint_model = self.read_marker("joint")["model"]
        add("joint", "regmi_joint", dump["ground"], dump["aerial"], joint_model)
        add("joint_synthesized", "regmi_joint", dump["synthesized"], dump["aerial"], joint_model)
        fusion_marker = self.read_marker("fusion")
        control = fusion_marker.get("control")
        for name, marker, synthesized in (("fusion", fusion_marker, dump["synthesized"]),
                                          ("fusion_control", control, np.zeros_like(dump["synthesized"]))):
            if marker is None:
                continue
            fusion = keras.models.load_model(marker["model"])
            ground = np.concatenate([dump["ground"], synthesized], axis=1)
            fused = {k: np.asarray(v) for k, v in fusion({"ground": ground, "aerial": dump["aerial"]}).items()}
            add(name, "regmi_fusion", fused["ground"], fused["aerial"], marker["model"])
        table = {"dataset": self.config.dataset, "split": TEST_SPLIT, "root": self.root,
                 "selection": "test split (as the original)" if self.config.select_on_test
                 else "held-out part of the training split",
                 "top1_percent": "K = floor(N/100) + 1 (the original's convention)",
                 "rows": rows, "dump_keys": list(DUMP_KEYS), "date": _now()}
        os.makedirs(out_dir, exist_ok=True)
        atomic.write_json(os.path.join(out_dir, "ablation.json"), table)
        atomic.write_text(os.path.join(out_dir, "ablation.md"), markdown_table(table))
        self.say("\n" + markdown_table(table))
        return {"table": table, "results": out_dir}


def _row(name: str, metrics: dict, n: int, model: str) -> dict:
    return {"method": name, "r@1": float(metrics["r@1"]), "r@5": float(metrics["r@5"]),
            "r@10": float(metrics["r@10"]), "r@1%": float(metrics["r@1%_floor_plus_1"]),
            "k_1%": int(metrics["k_1%_floor_plus_1"]), "n_queries": int(n), "model": model}


def markdown_table(table: dict) -> str:
    """The ablation as a markdown table (recall in %)."""
    lines = [f"Regmi & Shah ICCV 2019 on {table['dataset']} {table['split']} (model selection: "
             f"{table['selection']}; top-1%: {table['top1_percent']})", "",
             "| method | top-1 | top-5 | top-10 | top-1% | N |", "|---|---:|---:|---:|---:|---:|"]
    for row in table["rows"]:
        lines.append(f"| {row['method']} | {100 * row['r@1']:.2f} | {100 * row['r@5']:.2f} | "
                     f"{100 * row['r@10']:.2f} | {100 * row['r@1%']:.2f} | {row['n_queries']} |")
    return "\n".join(lines) + "\n"


def run_pipeline(config: PipelineConfig, progress: bool = True) -> dict:
    """Run (or resume) the pipeline; returns the evaluation table."""
    return RegmiPipeline(config, progress=progress).run()

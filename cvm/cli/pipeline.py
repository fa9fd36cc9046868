"""cvm pipeline: run a multi-stage paper experiment end to end, resumable.

  cvm pipeline regmi_iccv19 --flagfile experiments/regmi_iccv19_cvusa.cfg --root /data/CVPR_subset --work_dir runs/regmi
  cvm pipeline regmi_iccv19 --dataset synthetic --work_dir runs/regmi_synth ...   (stage 0 writes the data)
  cvm pipeline regmi_iccv19 ... --synthesis_model_dir runs/xfork     reuse a trained X-Fork GAN
  cvm pipeline regmi_iccv19 ... --synthesized_dir DIR                reuse synthesized aerials (DIR/train, DIR/val)

Regmi & Shah, ICCV 2019 (https://arxiv.org/abs/1904.11045): X-Fork GAN -> synthesized aerials ->
two-stream baseline -> joint feature learning -> descriptor dumps -> feature fusion -> evaluation
(work_dir/results/ablation.{json,md}). Each stage is skipped when its marker work_dir/stages/<stage>.json
exists; rerunning a killed pipeline resumes at the stage it was in (training stages from their last
checkpoint). Per-stage training flags: the stage flagfiles, then --retrieval_flag (all three
retrieval stages) and --two_stream_flag / --joint_flag / --fusion_flag (repeatable, e.g.
--joint_flag=--epochs=2). A flag no stage would use is an error before any stage runs.
"""

from __future__ import annotations

from absl import flags

from cvm.cli import common

PIPELINES = ("regmi_iccv19",)

def define_flags(fv=flags.FLAGS) -> None:
    """Define the pipeline flags on `fv` (the global flags by default)."""
    on = {"flag_values": fv}
    flags.DEFINE_enum("dataset", "cvusa", ["cvusa", "ucfop", "synthetic"],
                      "Dataset: cvusa, ucfop, or synthetic (a CVUSA-layout synthetic-world dataset written first).",
                      **on)
    flags.DEFINE_string("root", None, "Dataset root folder (not used with --dataset synthetic).", **on)
    flags.DEFINE_string("work_dir", None, "Folder every stage writes into (and resumes from).", **on)
    flags.DEFINE_string("synthesis_flagfile", "experiments/xfork_pano2aerial_cvusa.cfg",
                        "Flagfile of the X-Fork GAN stage (`cvm train`).", **on)
    flags.DEFINE_multi_string("synthesis_flag", [], "Extra flag for the X-Fork `cvm train` (repeatable).", **on)
    flags.DEFINE_string("synthesis_model_dir", None, "Use this trained X-Fork model_dir instead of training one.",
                        **on)
    flags.DEFINE_string("synthesized_dir", None, "Use these synthesized aerials (DIR/train, DIR/val, named as the "
                        "aerial files) instead of stages xfork and synthesize.", **on)
    flags.DEFINE_integer("synthesis_batch_size", 4, "Batch size of `cvm synthesize`.", **on)
    flags.DEFINE_boolean("two_stream", True, "Train the two-stream baseline (the ablation's first row).", **on)
    for stage, what in (("two_stream", "the two-stream stage"), ("joint", "the joint feature learning stage"),
                        ("fusion", "the feature fusion stage")):
        flags.DEFINE_string(f"{stage}_flagfile", None, f"Flagfile of {what} (default: experiments/regmi_iccv19_"
                            f"{stage}_<dataset>.cfg, the cvusa one for --dataset synthetic).", **on)
    flags.DEFINE_multi_string("retrieval_flag", [], "Training flag applied to the two-stream, joint and fusion "
                              "stages after their flagfiles (repeatable), e.g. "
                              "--retrieval_flag=--precision=mixed_float16.", **on)
    flags.DEFINE_multi_string("two_stream_flag", [], "Training flag of the two-stream stage only (repeatable).",
                              **on)
    flags.DEFINE_multi_string("joint_flag", [], "Training flag of the joint stage only (repeatable).", **on)
    flags.DEFINE_multi_string("fusion_flag", [], "Training flag of the fusion stage only (repeatable).", **on)
    flags.DEFINE_boolean("select_on_test", False, "Select models on the test split, as the original did (parity "
                         "of numbers), instead of the held-out part of the training split the flagfiles name.",
                         **on)
    flags.DEFINE_float("joint_ground_weight", 10.0, "Joint loss weight of L(ground, aerial) (10 in the original).",
                       **on)
    flags.DEFINE_float("joint_synthesized_weight", 1.0, "Joint loss weight of L(synthesized, aerial) (1).", **on)
    flags.DEFINE_boolean("synthesized_zoom", True, "Give the synthesized aerial the real aerial's zoom-crop as well "
                         "as its rotation (a fix; --nosynthesized_zoom: rotation only, as the original).", **on)
    flags.DEFINE_boolean("fusion_control", True, "Also train the fusion layers with the synthesized half of the "
                         "ground input zeroed: the ablation's control row (is fusion's gain the synthesized view's?).",
                         **on)
    flags.DEFINE_integer("dump_batch_size", 32, "Batch size of the descriptor dump.", **on)
    flags.DEFINE_integer("synthetic_pairs", 400, "--dataset synthetic: number of pairs written (train + val).",
                         **on)
    flags.DEFINE_integer("synthetic_seed", 0, "--dataset synthetic: seed of the world.", **on)


define_flags()
FLAGS = flags.FLAGS


def config_from_flags(fv):
    from cvm.pipelines.regmi_iccv19 import PipelineConfig

    return PipelineConfig(
        dataset=fv.dataset, root=fv.root, work_dir=fv.work_dir, synthesis_flagfile=fv.synthesis_flagfile,
        synthesis_flags=tuple(fv.synthesis_flag), synthesis_model_dir=fv.synthesis_model_dir,
        synthesized_dir=fv.synthesized_dir, synthesis_batch_size=fv.synthesis_batch_size,
        two_stream=fv.two_stream, two_stream_flagfile=fv.two_stream_flagfile, joint_flagfile=fv.joint_flagfile,
        fusion_flagfile=fv.fusion_flagfile, retrieval_flags=tuple(fv.retrieval_flag),
        two_stream_flags=tuple(fv.two_stream_flag), joint_flags=tuple(fv.joint_flag),
        fusion_flags=tuple(fv.fusion_flag), select_on_test=fv.select_on_test,
        joint_ground_weight=fv.joint_ground_weight, joint_synthesized_weight=fv.joint_synthesized_weight,
        synthesized_zoom=fv.synthesized_zoom, fusion_control=fv.fusion_control, dump_batch_size=fv.dump_batch_size,
        synthetic_pairs=fv.synthetic_pairs, synthetic_seed=fv.synthetic_seed)


def unused_flags(fv) -> dict:
    """{flag: reason} of the pipeline flags this run does not use (the stage flags are checked by
    RegmiPipeline.check_stage_flags)."""
    unused = {}
    if fv.dataset == "synthetic":
        unused["root"] = "--dataset synthetic writes its own dataset under --work_dir/data"
    else:
        for name in ("synthetic_pairs", "synthetic_seed"):
            unused[name] = f"only --dataset synthetic writes a dataset (this run: --dataset {fv.dataset})"
    if fv.synthesized_dir:
        for name in ("synthesis_flagfile", "synthesis_flag", "synthesis_batch_size"):
            unused[name] = "--synthesized_dir replaces the xfork and synthesize stages"
    elif fv.synthesis_model_dir:
        for name in ("synthesis_flagfile", "synthesis_flag"):
            unused[name] = "--synthesis_model_dir replaces the xfork stage"
    if not fv.two_stream:
        for name in ("two_stream_flagfile", "two_stream_flag"):
            unused[name] = "--notwo_stream skips the two-stream stage"
    return unused


def check_flags(fv, argv) -> None:
    from cvm.flags import use as flag_use

    flag_use.check_verb(fv, unused_flags(fv), [__name__], "cvm pipeline regmi_iccv19")


def main(argv) -> int:
    from cvm.errors import CvmError

    if len(argv) != 2 or argv[1] not in PIPELINES:
        got = " ".join(argv[1:]) or "nothing"
        raise CvmError(f"`cvm pipeline` takes one pipeline name, {' or '.join(PIPELINES)}; got {got}")
    from cvm.pipelines.regmi_iccv19 import run_pipeline

    run_pipeline(config_from_flags(FLAGS))
    return 0


def run(argv) -> None:
    common.run_app("cvm pipeline", argv, main, __doc__, [__name__], check=check_flags)

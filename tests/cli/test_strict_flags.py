"""A flag given (command line or flagfile) that the run will not use is an error naming the flag, why,
and what the run takes; flags.cfg and every experiments/*.cfg stay valid; --help gives both families'
defaults."""

import glob
import os
import re
import subprocess
import sys

import pytest
from absl import flags

from cvm.flags import use as flag_use, synthesis as synthesis_flags, train as train_flags
from cvm.errors import CvmError
from tests.flaglib import train_flag_values

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPERIMENTS = sorted(glob.glob(os.path.join(ROOT, "experiments", "*.cfg")))
PIPELINE_FLAGFILES = ("regmi_iccv19_cvusa.cfg", "regmi_iccv19_ucfop.cfg", "regmi_iccv19_synthetic.cfg")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")




def refused(*argv) -> str:
    with pytest.raises(CvmError) as err:
        flag_use.check_train(train_flag_values(*argv))
    return str(err.value)


@pytest.mark.parametrize("flag", ["--holdout_fraction=0.1", "--best_metric=r@5", "--keep_prob=0.5",
                                  "--augment=cvm_net", "--init=original", "--alpha=5", "--ground_size=32,128",
                                  "--clusters=4", "--mask_radius_m=25"])
def test_retrieval_flags_in_a_gan_run(flag):
    name = flag[2:].split("=")[0]
    message = refused("--method=xfork", flag)
    assert f"--{name} has no effect: it is a retrieval flag and --method xfork is a synthesis GAN" in message
    assert "takes: " in message and "--ngf" in message and "--lambda_l1" in message and "--keep_prob," not in message


@pytest.mark.parametrize("flag, name", [("--dropout=0.2", "dropout"), ("--beta1=0.9", "beta1"),
                                        ("--lambda_l1=10", "lambda_l1"), ("--lambda_seg=1", "lambda_seg"),
                                        ("--lambda_grads=0.2", "lambda_grads"), ("--ngf=8", "ngf"),
                                        ("--noedge_map", "edge_map"), ("--direction=g2a", "direction")])
def test_synthesis_flags_in_a_retrieval_run(flag, name):
    message = refused("--method=cvm_net_i", flag)
    assert f"--{name} has no effect: it is a synthesis flag and --method cvm_net_i is a retrieval method" in message
    assert "--method cvm_net_i takes: " in message and "--clusters" in message


@pytest.mark.parametrize("method, flag, option", [
    ("cvft", "--clusters=8", "clusters"), ("safa", "--clusters=8", "clusters"),
    ("cvm_net_i", "--nonormalize_output", "normalize_output"), ("regmi_two_stream", "--weights=imagenet", "weights"),
    ("cvm_net_ii", "--spatial_maps=4", "spatial_maps"), ("safa", "--sinkhorn_iterations=5", "sinkhorn_iterations")])
def test_model_options_the_method_does_not_take(method, flag, option):
    message = refused(f"--method={method}", flag)
    assert f"--{option} has no effect: the model of --method {method} has no {option} option" in message
    # ... and it lists what the method does take (derived from the builder's signature).
    takes = message.split("takes: ")[1].split("; remove")[0].split(", ")
    assert "--backbone_width" in takes and f"--{option}" not in takes


def test_a_given_option_the_method_takes_is_accepted():
    flag_use.check_train(train_flag_values("--method=cvm_net_ii", "--nonormalize_output", "--clusters=8"))
    flag_use.check_train(train_flag_values("--method=safa", "--spatial_maps=4", "--preset=safa_polar"))
    flag_use.check_train(train_flag_values("--method=xfork", "--lambda_seg=3", "--dropout=0.2"))


def test_val_split_with_holdout_and_settings_that_switch_flags_off():
    message = refused("--holdout_fraction=0.05", "--val_split=val")
    assert "--val_split has no effect: --holdout_fraction=0.05 validates on that part of --train_split" in message
    assert "--best_metric has no effect: the run has no validation" in refused("--val_split=", "--best_metric=r@5")
    assert "--mask_mode has no effect" in refused("--mask_mode=outside")
    assert "--double_zero has no effect" in refused("--augment=joint", "--nodouble_zero")
    assert "--root has no effect: --dataset synthetic" in refused("--root=/data")
    assert "--synthetic_pairs has no effect" in refused("--dataset=cvusa", "--root=/data", "--synthetic_pairs=50")
    assert "--polar_stretch has no effect" in refused("--method=safa", "--nopolar_stretch")
    assert "--aerial_polar has no effect" in refused("--method=safa", "--preset=safa_polar", "--noaerial_polar")
    flag_use.check_train(train_flag_values("--holdout_fraction=0.05", "--best_metric=r@5"))


def test_noedge_map_under_the_edges_preset_and_gan_only_options():
    message = refused("--method=xfork_pano2aerial", "--preset=pano2aerial_edges", "--noedge_map")
    assert "--edge_map has no effect: --preset=pano2aerial_edges appends the edge channel" in message
    flag_use.check_train(train_flag_values("--method=xfork_pano2aerial", "--preset=pano2aerial_edges", "--edge_map"))
    assert "--lambda_grads has no effect" in refused("--method=xfork", "--lambda_grads=0.2")
    assert "--lambda_seg has no effect" in refused("--method=xpix2pix", "--lambda_seg=1")
    assert "--fix_fork_relu has no effect" in refused("--method=xseq", "--fix_fork_relu")
    assert "--homography_size has no effect" in refused("--method=xfork", "--homography_size=10,10")


def test_split_file_aerial_seg_dir_and_inference_mode_are_flags_of_the_synthesis_runs_that_use_them():
    p2a = ("--method=xfork_pano2aerial", "--dataset=cvusa", "--root=/data")
    flag_use.check_train(train_flag_values(*p2a, "--split_file=splits/{split}_xfork_cvusa.txt",
                                           "--aerial_seg_dir=maps", "--inference_mode"))
    flag_use.check_train(train_flag_values("--method=xfork", "--dataset=cvusa", "--root=/d", "--split_file=x.csv",
                                           "--noinference_mode"))
    config = synthesis_flags.config_from_flags(train_flag_values(*p2a, "--split_file=mine_{split}.txt",
                                                                 "--aerial_seg_dir=maps"))
    assert (config.split_file, config.aerial_seg_dir) == ("mine_{split}.txt", "maps")
    for flag in ("--split_file=x.txt", "--aerial_seg_dir=maps", "--inference_mode"):
        name = flag[2:].split("=")[0]
        assert (f"--{name} has no effect: it is a synthesis flag and --method cvm_net_i is a retrieval method"
                in refused("--method=cvm_net_i", flag))
    for flag in ("--split_file=x.txt", "--aerial_seg_dir=maps"):
        assert f"--{flag[2:].split('=')[0]} has no effect: only --dataset cvusa reads a split list" in refused(
            "--method=xfork", "--dataset=dayton", "--root=/d", flag)
    assert "--aerial_seg_dir has no effect: --direction a2g targets panoramas" in refused(
        "--method=xfork_aerial2pano", "--dataset=cvusa", "--root=/d", "--aerial_seg_dir=maps")
    assert "--aerial_seg_dir has no effect: --method xpix2pix has no segmentation output" in refused(
        "--method=xpix2pix", "--direction=g2a", "--dataset=cvusa", "--root=/d", "--aerial_seg_dir=maps")


def test_several_flags_from_a_flagfile_are_named_together(tmp_path):
    flagfile = tmp_path / "f.cfg"
    flagfile.write_text("--method=xfork\n--keep_prob=0.5\n--alpha=3\n")
    with pytest.raises(CvmError) as err:
        flag_use.check_train(train_flag_values(f"--flagfile={flagfile}"))
    assert "--keep_prob has no effect" in str(err.value) and "--alpha has no effect" in str(err.value)
    assert str(err.value).endswith("remove them")


@pytest.mark.parametrize("argv", [
    ["--method=cvft", "--holdout_fraction=0.1", "--dataset=cvusa", "--root=/data", "--augment=joint"],
    ["--method=regmi_two_stream", "--preset=regmi"],
    ["--method=safa", "--preset=safa_polar", "--precomputed_polar", "--dataset=cvact", "--root=/d"],
    ["--method=xfork_pano2aerial", "--preset=pano2aerial_edges"],
    ["--method=xpix2pix", "--dataset=dayton", "--root=/d"],
    ["--method=xseq", "--val_split=val"]])
def test_flags_cfg_is_a_valid_flagfile_of_the_same_run(tmp_path, argv):
    """MODEL_DIR/flags.cfg writes only what the run uses, so `cvm train --flagfile flags.cfg` reruns it."""
    from cvm.synthesis.methods import is_synthesis_method

    fv = train_flag_values(*argv)
    flag_use.check_train(fv)
    synthesis = is_synthesis_method(fv.method)
    config = synthesis_flags.config_from_flags(fv).resolved() if synthesis else train_flags.config_from_flags(fv)
    path = tmp_path / "flags.cfg"
    path.write_text(synthesis_flags.flagfile_text(config) if synthesis else train_flags.flagfile_text(config))
    again = train_flag_values(f"--flagfile={path}")
    flag_use.check_train(again)  # nothing it wrote is refused
    rebuilt = synthesis_flags.config_from_flags(again).resolved() if synthesis else train_flags.config_from_flags(again)
    assert rebuilt == config


@pytest.mark.parametrize("path", EXPERIMENTS, ids=os.path.basename)
def test_every_experiment_flagfile_passes_the_check(path, tmp_path):
    from cvm.cli import pipeline as pipeline_cli
    from cvm.pipelines.regmi_iccv19 import RegmiPipeline

    name = os.path.basename(path)
    if name in PIPELINE_FLAGFILES:
        fv = flags.FlagValues()
        pipeline_cli.define_flags(fv)
        root = [] if "synthetic" in name else [f"--root={tmp_path}"]
        fv(["cvm pipeline", f"--flagfile={path}", f"--work_dir={tmp_path / 'work'}", *root])
        flag_use.check_verb(fv, pipeline_cli.unused_flags(fv), ["cvm.cli.pipeline"], "cvm pipeline")
        RegmiPipeline(pipeline_cli.config_from_flags(fv), progress=False)  # checks every stage's flags
        return
    method = re.search(r"^--method=(\S+)", open(path).read(), re.M).group(1)
    if method in ("regmi_joint", "regmi_fusion"):
        pytest.skip("a pipeline stage flagfile: checked through the pipeline flagfiles")
    root = [] if re.search(r"^--dataset=synthetic$", open(path).read(), re.M) else ["--root=/data"]
    flag_use.check_train(train_flag_values(f"--flagfile={path}", *root, f"--model_dir={tmp_path}"))


def test_documented_overrides_of_the_paper_flagfiles_stay_valid():
    exp = os.path.join(ROOT, "experiments")
    flag_use.check_train(train_flag_values(f"--flagfile={exp}/cvm_net_i_cvusa.cfg", "--holdout_fraction=0.05"))
    flag_use.check_train(train_flag_values(f"--flagfile={exp}/safa_polar_cvusa.cfg", "--precomputed_polar"))


def pipeline_config(tmp_path, *argv):
    from cvm.cli import pipeline as pipeline_cli

    fv = flags.FlagValues()
    pipeline_cli.define_flags(fv)
    fv(["cvm pipeline", "--dataset=cvusa", f"--root={tmp_path}", f"--work_dir={tmp_path / 'work'}", *argv])
    return fv, pipeline_cli.config_from_flags(fv)


@pytest.mark.parametrize("argv, expected", [
    (["--retrieval_flag=--clusters=4"], "--clusters has no effect: no retrieval stage uses it"),
    (["--fusion_flag=--augment=joint"], "--augment has no effect: --method regmi_fusion trains on descriptor dumps"),
    (["--joint_flag=--weights=imagenet"], "--weights has no effect: the model of --method regmi_joint has no weights"),
    (["--joint_flag=--val_split=val"], "--val_split has no effect: --holdout_fraction=0.05"),
    (["--two_stream_flag=--root=/elsewhere"], "--root has no effect: the pipeline gives every stage its own --root"),
    (["--joint_flag=--dataset=ucfop"], "--dataset has no effect: the pipeline runs every stage on its --dataset cvusa"),
    (["--synthesis_flag=--keep_prob=0.5"], "--keep_prob has no effect: it is a retrieval flag"),
])
def test_pipeline_stage_flags_that_a_stage_would_not_use(tmp_path, argv, expected):
    from cvm.pipelines.regmi_iccv19 import RegmiPipeline

    _, config = pipeline_config(tmp_path, *argv)
    with pytest.raises(CvmError, match=re.escape(expected)):
        RegmiPipeline(config, progress=False)


def test_pipeline_flags_and_a_retrieval_flag_some_stage_uses(tmp_path):
    from cvm.cli import pipeline as pipeline_cli
    from cvm.pipelines.regmi_iccv19 import RegmiPipeline

    # keep_prob: not an option of the fusion model, but the image stages take it.
    _, config = pipeline_config(tmp_path, "--retrieval_flag=--keep_prob=1.0", "--retrieval_flag=--ground_size=32,128")
    RegmiPipeline(config, progress=False)
    fv, _ = pipeline_config(tmp_path, "--notwo_stream", "--two_stream_flag=--epochs=1", "--synthetic_pairs=20")
    with pytest.raises(CvmError) as err:
        flag_use.check_verb(fv, pipeline_cli.unused_flags(fv), ["cvm.cli.pipeline"], "cvm pipeline regmi_iccv19")
    assert "--two_stream_flag has no effect: --notwo_stream skips" in str(err.value)
    assert "--synthetic_pairs has no effect" in str(err.value)


def test_help_gives_the_defaults_of_both_method_families():
    texts = train_flags.help_texts()
    assert "Default: 16 for retrieval methods; synthesis methods: the method's: xfork 1" in texts["batch_size"]
    assert "xfork_pano2aerial 4 (16 with --edge_map)" in texts["batch_size"]
    assert "0.0001 for retrieval methods; synthesis methods: 0.0002" in texts["lr"]
    assert "synthesis methods: none" in texts["val_split"]
    assert texts["clusters"].startswith("Retrieval: ") and "(methods: cvm_net_i, cvm_net_ii)" in texts["clusters"]
    assert texts["alpha"].startswith("Retrieval: ")
    assert "Default:" not in texts["seed"]  # the same for both


def cvm(*args):
    return subprocess.run([sys.executable, "-m", "cvm.cli.main", *args], capture_output=True, text=True,
                          timeout=300, env=ENV, cwd=ROOT)


def test_other_verbs_refuse_unused_flags_in_one_line(tmp_path):
    out = cvm("data", "synth", f"--out={tmp_path / 'x'}", "--root=/data", "--stretch")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("cvm data: error: --root has no effect: `cvm data synth` does not read it")
    assert "--stretch has no effect" in line and "cvm data synth takes: " in line and "--pairs" in line
    assert not os.path.exists(tmp_path / "x")  # refused before anything ran
    check = cvm("data", "check", "--dataset=cvusa", f"--root={tmp_path}", "--cvact_mat=/x/ACT_data.mat")
    assert check.returncode == 2 and "--cvact_mat has no effect: only --dataset cvact reads it" in check.stderr


def test_eval_and_synthesize_refuse_root_for_a_synthetic_run(tmp_path):
    from cvm.training.config import TrainConfig
    from cvm.training.synthesis_config import SynthesisConfig

    TrainConfig(model_dir=str(tmp_path / "retrieval")).save(str(tmp_path / "retrieval"))
    SynthesisConfig(method="xfork", model_dir=str(tmp_path / "gan")).save(str(tmp_path / "gan"))
    for verb, run in (("eval", "retrieval"), ("synthesize", "gan")):
        out = cvm(verb, f"--model_dir={tmp_path / run}", "--root=/data")
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert "--root has no effect: --dataset synthetic is rendered in memory" in out.stderr, out.stderr[-2000:]

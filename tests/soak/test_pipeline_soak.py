"""kill -9 of the whole `cvm pipeline regmi_iccv19` process group (as a lost machine: the pipeline and
the `cvm train` / `cvm synthesize` child it waits on) at five moments (steps seeded): inside the X-Fork
GAN's checkpoint write, after a batch of `cvm synthesize` images, inside a joint-stage step, and with
the dump and then the fusion stage done but its marker not written. Each kill is followed by the same command; the last run
ends with the same ablation table, synthesized images and X-Fork weights as an uninterrupted run."""

import hashlib
import json
import os

import numpy as np
import pytest

import soaklib

pytestmark = pytest.mark.slow

# 40 synthetic pairs (32 train, 8 val); X-Fork 16x64 -> 32x32, 1 epoch of 16 steps, a checkpoint every 4;
# the retrieval stages 1/16 width, 24 training pairs after the 25 % holdout: 2 epochs of 3 steps.
RETRIEVAL = ["--ground_size=32,128", "--aerial_size=64,64", "--backbone_width=0.0625", "--output_dim=16",
             "--batch_size=8", "--epochs=2", "--lr=1e-4", "--init=he", "--keep_prob=1.0", "--holdout_fraction=0.25",
             "--nojit_compile", "--eval_batch_size=16", "--checkpoint_every_steps=1", "--log_every_steps=1",
             "--deterministic"]
SYNTHESIS = ["--preset=pano2aerial_small", "--input_size=16,64", "--target_size=32,32", "--d_layers=2", "--epochs=1",
             "--batch_size=2", "--ngf=4", "--ndf=4", "--image_every_steps=0", "--nojit_compile",
             "--checkpoint_every_steps=4", "--deterministic"]
STAGES = ("data", "xfork", "synthesize", "two_stream", "joint", "dump", "fusion", "evaluate")


def pipeline_args(work):
    return ["pipeline", "regmi_iccv19", "--dataset=synthetic", "--synthetic_pairs=40", f"--work_dir={work}",
            "--synthesis_batch_size=2", *[f"--synthesis_flag={f}" for f in SYNTHESIS],
            *[f"--retrieval_flag={f}" for f in RETRIEVAL]]


def files(folder):
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def markers(work):
    return sorted(n[:-5] for n in os.listdir(os.path.join(work, "stages")) if n.endswith(".json"))


def test_pipeline_survives_five_group_kills(tmp_path):
    reference = str(tmp_path / "reference")
    straight = soaklib.cvm(*pipeline_args(reference))
    assert straight.returncode == 0, soaklib.tail(straight)

    rng = np.random.default_rng(13)
    moments = [f"xfork/checkpoint.write@{rng.choice([4, 8, 12, 16])}",
               f"synthesize@{rng.choice(range(2, 32, 2))}",  # images written by the train split's `cvm synthesize`
               f"joint/step@{rng.choice(range(0, 6))}",
               "dump/stage.marker@0", "fusion/stage.marker@0"]
    work = str(tmp_path / "killed")
    shapes = {stage: {k: a.shape for k, a in soaklib.final_checkpoint(os.path.join(reference, stage))[0].items()}
              for stage in ("xfork", "joint")}
    rows = []
    for moment in moments:
        result = soaklib.cvm(*pipeline_args(work), env={"CVM_KILL_AT": moment, "CVM_KILL_GROUP": "1"},
                             start_new_session=True)
        assert result.returncode == -9, f"{moment}\n{soaklib.tail(result)}"
        point, step = soaklib.killed_at(result)
        assert point == moment.split("@")[0].split("/")[-1], (moment, point)
        row = {"moment": moment, "killed_at": step, "stages_done": markers(work)}
        scope = moment.split("/")[0] if "/" in moment else None
        if scope in shapes:  # a trainer: its checkpoints read whole, at most one interval lost
            found = soaklib.check_checkpoints(os.path.join(work, scope), shapes[scope])
            interval = 4 if scope == "xfork" else 1
            row.update(resumes_from=found["newest"], lost_steps=step - found["newest"], partial=found["partial"])
            assert 0 <= row["lost_steps"] <= interval, row
        elif point == "synthesize":  # every image written so far is whole: nothing to redo
            written = os.listdir(os.path.join(work, "synthesized", "train"))
            assert len(written) == step and not [n for n in written if n.endswith(".tmp")], written
            row["images_kept"] = len(written)
        else:  # a stage's work done, its marker not: the stages before it are marked, it is not
            assert markers(work) == sorted(STAGES[:STAGES.index(scope)]), row
        rows.append(row)
    final = soaklib.cvm(*pipeline_args(work))
    assert final.returncode == 0, soaklib.tail(final)
    soaklib.print_rows("pipeline: kill -9 (process group) moments", rows)

    assert markers(work) == sorted(STAGES)
    table = json.load(open(os.path.join(work, "results", "ablation.json")))
    want = json.load(open(os.path.join(reference, "results", "ablation.json")))
    strip = [{k: v for k, v in row.items() if k != "model"} for row in want["rows"]]
    assert [{k: v for k, v in row.items() if k != "model"} for row in table["rows"]] == strip
    for split in ("train", "val"):
        assert files(os.path.join(work, "synthesized", split)) == files(os.path.join(reference, "synthesized", split))
    for stage in ("xfork", "joint"):
        soaklib.assert_same_arrays(soaklib.final_checkpoint(os.path.join(work, stage))[0],
                                   soaklib.final_checkpoint(os.path.join(reference, stage))[0])

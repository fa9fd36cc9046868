"""Using a trained synthesis run: its generators (`load_generators`) and `cvm synthesize` (`synthesize`).

A model_dir written by `cvm.training.gan.SynthesisRun` holds the networks in checkpoints/ (every
network and optimizer) and, when it validated, best/generator_<role>.keras. `synthesize` writes one
image per sample of a split, in the run's test-time mode (`cvm.models.synthesis.generation.Generation`),
named by the sample's out_name; a rerun writes only the missing ones (`CVM_KILL_AT=synthesize@N`
kills after a batch, cvm.faultinject).
"""

from __future__ import annotations

import json
import os
from typing import Optional

import keras
import numpy as np

from cvm import faultinject
from cvm.atomic import write_bytes
from cvm.data.outputs import output_path
from cvm.data.pipeline import describe_split, first_reasons
from cvm.errors import CvmError
from cvm.synthesis.methods import SYNTHESIS_METHODS
from cvm.training.checkpoints import CheckpointManager
from cvm.training.gan import VariableGroup, build_networks, load_split
from cvm.training.synthesis_config import SynthesisConfig


def load_generators(model_dir: str, checkpoint: str = "latest"):
    """(config, {role: generator}, description of the weights) of a trained run, for inference.

    checkpoint: "latest" (newest checkpoints/ckpt-*.npz), "best" (best/generator_*.keras, written when the
    run validated), or a path to a ckpt-*.npz file.
    """
    config = SynthesisConfig.load(model_dir).resolved()
    if checkpoint == "best":
        best_dir = os.path.join(model_dir, "best")
        roles = ("g1", "g2") if SYNTHESIS_METHODS[config.method].sequential else ("g",)
        paths = {r: os.path.join(best_dir, f"generator_{r}.keras") for r in roles}
        missing = [p for p in paths.values() if not os.path.isfile(p)]
        if missing:
            raise CvmError(f"{missing[0]} not found: the run kept no best model (it had no --val_split); use "
                           "--checkpoint latest or a checkpoint path")
        with open(os.path.join(best_dir, "metrics.json")) as f:
            epoch = json.load(f).get("epoch")
        return config, {r: keras.saving.load_model(p) for r, p in paths.items()}, f"best (epoch {epoch})"
    if checkpoint != "latest":
        path = checkpoint
        if not os.path.isfile(path):
            raise CvmError(f"--checkpoint {path}: no such file (give best, latest or a checkpoints/ckpt-*.npz path)")
    networks = build_networks(config)
    group = VariableGroup(list(networks["generators"].values()) + list(networks["discriminators"].values()))
    if checkpoint == "latest":  # the newest one that reads and matches (a damaged one is skipped, saying so)
        path, state = CheckpointManager(os.path.join(model_dir, "checkpoints")).restore_newest(group)
        if path is None:
            raise CvmError(f"{model_dir}/checkpoints holds no checkpoint yet: train first (cvm train --model_dir "
                           f"{model_dir} ...)")
    else:
        state = CheckpointManager.restore(path, group)
    return config, networks["generators"], f"{os.path.basename(path)} (step {state.get('global_step')})"


def _readable(path: str) -> bool:
    import cv2

    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return False
    # A reduced decode reads the whole file (a truncated one fails) at a fraction of the cost.
    return cv2.imread(path, cv2.IMREAD_REDUCED_GRAYSCALE_8) is not None


def _write_image(path: str, image_uint8: np.ndarray) -> None:
    """Encoded by the file's extension and written atomically: a killed run never leaves a half-written image."""
    import cv2

    ext = os.path.splitext(path)[1] or ".png"
    ok, data = cv2.imencode(ext, image_uint8)
    if not ok:
        raise CvmError(f"cannot encode an image as {ext!r} for {path}")
    write_bytes(path, data.tobytes(), fsync=False)


def synthesize(model_dir: str, out_dir: str, split: str = "val", dataset: Optional[str] = None,
               root: Optional[str] = None, batch_size: Optional[int] = None, checkpoint: str = "latest",
               metrics: bool = False, progress: bool = True, inference_mode: Optional[bool] = None,
               split_file: Optional[str] = None) -> dict:
    """Write one generated image per sample of a split, named by the sample's out_name (resumable).

    inference_mode: None: the run's (--inference_mode at training; by default the original test
    script's: batch statistics and dropout for xfork / xseq / xpix2pix, whose scripts never call
    netG:evaluate(); BN moving statistics and no dropout for the ICCV19 forks, whose scripts do). In
    batch-statistics mode an image depends on its batch: a short last batch is filled with earlier
    samples (cvm.models.synthesis.generation.Generation).
    split_file: CVUSA: the list whose rows are synthesized (default the official CSVs, as
    test_xfork_pano2aerial.lua). Every sample is written, including the last of an odd-length list
    (which test_xfork_pano2aerial.lua skipped with batch 2). Outputs that exist and decode are kept, so
    a rerun writes only the missing ones. Returns a summary dict (and the metrics with `metrics=True`).
    """
    from cvm.data.synthesis import SynthesisPipeline, to_uint8_bgr
    from cvm.models.synthesis.generation import Generation

    config, generators, described = load_generators(model_dir, checkpoint)
    dataset = dataset or config.dataset
    inference_mode = config.inference_mode if inference_mode is None else bool(inference_mode)
    batch_size = batch_size or config.eval_batch_size
    generation = Generation(generators, inference_mode, batch_size, what=f"{model_dir}'s generator ({described})")
    samples = load_split(config, split, segmaps=False, dataset=dataset, root=root, split_file=split_file)
    names = samples.out_names
    if len(set(names)) != len(names):
        raise CvmError(f"{dataset} {split}: several samples share an output name; cannot write one file each")
    # Names come from the split's rows: one that would land outside out_dir is refused before any work.
    targets = {name: output_path(out_dir, name, row=f"{dataset} {split} row {i + 1} (id {samples[i].id!r})")
               for i, name in enumerate(names)}
    os.makedirs(out_dir, exist_ok=True)
    pending = [i for i, name in enumerate(names) if not _readable(targets[name])]
    summary = {"model_dir": model_dir, "checkpoint": described, "dataset": dataset, "split": split,
               "out_dir": out_dir, "samples": len(names), "existing": len(names) - len(pending), "written": 0,
               "mode": "inference" if inference_mode else "batch statistics"}
    if pending:
        results_dir = os.path.join(model_dir, "results")
        os.makedirs(results_dir, exist_ok=True)
        pipeline = SynthesisPipeline(samples.subset(pending), config.data_spec(), seed=config.seed,
                                     faults_path=os.path.join(results_dir, f"synthesize_{dataset}_{split}_faults.txt"))
        bar = keras.utils.Progbar(len(pending)) if progress else None
        if progress:
            print(f"synthesizing {len(pending)} of {len(names)} images into {out_dir} ({described}, "
                  f"{summary['mode']})")
        with generation:
            for images, meta in pipeline.eval(batch_size):
                generated = to_uint8_bgr(keras.ops.convert_to_numpy(generation(images["input"], segmentation=False)["image"]))
                for image, name in zip(generated, meta["out_name"].numpy()):
                    _write_image(targets[name.decode()], image)
                summary["written"] += len(generated)
                faultinject.kill_point("synthesize", {"global_step": summary["written"]}, "synthesize")
                if bar is not None:
                    bar.add(len(generated))
        summary["skipped_unreadable"] = pipeline.faults.skipped
        if not summary["written"]:
            raise CvmError(f"no image written: no sample of {describe_split(samples)} could be read; first reasons: "
                           f"{first_reasons(pipeline.faults)}")
    if metrics:
        from cvm.evaluation.synthesis import evaluate_synthesis

        real = load_split(config, split, segmaps=False, dataset=dataset, root=root, split_file=split_file)
        out_path = os.path.join(model_dir, "results", f"synthesis_{dataset}_{split}.json")
        summary["metrics"] = evaluate_synthesis(out_dir, real, out_path=out_path, progress=progress)
        summary["metrics_path"] = out_path
    return summary

"""Regmi & Shah (ICCV 2019) feature fusion: descriptor dumps of the joint model and the fusion trainer.

Paper: https://arxiv.org/abs/1904.11045 (Sec. 3.3); code: `feature_fusion/src/` (seeds.md §3.4).
The joint model's ground, aerial and synthesized-aerial descriptors are dumped for the training and
the test splits (`dump_descriptors`; the original shipped no script for the training-split dump: it
is written here, without augmentation). The fusion model (`RegmiFusion`) then learns
ground' = L2(fc2(concat(ground, synthesized))) and aerial' = L2(fc1(aerial)) with the plain
weighted soft-margin triplet loss (§1.5; no synthesized term), Adam 1e-5, batch 100.

Dump files are .npz with ground, aerial, synthesized ([N, D] float32), index ([N] positions in the
split; pairs whose images could not be read are absent), ids, split, dataset.
"""

from __future__ import annotations

import os
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from cvm import atomic
from cvm.data import holdout
from cvm.data.batching import EpochPipeline
from cvm.errors import CvmError
from cvm.training.config import TrainConfig
from cvm.training.loop import Run, build_loss
from cvm.training.retrieval import RetrievalTrainer

DUMP_KEYS = ("ground", "aerial", "synthesized")
SELECTION_METRIC = "regmi_selection"
SELECTION_HELP = ("top-1% (K = floor(N/100) + 1) with ties broken by top-1 + top-10 + top-1% "
                  "(feature_fusion/train.py): r@1%_fp1 + (r@1 + r@10 + r@1%_fp1) / (4 N)")


def dump_descriptors(model, pipeline, batch_size: int, path: str, progress: bool = False) -> dict:
    """Embed every pair of `pipeline` (a three-view eval pipeline) with a joint model; write `path` (.npz).

    Dropout is off and no augmentation is applied (the pipeline must be built without one). Returns
    the arrays written. The file is written to a temporary name and renamed, never half-written.
    """
    normalize = None if getattr(pipeline, "normalize", True) else pipeline.spec

    @tf.function(reduce_retracing=True)
    def step(features):
        if normalize is not None:
            from cvm.data.pipeline import normalise_batch

            features = {k: normalise_batch(v, normalize) for k, v in features.items()}
        out = model(features, training=False)
        return tuple(tf.cast(out[k], tf.float32) for k in DUMP_KEYS)

    parts = {k: [] for k in (*DUMP_KEYS, "index")}
    bar = keras.utils.Progbar(len(pipeline.split), unit_name="pair") if progress else None
    for features, meta in pipeline.eval(batch_size):
        for key, value in zip(DUMP_KEYS, step(features)):
            parts[key].append(value.numpy())
        parts["index"].append(meta["index"].numpy())
        if bar is not None:
            bar.add(int(meta["index"].shape[0]))
    if not parts["index"]:
        raise CvmError(f"no pair of {pipeline.split.dataset} {pipeline.split.name} could be read; see the fault report")
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    split = pipeline.split
    arrays["ids"] = np.asarray([split[int(i)].id for i in arrays["index"]])
    write_dump(path, arrays, split=split.name, dataset=split.dataset)
    return arrays


def write_dump(path: str, arrays: dict, split: str, dataset: str) -> str:
    with atomic.replacing(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no .npz suffix
        np.savez(f, split=np.asarray(split), dataset=np.asarray(dataset), **arrays)
    return path


def load_dump(path: str) -> dict:
    """The arrays of a descriptor dump; CvmError if it is missing or lacks a field."""
    if not os.path.isfile(path):
        raise CvmError(f"descriptor dump {path} not found: run the pipeline's dump stage (or dump_descriptors) first")
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in (*DUMP_KEYS, "index") if k not in data.files]
        if missing:
            raise CvmError(f"descriptor dump {path} lacks {', '.join(missing)}; dump it again")
        arrays = {k: data[k] for k in data.files}
    dims = {arrays[k].shape[1] for k in DUMP_KEYS}
    if len(dims) != 1 or len({len(arrays[k]) for k in (*DUMP_KEYS, "index")}) != 1:
        raise CvmError(f"descriptor dump {path} has inconsistent shapes "
                       f"{ {k: arrays[k].shape for k in (*DUMP_KEYS, 'index')} }")
    return arrays


def select_rows(arrays: dict, rows) -> dict:
    rows = np.asarray(rows, np.int64)
    return {k: (v[rows] if isinstance(v, np.ndarray) and v.ndim >= 1 and len(v) == len(arrays["index"]) else v)
            for k, v in arrays.items()}


def holdout_rows(arrays: dict, n_pairs: int, fraction: float, seed: int):
    """(train rows, held-out rows) of a dump: the held-out pairs are those `cvm.data.holdout` sets aside
    in a split of n_pairs with the same fraction and seed, so the fusion stage validates on the same
    pairs as the image stages did."""
    from cvm.data.records import Pair, Split

    split = Split("dump", "train", None, [Pair(str(i), str(i), str(i)) for i in range(int(n_pairs))])
    _, held = holdout(split, fraction, seed)
    held_index = {int(p.id) for p in held}
    is_held = np.asarray([int(i) in held_index for i in arrays["index"]])
    return np.flatnonzero(~is_held), np.flatnonzero(is_held)


class _DumpSplit:
    """Just enough of a `Split` for the loop and the evaluator: name, dataset, size, no locations."""

    location_kind = None
    root = None

    def __init__(self, name: str, dataset: str, n: int):
        self.name, self.dataset, self._n = name, dataset, int(n)

    def __len__(self) -> int:
        return self._n


class DescriptorPipeline(EpochPipeline):
    """tf.data batches of fusion inputs from a dump: ground = concat(ground, synthesized), aerial.

    The schedule of every pipeline (`cvm.data.batching`: train order `default_rng([seed, epoch])
    .permutation`, full batches, `skip_batches` to resume; eval in order, partial last batch); the
    rows are in memory, so one thread gathers them. meta["index"] is the dump's pair index.
    """

    normalize = True  # descriptors need no image normalisation

    def __init__(self, arrays: dict, name: str, dataset: str, seed: int = 0, without_synthesized: bool = False):
        index = np.asarray(arrays["index"], np.int64)
        if len(index) == 0:
            raise CvmError(f"the {dataset} {name} descriptor dump has no rows")
        super().__init__(_DumpSplit(name, dataset, len(index)), None, seed, num_parallel_calls=1)
        synthesized = np.asarray(arrays["synthesized"])
        if without_synthesized:  # the control: same layers and training, the synthesized half zeroed
            synthesized = np.zeros_like(synthesized)
        self.ground = np.concatenate([arrays["ground"], synthesized], axis=1).astype(np.float32)
        self.aerial = np.asarray(arrays["aerial"], np.float32)
        self.index = index
        self._pair_index = tf.constant(self.index)

    def sample_spec(self) -> dict:
        return {"ground": (self.ground.shape[1:], np.float32), "aerial": (self.aerial.shape[1:], np.float32)}

    def load_sample(self, index: int, epoch: int, train: bool) -> dict:
        return {"ground": self.ground[index], "aerial": self.aerial[index]}

    def finish_batch(self, batch: dict):
        return ({"ground": batch["ground"], "aerial": batch["aerial"]},
                {"index": tf.gather(self._pair_index, batch["index"])})


def selection_score(metrics: dict, n_references: int) -> float:
    """feature_fusion/train.py's model selection as one number: top-1%, ties broken by top-1 + top-10 + top-1%."""
    top = metrics["r@1%_floor_plus_1"]
    # The tie-break term is below 3 / (4 N) < 1 / N, the smallest top-1% difference: lexicographic order.
    return float(top + (metrics["r@1"] + metrics["r@10"] + top) / (4.0 * max(1, n_references)))


class FusionRun(Run):
    """Trains (or resumes) `RegmiFusion` on descriptor dumps in config.model_dir.

    Args:
      config: TrainConfig of the stage (output_dim, init, lr, batch_size, epochs, alpha, seed,
        holdout_fraction, best_metric: "regmi_selection" for the original's rule, or any r@ metric).
      train_dump: the training split's dump (`dump_descriptors`).
      val_dump: the dump to select on (the test split's, as the original) or None: with
        config.holdout_fraction > 0 the held-out pairs of the image stages (`holdout_rows`) are
        used instead, their other rows are trained on.
      n_train_pairs: size of the training split (for `holdout_rows`; default: max index + 1).
      holdout_seed: the seed the image stages held out with (default config.seed).
      without_synthesized: the ablation's control: the synthesized-aerial half of the ground input is
        zeroed in training and validation, so any gain of the real run over this one is the
        synthesized view's, not the extra linear layer's.

    The last epoch's model is kept as final/model.keras (`final_model_path`: best/ when validated).
    """

    keep_final = True

    def __init__(self, config: TrainConfig, train_dump: str, val_dump: Optional[str] = None,
                 n_train_pairs: Optional[int] = None, holdout_seed: Optional[int] = None, strategy=None,
                 progress: bool = True, without_synthesized: bool = False):
        if config.method != "regmi_fusion":
            raise CvmError(f"the fusion stage trains --method=regmi_fusion, got {config.method!r}")
        self._open_model_dir(config, strategy, progress)

        train = load_dump(train_dump)
        val = None
        if config.holdout_fraction > 0:
            n = int(n_train_pairs) if n_train_pairs else int(train["index"].max()) + 1
            seed = config.seed if holdout_seed is None else int(holdout_seed)
            rest, held = holdout_rows(train, n, config.holdout_fraction, seed)
            train, val = select_rows(train, rest), select_rows(train, held)
            val_name = "train-holdout"
        elif val_dump:
            val = load_dump(val_dump)
            val_name = str(val.get("split", "val"))
        dataset = str(train.get("dataset", "dump"))
        input_dim = int(train["ground"].shape[1])

        from cvm.models import build_model

        with self.strategy.scope():
            self.encoder = build_model("regmi_fusion", input_dim=input_dim, **config.model_kwargs())
            self.trainer = RetrievalTrainer(self.encoder, build_loss(config))
            self._compile()
        self.pipeline = DescriptorPipeline(train, "train", dataset, config.seed, without_synthesized)
        self.val_pipeline = None if val is None else DescriptorPipeline(val, val_name, dataset, config.seed,
                                                                        without_synthesized)
        if self._count_steps() < 1:
            raise CvmError(f"--batch_size {config.batch_size} leaves no full batch in {len(self.pipeline.index)} "
                           "training descriptors")
        self._step_fn = self._make_step_fn()

    def validate(self, epoch: int) -> dict:
        from cvm.evaluation import evaluate
        from cvm.evaluation.embed import embed_split

        emb = embed_split(self.encoder, self.val_pipeline, self.config.eval_batch_size)
        raw = evaluate(emb["ground"], emb["aerial"], directions=("ground_to_aerial",))
        metrics = {k: float(v) for k, v in raw["directions"]["ground_to_aerial"]["metrics"].items()}
        metrics[SELECTION_METRIC] = selection_score(metrics, raw["n_references"])
        if self.chief:
            with self._writer("val").as_default(step=epoch):
                for key, value in metrics.items():
                    tf.summary.scalar(key, value)
            if self.progress:
                shown = ", ".join(f"{k} {100 * v:.2f}%" for k, v in metrics.items() if k.startswith("r@"))
                print(f"validation after epoch {epoch}: {shown} (N = {raw['n_queries']})")
        return metrics

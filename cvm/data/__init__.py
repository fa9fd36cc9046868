"""Datasets: adapters from folders (or the synthetic world) to `Split`s, preprocessing, pipelines.

`load_split(dataset, split, root=...)` is the one entry point the trainers and the CLI use.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from cvm.data import registry
from cvm.data.records import Pair, Split
from cvm.errors import CvmError

# The datasets a retrieval model trains and evaluates on (cvm.data.registry holds every dataset).
DATASETS = registry.names("retrieval")


def load_split(dataset: str, split: str, root: Optional[str] = None, *, image_spec=None,
               synthetic_pairs: int = 1000, synthetic_seed: int = 0, val_fraction: float = 0.2,
               **options) -> Split:
    """The records of one split of a dataset.

    Args:
      dataset: a retrieval dataset of cvm.data.registry (DATASETS).
      split: the split name ("train", "val", "test"; each adapter lists its own).
      root: the dataset folder (not used by "synthetic").
      image_spec: for "synthetic", the sizes to render at (so that no resize is needed).
      synthetic_pairs, synthetic_seed, val_fraction: size and seed of the synthetic world's dataset.
      **options: adapter options (CVACT: layout, aerial, mat_path).
    """
    if dataset == "synthetic":
        from cvm.data.synthetic import make_synthetic_split

        kwargs = {}
        if image_spec is not None:
            kwargs["ground_size"] = tuple(image_spec.ground_size)
            # A polar aerial is computed from a full-resolution tile, as SAFA did from the 750 px CVUSA one.
            kwargs["aerial_size"] = 256 if image_spec.aerial_polar else int(image_spec.aerial_size[0])
        if split == "test":
            split = "val"
        return make_synthetic_split(split, pairs=synthetic_pairs, seed=synthetic_seed,
                                    val_fraction=val_fraction, **kwargs)
    entry = registry.get(dataset, "retrieval")
    if root is None:
        raise CvmError(f"--root is required for --dataset {dataset}: the folder holding its files "
                       "(see README 'Datasets')")
    return entry.adapter(root, split, **options)


def holdout(split: Split, fraction: float, seed: int = 0) -> tuple:
    """(rest, held_out): a seeded random `fraction` of the split set aside for model selection.

    The originals selected models on the test split; this is the proper alternative.
    """
    if not 0.0 < fraction < 1.0:
        raise CvmError(f"holdout fraction must be in (0, 1), got {fraction}")
    n = len(split)
    count = max(1, int(round(n * fraction)))
    if count >= n:
        raise CvmError(f"holdout of {fraction} leaves no training pairs in {split!r}")
    order = np.random.default_rng([seed, 7919]).permutation(n)
    held = sorted(order[:count].tolist())
    rest = sorted(order[count:].tolist())
    return split.subset(rest, name=split.name), split.subset(held, name=f"{split.name}-holdout")


__all__ = ["DATASETS", "Pair", "Split", "holdout", "load_split"]

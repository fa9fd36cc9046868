"""Load the encoder of a trained run (its best model or its latest checkpoint) from a model_dir."""

from __future__ import annotations

import os

from cvm.errors import CvmError
from cvm.training.checkpoints import CheckpointManager
from cvm.training.config import TrainConfig


def load_encoder(model_dir: str, checkpoint: str = "best"):
    """(encoder, config, description) of a run.

    checkpoint: "best" (best/model.keras, falling back to the latest checkpoint when the run has
    no validation), "latest" (the newest checkpoints/ckpt-*.npz), or a path of either kind.
    """
    import keras

    import cvm.models  # noqa: F401  (registers the custom layers a .keras file names; `import cvm` is light)
    from cvm.training.loop import build_encoder, set_precision

    config = TrainConfig.load(model_dir)
    best = os.path.join(model_dir, "best", "model.keras")
    if checkpoint == "best" and not os.path.isfile(best):
        checkpoint = "latest"
    if checkpoint == "best" or checkpoint.endswith(".keras"):
        path = best if checkpoint == "best" else checkpoint
        if not os.path.isfile(path):
            raise CvmError(f"model file not found: {path}")
        set_precision("float32")
        return keras.models.load_model(path, compile=False), config, path
    path = checkpoint
    manager = CheckpointManager(os.path.join(model_dir, "checkpoints"))
    if checkpoint == "latest" and manager.latest() is None:
        raise CvmError(f"{model_dir} has neither best/model.keras nor checkpoints/ckpt-*.npz: "
                       "train it first (cvm train --model_dir ...)")
    if checkpoint != "latest" and not os.path.isfile(path):
        raise CvmError(f"checkpoint not found: {path}")
    set_precision("float32")
    import dataclasses

    encoder = build_encoder(dataclasses.replace(config, weights=None))  # weights come from the checkpoint
    if checkpoint == "latest":  # the newest one that reads and matches (a damaged one is skipped, saying so)
        path, state = manager.restore_newest(encoder)
    else:
        state = CheckpointManager.restore(path, encoder)
    return encoder, config, f"{path} (epoch {state['epoch']}, step {state['step']})"

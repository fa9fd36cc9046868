"""`--method dsm` through the retrieval trainer: its loss, FoV training crops and the fixed orientation test set."""

import glob
import json
import os

import numpy as np

from cvm.training.config import TrainConfig
from cvm.training.loop import Run, build_encoder, build_loss

TINY = dict(method="dsm", synthetic_pairs=48, ground_size=(32, 64), aerial_size=(32, 64), aerial_polar=True,
            fov_deg=90.0, azimuth_shift=True, backbone_width=0.125, map_channels=4, init="he", keep_prob=1.0,
            freeze_blocks=0, batch_size=8, epochs=1, eval_batch_size=16, jit_compile=False, lr=1e-4)


def test_dsm_config_uses_its_loss_and_no_eval_crop():
    config = TrainConfig(**TINY)
    config.validate()
    assert config.correlation_method() and config.eval_augment_spec() is None
    assert config.orientation_protocol() == {"fov_deg": 90.0, "seed": 2019, "wrap": True}
    assert "fov_test_seed" not in config.unused_fields()
    plain = TrainConfig(method="cvm_net_i")
    assert not plain.correlation_method() and plain.orientation_protocol() is None
    assert {"fov_test_seed", "orientation_wrap", "map_channels"} <= set(plain.unused_fields())
    encoder = build_encoder(config)
    assert type(build_loss(config, encoder)).__name__ == "DSMTripletLoss"
    assert type(build_loss(plain)).__name__ == "WeightedSoftMarginTripletLoss"


def test_dsm_run_trains_and_validates_on_the_persisted_test_set(tmp_path):
    config = TrainConfig(model_dir=str(tmp_path / "dsm"), **TINY)
    state = Run(config, progress=False).train()
    assert np.isfinite(state["best"]["score"])
    folder = os.path.join(config.model_dir, "results", "validation")
    results = json.load(open(os.path.join(folder, "epoch001_fov90.json")))
    test_set = json.load(open(os.path.join(folder, "epoch001_fov90_test_set.json")))
    assert results["fov_protocol"]["seed"] == 2019 and results["fov_protocol"]["unknown_orientation"]
    assert results["n_queries"] == len(test_set["labels"]) == 48 - int(round(48 * 0.8))
    orientation = results["orientation"]
    # 64 polar columns / 8 = 8 azimuth bins of 45 degrees; exact-bin accuracy can only be below the +-1 one.
    assert orientation["orientation_bins"] == 8 and orientation["orientation_bin_deg"] == 45.0
    assert orientation["n_orientations"] == results["n_queries"] and orientation["orientation_wrap"]
    assert 0.0 <= orientation["orientation_acc@0bin"] <= orientation["orientation_acc@1bin"] <= 1.0
    assert 0.0 <= orientation["orientation_error_deg_median"] <= 180.0
    assert 0.0 <= results["metrics"]["ground_to_aerial"]["r@1"] <= 1.0
    assert glob.glob(os.path.join(config.model_dir, "best", "model.keras"))

"""--sampler=neighbours through the retrieval trainer: GPS then similarity batches, persisted, exact resume."""

import os

import numpy as np
import pytest

from cvm.data import sampling
from cvm.errors import CvmError
from cvm.training.config import TrainConfig
from cvm.training.loop import Run

TINY = dict(method="sample4geo", backbone="convnext_tiny", backbone_width=0.25, backbone_depths=(1, 1, 1, 1),
            synthetic_pairs=40, ground_size=(32, 128), aerial_size=(64, 64), batch_size=8, epochs=3,
            eval_batch_size=16, jit_compile=False, lr=1e-3, val_split="", sampler="neighbours",
            neighbour_pool=8, neighbour_select=4, sampler_refresh_epochs=2)


class Crash(Exception):
    pass


class CrashingRun(Run):
    """A run that dies right after global step `crash_at` (its last checkpoint: checkpoint_every_steps)."""

    crash_at = None

    def after_step(self, batch, state):
        super().after_step(batch, state)
        if state["global_step"] == self.crash_at:
            raise Crash()


def weights(run):
    return [np.asarray(v) for v in run.encoder.weights]


def test_neighbour_batches_follow_the_schedule_and_the_tables_are_kept(tmp_path):
    config = TrainConfig(model_dir=str(tmp_path / "run"), **TINY)
    config.validate()
    run = Run(config, progress=False)
    seen = []
    real_order = run.sampler.epoch_order

    def order(epoch):
        out = real_order(epoch)
        seen.append((epoch, run.sampler.source(epoch), out))
        return out

    run.sampler.epoch_order = order
    run.train()
    sources = {epoch: source for epoch, source, _ in seen}
    assert sources[0] == sources[1] == "GPS neighbours" and "epoch 2" in sources[2]
    # Epochs 0-1 grow batches from the world's coordinates: GPS table of the training split (32 pairs).
    gps = sampling.gps_neighbours(run.train_split.locations(), "metres", 8)
    expected = sampling.neighbour_batches(32, 8, np.random.default_rng([0, 0, sampling.SALT]), gps, 4,
                                          run.sampler.aerial_keys)
    np.testing.assert_array_equal([o for e, _, o in seen if e == 0][0], expected)
    # Epoch 2's table: the trained model's hardest aerials for each ground view, written beside the run.
    table = np.load(os.path.join(config.model_dir, "sampler", "similarity_e002.npy"))
    assert table.shape == (32, 8) and (table != np.arange(32)[:, None]).all()
    assert not os.path.exists(os.path.join(config.model_dir, "sampler", "similarity_e001.npy"))


def test_a_crashed_run_resumes_mid_epoch_on_the_same_batches(tmp_path):
    common = dict(TINY, epochs=4, checkpoint_every_steps=1, keep_checkpoints=2)
    straight = Run(TrainConfig(model_dir=str(tmp_path / "straight"), **common), progress=False)
    straight.train()
    # 4 steps an epoch: die after global step 10 = epoch 3 (0-based 2), step 2, after the similarity refresh.
    crashing = CrashingRun(TrainConfig(model_dir=str(tmp_path / "crashed"), **common), progress=False)
    crashing.crash_at = 10
    with pytest.raises(Crash):
        crashing.train()
    assert os.path.isfile(tmp_path / "crashed" / "sampler" / "similarity_e002.npy")
    resumed = Run(TrainConfig(model_dir=str(tmp_path / "crashed"), **common), progress=False)

    def no_embedding():
        raise AssertionError("the resumed run must read the killed run's table, not embed again")

    resumed.sampler.embed = no_embedding
    state = resumed.train()
    assert state["global_step"] == 16
    for a, b in zip(weights(straight), weights(resumed)):
        np.testing.assert_array_equal(a, b)


def test_gps_batches_need_coordinates_and_unused_sampler_flags_are_named(tmp_path):
    from cvm.data.synthetic.write import write_dataset

    root = tmp_path / "cvusa"
    write_dataset(str(root), "cvusa", pairs=20, seed=0, progress=False, workers=1, segmaps=False)
    os.remove(root / "split_locations" / "all.csv")
    config = TrainConfig(model_dir=str(tmp_path / "run"), **dict(TINY, dataset="cvusa", root=str(root),
                                                                  synthetic_pairs=1000))
    with pytest.raises(CvmError, match="--sampler_gps needs coordinates.*split_locations/all.csv"):
        Run(config, progress=False)
    unused = TrainConfig(sampler="shuffle").unused_fields()
    assert {"neighbour_pool", "neighbour_select", "sampler_gps", "sampler_refresh_epochs"} <= set(unused)
    assert "--sampler=neighbours" in unused["neighbour_pool"]
    with pytest.raises(CvmError, match="--neighbour_select must be in"):
        TrainConfig(sampler="neighbours", neighbour_pool=4, neighbour_select=5).validate()
    with pytest.raises(CvmError, match="matches by correlation"):
        TrainConfig(method="dsm", sampler="neighbours", sampler_refresh_epochs=2).validate()

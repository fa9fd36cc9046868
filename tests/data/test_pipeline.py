"""tf.data pipelines: order, determinism, resumption, fault skipping, evaluation coverage."""

import os

import numpy as np
import pytest

from cvm.data import augment, images
from cvm.data.pipeline import Pipeline
from cvm.errors import CvmError

from tests.conftest import write_pairs

SPEC = images.ImageSpec(ground_size=(28, 154), aerial_size=(48, 48))


def batches(ds, limit=None):
    out = []
    for i, (features, meta) in enumerate(ds):
        if limit is not None and i >= limit:
            break
        out.append((features["ground"].numpy(), features["aerial"].numpy(), meta["index"].numpy(), meta["yaw"].numpy()))
    return out


def test_train_epochs_follow_the_seeded_order_with_full_batches(toy_split):
    pipe = Pipeline(toy_split, SPEC, seed=5)
    got = batches(pipe.train(batch_size=4, epochs=2))
    assert len(got) == 2 * (13 // 4)  # the tail of each epoch is dropped, batches stay full
    assert all(g.shape == (4, 28, 154, 3) and a.shape == (4, 48, 48, 3) for g, a, _, _ in got)
    for epoch in range(2):
        seen = np.concatenate([b[2] for b in got[3 * epoch:3 * epoch + 3]])
        np.testing.assert_array_equal(seen, pipe.epoch_order(epoch)[:12])
    # Reshuffled every epoch, and the order is a function of the seed.
    assert not np.array_equal(pipe.epoch_order(0), pipe.epoch_order(1))
    assert not np.array_equal(pipe.epoch_order(0), Pipeline(toy_split, SPEC, seed=6).epoch_order(0))


def test_augmented_training_is_deterministic_and_resumable(toy_split):
    aug = augment.AugmentSpec(rotation="joint", joint_flip=0.5, azimuth_shift=True)
    full = batches(Pipeline(toy_split, SPEC, aug, seed=1).train(batch_size=3, epochs=3))
    again = batches(Pipeline(toy_split, SPEC, aug, seed=1, num_parallel_calls=1).train(batch_size=3, epochs=3))
    for (g1, a1, i1, y1), (g2, a2, i2, y2) in zip(full, again):
        np.testing.assert_array_equal(g1, g2)
        np.testing.assert_array_equal(a1, a2)
        np.testing.assert_array_equal(y1, y2)
    # Resume in epoch 1 after its first 2 batches: the rest of the stream is the same.
    resumed = batches(Pipeline(toy_split, SPEC, aug, seed=1).train(batch_size=3, start_epoch=1, epochs=3,
                                                                    skip_batches=2))
    steps = 13 // 3
    assert len(resumed) == len(full) - steps - 2
    for (g1, a1, i1, _), (g2, a2, i2, _) in zip(full[steps + 2:], resumed):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(g1, g2)
        np.testing.assert_array_equal(a1, a2)
    # Augmentation differs between epochs (the draw depends on the epoch).
    yaws = {e: {} for e in range(3)}
    for b, (_, _, idx, yaw) in enumerate(full):
        for i, y in zip(idx, yaw):
            yaws[b // steps][int(i)] = float(y)
    common = set(yaws[0]) & set(yaws[1])
    assert common and all(yaws[0][i] != yaws[1][i] for i in common)


def test_eval_sees_every_sample_once_in_order_with_a_partial_last_batch(toy_split):
    got = batches(Pipeline(toy_split, SPEC).eval(batch_size=5))
    assert [len(b[2]) for b in got] == [5, 5, 3]
    np.testing.assert_array_equal(np.concatenate([b[2] for b in got]), np.arange(13))
    features, meta = next(iter(Pipeline(toy_split, SPEC).eval(batch_size=5)))
    np.testing.assert_allclose(meta["location"].numpy(), [[100.0 * i, -50.0 * i] for i in range(5)])


def test_eval_fov_test_set_is_fixed_by_the_seed(toy_split):
    aug = augment.AugmentSpec(azimuth_shift=True, fov_deg=90)
    first = batches(Pipeline(toy_split, SPEC, aug, seed=2019).eval(batch_size=13))[0]
    second = batches(Pipeline(toy_split, SPEC, aug, seed=2019).eval(batch_size=13))[0]
    other = batches(Pipeline(toy_split, SPEC, aug, seed=7).eval(batch_size=13))[0]
    assert first[0].shape == (13, 28, round(154 / 4), 3)
    np.testing.assert_array_equal(first[3], second[3])
    np.testing.assert_array_equal(first[0], second[0])
    assert not np.array_equal(first[3], other[3])
    assert np.all((first[3] >= 0) & (first[3] < 360))


def test_bad_files_are_skipped_named_and_reported(tmp_path):
    split = write_pairs(str(tmp_path / "bad"), 12, ext=".jpg")
    os.remove(split[1].aerial_path)  # missing
    open(split[4].ground_path, "wb").close()  # zero bytes
    data = open(split[7].aerial_path, "rb").read()
    open(split[7].aerial_path, "wb").write(data[: len(data) // 2])  # truncated
    open(split[9].ground_path, "wb").write(b"this is not an image")  # corrupt
    report = str(tmp_path / "run" / "faults.txt")
    pipe = Pipeline(split, SPEC, augment.CVM_NET, seed=0, faults_path=report)
    got = batches(pipe.train(batch_size=2, epochs=2))
    assert len(got) == 2 * (8 // 2)  # 8 good samples per epoch, full batches only
    assert not set(np.concatenate([b[2] for b in got])) & {1, 4, 7, 9}
    lines = open(report).read().splitlines()
    assert len(lines) == 4  # each bad file once, though met in both epochs
    text = "\n".join(lines)
    assert f"{split[1].aerial_path}\tmissing" in text
    assert f"{split[4].ground_path}\tzero-byte file" in text
    assert f"{split[7].aerial_path}\ttruncated image" in text
    assert f"{split[9].ground_path}\tunreadable image" in text
    assert len(pipe.faults) == 4 and pipe.faults.skipped == 8
    # Evaluation drops the bad pairs from both sides and says which remain.
    kept = np.concatenate([b[2] for b in batches(Pipeline(split, SPEC).eval(batch_size=5))])
    np.testing.assert_array_equal(kept, [0, 2, 3, 5, 6, 8, 10, 11])


def test_cache_gives_the_same_batches(toy_split):
    aug = augment.CVM_NET
    plain = batches(Pipeline(toy_split, SPEC, aug, seed=3).train(batch_size=4, epochs=2))
    cached = batches(Pipeline(toy_split, SPEC, aug, seed=3, cache=True).train(batch_size=4, epochs=2))
    for (g1, a1, _, _), (g2, a2, _, _) in zip(plain, cached):
        np.testing.assert_array_equal(g1, g2)
        np.testing.assert_array_equal(a1, a2)


def test_user_errors(toy_split):
    with pytest.raises(CvmError, match="--batch_size 20 is larger"):
        Pipeline(toy_split, SPEC).train(batch_size=20)
    with pytest.raises(CvmError, match="has no pairs"):
        Pipeline(toy_split.subset([]), SPEC)

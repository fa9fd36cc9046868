"""The shared batching engine: order, dropped samples, epoch boundaries, resume, thread independence."""

import random
import threading
import time

import numpy as np
import pytest

from cvm.data.batching import EpochPipeline, loaded_batches


def reference_batches(items, bad, batch_size, drop_remainder, with_epochs=False):
    """Independent restatement: group (epoch, index) by epoch, drop bad, cut into batches."""
    out, current, current_epoch = [], [], None
    for epoch, index in items:
        if current and epoch != current_epoch:
            if not drop_remainder:
                out.append((current_epoch, current))
            current = []
        current_epoch = epoch
        if index in bad:
            continue
        current.append(index)
        if len(current) == batch_size:
            out.append((epoch, current))
            current = []
    if current and not drop_remainder:
        out.append((current_epoch, current))
    return out if with_epochs else [b for _, b in out]


def jittery_load(bad):
    """Loads a sample after a random short sleep, so threads finish out of order."""
    rng = random.Random(0)
    lock = threading.Lock()

    def load(epoch, index):
        with lock:
            delay = rng.random() * 0.002
        time.sleep(delay)
        if index in bad:
            return None
        return {"value": np.full((2,), 10 * epoch + index, np.int32)}

    return load


@pytest.mark.parametrize("drop_remainder", [True, False])
@pytest.mark.parametrize("workers", [1, 3, 8])
def test_batches_match_reference_whatever_the_threads(drop_remainder, workers):
    items = [(0, i) for i in (4, 1, 7, 0, 3, 2, 6, 5)] + [(1, i) for i in (2, 5, 0, 7, 1, 6, 3, 4)]
    bad = {3, 6}
    got = list(loaded_batches(jittery_load(bad), items, 4, drop_remainder, workers))
    expected = reference_batches(items, bad, 4, drop_remainder, with_epochs=True)
    assert [b["index"].tolist() for b in got] == [indices for _, indices in expected]
    for batch, (epoch, indices) in zip(got, expected):  # each sample's payload, stacked in order
        expected_values = np.repeat((10 * epoch + np.array(indices, np.int32))[:, None], 2, axis=1)
        np.testing.assert_array_equal(batch["value"], expected_values)
    sizes = [len(indices) for _, indices in expected]
    assert sizes == ([4, 4] if drop_remainder else [4, 2, 4, 2])  # no batch spans the two epochs


def test_skip_batches_resumes_with_the_batches_that_followed():
    items = [(0, i) for i in range(10)] + [(1, i) for i in range(10)]
    load = jittery_load({2})
    full = [b["index"].tolist() for b in loaded_batches(load, items, 3, True, 2)]
    resumed = [b["index"].tolist() for b in loaded_batches(load, items, 3, True, 2, skip_batches=2)]
    assert full == [[0, 1, 3], [4, 5, 6], [7, 8, 9], [0, 1, 3], [4, 5, 6], [7, 8, 9]]
    assert resumed == full[2:]


def test_an_abandoned_iterator_stops_loading():
    calls = []

    def load(epoch, index):
        calls.append(index)
        time.sleep(0.001)
        return {"value": np.zeros((1,), np.float32)}

    def forever():
        i = 0
        while True:
            yield 0, i
            i += 1

    gen = loaded_batches(load, forever(), 4, True, 2)
    assert next(gen)["index"].tolist() == [0, 1, 2, 3]
    gen.close()  # what tf.data does when `.take(n)` is done with the generator
    seen = len(calls)
    time.sleep(0.05)
    assert len(calls) == seen  # nothing loads after the close
    assert seen <= 4 + max(2 * 4, 4 * 2) + 2  # at most the look-ahead window was in flight


class _Split:
    name, dataset, root = "train", "toy", None

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


class ToyPipeline(EpochPipeline):
    def __init__(self, n, bad=(), seed=0, workers=None):
        super().__init__(_Split(n), None, seed, num_parallel_calls=workers)
        self.bad = set(bad)

    def sample_spec(self):
        return {"x": ((3,), np.float32)}

    def load_sample(self, index, epoch, train):
        if index in self.bad:
            return None
        return {"x": np.array([index, epoch, float(train)], np.float32)}

    def finish_batch(self, batch):
        return {"x": batch["x"] * 2}, {"index": batch["index"]}


def test_epoch_pipeline_train_and_eval_against_the_permutation():
    pipe = ToyPipeline(11, bad={4}, seed=3, workers=3)
    got = [(f["x"].numpy(), m["index"].numpy()) for f, m in pipe.train(3, start_epoch=1, epochs=3)]
    expected_items = [(e, int(i)) for e in (1, 2) for i in np.random.default_rng([3, e]).permutation(11)]
    expected = reference_batches(expected_items, {4}, 3, True)
    assert [m.tolist() for _, m in got] == expected
    epochs = [1] * 3 + [2] * 3  # 10 usable samples per epoch -> 3 full batches each
    for (x, m), epoch in zip(got, epochs):
        np.testing.assert_array_equal(x, 2 * np.stack([m, np.full(3, epoch), np.ones(3)], axis=1).astype(np.float32))
    ev = [m["index"].numpy().tolist() for _, m in pipe.eval(4)]
    assert ev == [[0, 1, 2, 3], [5, 6, 7, 8], [9, 10]]
    assert pipe.steps_per_epoch(3) == 3


def test_train_batches_have_a_static_shape():
    pipe = ToyPipeline(8)
    ds = pipe.train(4, epochs=1)
    assert ds.element_spec[0]["x"].shape.as_list() == [4, 3]
    assert pipe.eval(4).element_spec[0]["x"].shape.as_list() == [None, 3]


def test_batch_larger_than_the_split_is_an_error():
    from cvm.errors import CvmError

    with pytest.raises(CvmError, match="--batch_size 9 is larger than the toy train split"):
        ToyPipeline(8).train(9)

"""--strategy multi_worker: two worker processes on localhost train one model together."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from cvm.training.checkpoints import CheckpointManager


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workers_on_localhost(tmp_path):
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    common = ["--strategy=multi_worker", "--synthetic_pairs=40", "--ground_size=32,128", "--aerial_size=64,64",
              "--batch_size=4", "--output_dim=16", "--clusters=4", "--keep_prob=1.0", "--epochs=1",
              "--steps_per_epoch=3", "--val_split=", "--nojit_compile"]
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        model_dir = tmp_path / ("chief" if index == 0 else "worker1")
        procs.append(subprocess.Popen([sys.executable, "-m", "cvm.cli.main", "train", f"--model_dir={model_dir}",
                                       *common], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=420) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    chief = CheckpointManager(str(tmp_path / "chief" / "checkpoints")).latest()
    assert chief is not None and CheckpointManager.read_state(chief)["global_step"] == 3
    assert CheckpointManager(str(tmp_path / "worker1" / "checkpoints")).latest() is None  # only the chief writes
    with np.load(chief) as data:
        assert all(np.all(np.isfinite(data[k])) for k in data.files)

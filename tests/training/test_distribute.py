"""tf.distribute: 2 replicas of batch B train like one replica of batch 2B (descriptors gathered)."""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_mirrored_two_replicas_equal_one_device_on_the_global_batch():
    out = subprocess.run([sys.executable, os.path.join(HERE, "distribute_check.py")], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert abs(result["loss_single"] - result["loss_mirrored"]) < 1e-5, result
    # One SGD step (lr 1) moved the weights by `update`; both runs moved them identically.
    assert result["update"] > 1e-4, result
    assert result["weight_diff"] < 1e-5 * max(1.0, result["update"]) + 1e-6, result
    # FusedAdam on mirrored variables: the replicas stay identical and the weights move by ~lr.
    assert result["adam_sync"] == 0.0 and 5e-4 < result["adam_update"] < 2e-3, result

"""100 bad files in a 1,000-pair CVUSA-layout folder: `cvm data check` names all 100, `cvm train` (killed
once mid-epoch and resumed) and `cvm eval` complete, faults.txt names each unreadable one exactly once,
and the counts of the results JSON are exact.

The folder holds official-size files (750x750 aerials, 224x1232 panoramas) of 20 rendered pairs, hard-
linked 50 times each (each bad file is a new file, so the others stay intact). The 100 bad files, in
100 distinct pairs (a pair is dropped at its first bad file, so two in one pair could not both be
named), are spread over six kinds: truncated, zero-byte, wrong size, not an image, a directory where
the file should be, and (not as root, who reads anything) unreadable permissions. A wrong-size image
decodes and is resized like every image (cvm.data.check: a warning, not a fault), so training uses it
and faults.txt, the list of skipped files, does not name it; `cvm data check` does.
"""

import csv
import json
import os

import cv2
import numpy as np
import pytest

import soaklib

pytestmark = pytest.mark.slow
PAIRS, TRAIN, BAD = 1000, 800, 100


def kinds():
    return ["truncated", "zero-byte", "wrong size", "not an image", "directory"] + \
        ([] if os.geteuid() == 0 else ["unreadable"])


def make_folder(root, source):
    """1,000 pairs in the CVUSA layout, hard links to the 20 pairs of `source`."""
    for folder in ("bingmap/19", "streetview/panos", "splits"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    rows = []
    for i in range(PAIRS):
        name, src = f"{i + 1:07d}", f"{i % 20 + 1:07d}"
        aerial, ground = f"bingmap/19/{name}.jpg", f"streetview/panos/{name}.jpg"
        os.link(os.path.join(source, "bingmap/19", f"{src}.jpg"), os.path.join(root, aerial))
        os.link(os.path.join(source, "streetview/panos", f"{src}.jpg"), os.path.join(root, ground))
        rows.append([aerial, ground, f"streetview/annotations/{name}.png"])
    for csv_name, part in (("train-19zl.csv", rows[:TRAIN]), ("val-19zl.csv", rows[TRAIN:])):
        with open(os.path.join(root, "splits", csv_name), "w", newline="") as f:
            csv.writer(f).writerows(part)
    return rows


def spoil(path, kind):
    data = open(path, "rb").read()
    os.remove(path)  # a hard link: the other copies keep the good bytes
    if kind == "directory":
        os.mkdir(path)
        return
    with open(path, "wb") as f:
        if kind == "truncated":
            f.write(data[:len(data) // 2])
        elif kind == "wrong size":
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            f.write(cv2.imencode(".jpg", cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2)))[1].tobytes())
        elif kind == "not an image":
            f.write(b"<html>this is not an image</html>\n" * 20)
        elif kind == "unreadable":
            f.write(data)
        elif kind != "zero-byte":
            raise ValueError(kind)
    if kind == "unreadable":
        os.chmod(path, 0)


def read_faults(path):
    with open(path) as f:
        return [line.rstrip("\n").split("\t")[0] for line in f if line.strip()]


def test_hundred_bad_files_in_a_thousand_pairs(tmp_path):
    from cvm.data.synthetic import write_dataset

    source, root = str(tmp_path / "source"), str(tmp_path / "data")
    write_dataset(source, layout="cvusa", pairs=20, seed=0, val_fraction=0.2, progress=False, segmaps=False)
    rows = make_folder(root, source)
    rng = np.random.default_rng(100)
    chosen = rng.choice(PAIRS, size=BAD, replace=False)
    bad = {}  # path -> (kind, pair index)
    for kind, pairs in zip(kinds(), np.array_split(chosen, len(kinds()))):
        for i in pairs:
            path = os.path.join(root, rows[i][int(rng.integers(0, 2))])  # the aerial or the ground file
            spoil(path, kind)
            bad[path] = (kind, int(i))
    assert len(bad) == BAD
    unreadable = {p for p, (kind, _) in bad.items() if kind != "wrong size"}
    bad_val_pairs = sum(1 for p in unreadable if bad[p][1] >= TRAIN)

    # cvm data check: every bad file named, exactly once, in its report file.
    report = str(tmp_path / "check.txt")
    checked = soaklib.cvm("data", "check", "--dataset=cvusa", f"--root={root}", f"--report={report}")
    assert checked.returncode == 1, soaklib.tail(checked)  # unreadable files: not usable
    named = read_faults(report)
    assert len(named) == BAD and set(named) == set(bad), set(bad) ^ set(named)
    assert "NOT usable" in checked.stdout

    # cvm train, killed mid-epoch and resumed: completes; faults.txt names each unreadable file once.
    model_dir = str(tmp_path / "run")
    args = ["train", "--method=cvm_net_i", "--dataset=cvusa", f"--root={root}", f"--model_dir={model_dir}", "--val_split=val",
            "--ground_size=32,128", "--aerial_size=64,64", "--batch_size=8", "--output_dim=16", "--clusters=4",
            "--backbone_width=0.0625", "--keep_prob=1.0", "--eval_batch_size=50", "--nojit_compile", "--epochs=1",
            "--checkpoint_every_steps=20", "--log_every_steps=20"]
    killed = soaklib.cvm(*args, env={"CVM_KILL_AT": "step@45"})
    assert killed.returncode == -9, soaklib.tail(killed)
    trained = soaklib.cvm(*args)
    assert trained.returncode == 0, soaklib.tail(trained)
    assert "resuming" in trained.stdout
    faults = read_faults(os.path.join(model_dir, "faults.txt"))
    assert len(faults) == len(set(faults)) == len(unreadable), (len(faults), len(set(faults)), len(unreadable))
    assert set(faults) == unreadable
    validation = json.load(open(os.path.join(model_dir, "results", "validation", "epoch001.json")))
    assert validation["extra"]["pairs_in_split"] == PAIRS - TRAIN
    assert validation["extra"]["pairs_skipped_unreadable"] == bad_val_pairs
    assert validation["n_queries"] == validation["n_references"] == PAIRS - TRAIN - bad_val_pairs

    # cvm eval (twice: the second run names no file again).
    for _ in range(2):
        evaluated = soaklib.cvm("eval", f"--model_dir={model_dir}")
        assert evaluated.returncode == 0, soaklib.tail(evaluated)
    results = json.load(open(os.path.join(model_dir, "results", "cvusa_val.json")))
    assert results["extra"]["pairs_in_split"] == PAIRS - TRAIN
    assert results["extra"]["pairs_skipped_unreadable"] == bad_val_pairs
    assert results["n_queries"] == results["n_references"] == PAIRS - TRAIN - bad_val_pairs
    eval_faults = read_faults(os.path.join(model_dir, "results", "cvusa_val_faults.txt"))
    assert sorted(eval_faults) == sorted(p for p in unreadable if bad[p][1] >= TRAIN)

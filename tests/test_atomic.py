"""cvm.atomic: the target holds the old content or the new one, never a mixture; failures leave no temporary."""

import json
import os
import stat
import threading

import cv2
import numpy as np
import pytest

from cvm import atomic


def listing(folder):
    return sorted(os.listdir(folder))


def test_write_bytes_text_json_replace_the_target_and_leave_nothing_else(tmp_path):
    path = str(tmp_path / "sub" / "dir" / "state.json")  # missing folders are created
    atomic.write_bytes(path, b"\x00old")
    assert open(path, "rb").read() == b"\x00old"
    assert atomic.write_text(path, "n\u00e9w") == path
    assert open(path, "rb").read() == "n\u00e9w".encode("utf-8")
    atomic.write_json(path, {"a": [1, 2], "b": np.float32(0.5)}, default=float)
    text = open(path).read()
    assert text.endswith("}\n") and json.loads(text) == {"a": [1, 2], "b": 0.5}
    assert listing(tmp_path / "sub" / "dir") == ["state.json"]


def test_a_failing_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = str(tmp_path / "ckpt.npz")
    atomic.write_bytes(path, b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic.replacing(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half of the ne")
            raise RuntimeError("disk full")
    assert open(path, "rb").read() == b"old"
    assert listing(tmp_path) == ["ckpt.npz"]
    # A writer that fails before creating the temporary (nothing to remove) also leaves the target alone.
    with pytest.raises(OSError):
        with atomic.replacing(path) as tmp:
            open(os.path.join(tmp, "not-a-folder"), "wb")
    assert open(path, "rb").read() == b"old" and listing(tmp_path) == ["ckpt.npz"]
    # json.dumps failing (an unserialisable value) never reaches the file either.
    with pytest.raises(TypeError):
        atomic.write_json(path, {"x": object()})
    assert open(path, "rb").read() == b"old" and listing(tmp_path) == ["ckpt.npz"]


def test_after_write_runs_between_the_complete_write_and_the_rename(tmp_path):
    path = str(tmp_path / "state.json")
    atomic.write_text(path, "old")
    seen = {}

    def kill_point():  # what a fault-injection kill point sees: new bytes written, target still old
        seen["tmp"] = [open(os.path.join(tmp_path, n)).read() for n in listing(tmp_path) if n != "state.json"]
        seen["target"] = open(path).read()
        raise KeyboardInterrupt  # a kill there: the rename never happens

    with pytest.raises(KeyboardInterrupt):
        with atomic.replacing(path, after_write=kill_point) as tmp:
            with open(tmp, "w") as f:
                f.write("new")
    assert seen == {"tmp": ["new"], "target": "old"}
    assert open(path).read() == "old" and listing(tmp_path) == ["state.json"]


def test_the_temporary_is_synced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: events.append("replace") or real_replace(a, b))
    atomic.write_bytes(str(tmp_path / "x.bin"), b"1")
    assert events == ["fsync file", "replace", "fsync folder"]
    events.clear()
    atomic.write_bytes(str(tmp_path / "y.bin"), b"1", fsync=False)
    assert events == ["replace"]


def test_a_reader_sees_the_old_content_or_the_new_one_never_a_mixture(tmp_path):
    """A reader polling while the target is rewritten between two large contents: every read is one whole
    version. Writing in place (open(path, "wb")) fails this: the reader sees a truncated or mixed file."""
    path = str(tmp_path / "big.bin")
    versions = [bytes([v]) * (1 << 21) for v in (1, 2)]  # 2 MiB: several write() syscalls per version
    atomic.write_bytes(path, versions[0], fsync=False)
    stop, bad, reads = threading.Event(), [], [0]

    def reader():
        while not stop.is_set():
            with open(path, "rb") as f:
                data = f.read()
            reads[0] += 1
            if data not in versions:
                bad.append((len(data), data[:1], data[-1:]))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(60):
            atomic.write_bytes(path, versions[i % 2], fsync=False)
    finally:
        stop.set()
        thread.join()
    assert reads[0] > 0 and not bad, bad[:3]
    assert open(path, "rb").read() == versions[1]
    assert listing(tmp_path) == ["big.bin"]


def test_temporary_names_keep_the_extension_last():
    assert atomic.temporary_name("/a/b/model.keras") == "/a/b/model.tmp.keras"
    assert atomic.temporary_name("grid.png").endswith(".png")
    assert atomic.temporary_name("noext") == "noext.tmp"


def test_extension_dispatching_writers_work_through_replacing(tmp_path):
    """OpenCV picks the encoder, Keras the format, from the extension of the path they are given."""
    image = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    png = str(tmp_path / "grid.png")
    with atomic.replacing(png) as tmp:
        assert cv2.imwrite(tmp, image)
    np.testing.assert_array_equal(cv2.imread(png), image)  # PNG is lossless

    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    target = str(tmp_path / "model.keras")
    with atomic.replacing(target) as tmp:
        model.save(tmp)  # Keras refuses a path not ending in .keras
    loaded = keras.models.load_model(target)
    x = np.ones((1, 3), np.float32)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    assert listing(tmp_path) == ["grid.png", "model.keras"]


def test_fsync_directory_is_best_effort(tmp_path):
    atomic.fsync_directory(str(tmp_path))  # a real folder: synced
    atomic.fsync_directory(str(tmp_path / "missing"))  # one that cannot be opened: no error (best effort)

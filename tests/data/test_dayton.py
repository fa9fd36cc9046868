"""Dayton 4-panel adapter: split files, panel order A|B|As|Bs, directions, check, errors."""

import io
import os

import cv2
import numpy as np
import pytest

from cvm.data.check import check_dataset
from cvm.data.dayton import FILE_SIZE, OFFICIAL_PAIRS, load_dayton, split_panels
from cvm.data.synthesis import SynthesisPipeline, SynthesisSpec, load_synthesis_split, to_unit_range, torch_scale
from cvm.errors import CvmError

NAMES = ["0AxrRh6ZroLIx1PIL4D29w.x158.y417.a-156.jpg", "kDsoieh6UvFM-7r96CREMQ.x935.y474.a-160.jpg",
         "bS_Bcim3jCsoEIsfpF1MHQ.x1069.y456.a140.jpg"]


def panel_colours(k):
    """Distinct flat BGR colours per panel so the order can be checked after JPEG coding."""
    return [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)][k]


def write_dayton(root, names=NAMES, split="train", folder=None, split_dir="dayton_split", size=32):
    os.makedirs(os.path.join(root, folder or split), exist_ok=True)
    os.makedirs(os.path.join(root, split_dir), exist_ok=True)
    with open(os.path.join(root, split_dir, f"{split}_split.txt"), "w") as f:
        f.write("\n".join(names) + "\n\n")
    rng = np.random.default_rng(len(names))
    for n, name in enumerate(names):
        panels = [np.full((size, size, 3), panel_colours(k), np.uint8) for k in range(4)]
        panels[0][: size // 2, : size // 2] = rng.integers(0, 256, 3)  # a corner marks the file
        image = np.concatenate(panels, axis=1)
        cv2.imwrite(os.path.join(root, folder or split, name), image, [cv2.IMWRITE_JPEG_QUALITY, 100])


def test_split_panels_quarters_and_truncated_bounds():
    image = np.arange(2 * 10 * 3).reshape(2, 10, 3)
    a, b, c, d = split_panels(image)
    assert [p.shape[1] for p in (a, b, c, d)] == [2, 3, 2, 3]  # floor(k * 10 / 4) bounds: 0, 2, 5, 7, 10
    np.testing.assert_array_equal(np.concatenate([a, b, c, d], axis=1), image)
    with pytest.raises(ValueError):
        split_panels(np.zeros((4, 3, 3)))


def test_load_dayton_reads_panels_in_order(tmp_path):
    root = str(tmp_path)
    write_dayton(root)
    split = load_dayton(root, "train")
    assert len(split) == 3 and split.ids[0] == "0AxrRh6ZroLIx1PIL4D29w.x158.y417.a-156"
    assert split[0].ground_path == split[0].aerial_path == os.path.join(root, "train", NAMES[0])
    panels = split.read_panels(1)
    for k, panel in enumerate(panels):
        assert panel.shape == (32, 32, 3)
        np.testing.assert_allclose(panel[20:28, 20:28].mean(axis=(0, 1)), panel_colours(k), atol=6)
    np.testing.assert_array_equal(split.read_ground(1), panels[0])
    np.testing.assert_array_equal(split.read_aerial(1), panels[1])


@pytest.mark.parametrize("direction, wanted", [("a2g", (1, 0, 2)), ("g2a", (0, 1, 3))])
def test_dayton_synthesis_directions(tmp_path, direction, wanted):
    root = str(tmp_path)
    write_dayton(root, split="test", folder="val", split_dir="")  # test split with images in val/
    split = load_synthesis_split("dayton", "test", root, direction)
    assert split.samples[2].out_name == NAMES[2] and split.samples[0].panels == wanted
    spec = SynthesisSpec((16, 16), (16, 16), load_size=(18, 18), crop_size=(16, 16), flip=True)
    (images, _), = [({k: v.numpy() for k, v in i.items()}, m) for i, m in SynthesisPipeline(split, spec).eval(3)]
    panels = split_panels(cv2.imread(os.path.join(root, "val", NAMES[0])))
    for key, k in zip(("input", "target", "target_seg"), wanted):
        np.testing.assert_allclose(images[key][0], torch_scale(to_unit_range(panels[k]), (16, 16)), atol=1e-6)


def test_dayton_check_and_errors(tmp_path):
    root = str(tmp_path)
    write_dayton(root, size=256)
    write_dayton(root, names=NAMES[:2], split="test", size=256)
    os.remove(os.path.join(root, "test", NAMES[1]))
    report = check_dataset("dayton", root)
    train, test = report.splits
    assert train.usable and train.pairs == 3 and train.official_pairs == OFFICIAL_PAIRS["train"]
    assert train.sizes_checked and not train.wrong_size and FILE_SIZE == (256, 1024)
    assert not test.usable and test.missing == 1 and test.first_missing.endswith(NAMES[1])
    assert not report.usable and "NOT usable" in report.format()

    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    with pytest.raises(CvmError) as err:
        load_dayton(empty, "train")
    message = str(err.value)
    assert os.path.join(empty, "train_split.txt") in message and "datasets/dayton_split" in message
    os.makedirs(os.path.join(empty, "splits"))
    with open(os.path.join(empty, "splits", "test_split.txt"), "w") as f:
        f.write(NAMES[0] + "\n")
    with pytest.raises(CvmError, match="image folder not found"):
        load_dayton(empty, "test")
    with open(os.path.join(empty, "splits", "test_split.txt"), "w") as f:
        f.write("a.jpg,b.jpg\n")
    with pytest.raises(CvmError, match="line 1"):
        load_dayton(empty, "test")
    with pytest.raises(CvmError, match="Unknown Dayton split"):
        load_dayton(root, "validation")
    with pytest.raises(CvmError, match="Dayton root folder not found"):
        load_dayton(str(tmp_path / "nowhere"), "train")


def test_cli_check_dayton(tmp_path):
    from cvm.data.check import main_check

    write_dayton(str(tmp_path), size=256)
    write_dayton(str(tmp_path), split="test", size=256)
    out = io.StringIO()
    assert main_check("dayton", str(tmp_path), out=out, progress=False) == 0
    assert "Dayton" in out.getvalue() and "usable" in out.getvalue()

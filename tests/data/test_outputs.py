"""Output files named after input rows stay inside their output folder (cvm.data.outputs and its users)."""

import os

import pytest

from cvm.data.outputs import output_path
from cvm.errors import CvmError

ROW = "cvusa val row 3 (id '0000003')"


def test_names_inside_the_folder_are_joined(tmp_path):
    out = str(tmp_path / "out")  # need not exist
    assert output_path(out, "0000001.jpg", row=ROW) == os.path.join(out, "0000001.jpg")
    assert output_path(out, os.path.join("polarmap", "19", "1.png"), row=ROW) == os.path.join(out, "polarmap", "19",
                                                                                               "1.png")
    os.makedirs(tmp_path / "out" / "real")
    os.symlink(tmp_path / "out" / "real", tmp_path / "out" / "alias")  # a link that stays inside is fine
    assert output_path(out, "alias/x.png", row=ROW) == os.path.join(out, "alias", "x.png")


@pytest.mark.parametrize("name, why", [
    ("../evil.jpg", "'..'"),
    ("a/../../evil.jpg", "'..'"),
    ("..", "'..'"),
    ("/etc/evil.jpg", "absolute"),
    ("", "empty"),
    ("x\x00.jpg", "NUL"),
    (".", "folder itself"),
])
def test_names_that_leave_the_folder_are_refused_naming_the_row(tmp_path, name, why):
    with pytest.raises(CvmError, match=why) as info:
        output_path(str(tmp_path), name, row=ROW)
    assert ROW in str(info.value) and str(tmp_path) in str(info.value)


def test_symbolic_links_pointing_out_are_refused(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    os.makedirs(out)
    os.makedirs(outside)
    os.symlink(outside, out / "polarmap")  # a folder link
    os.symlink(outside / "victim.jpg", out / "0000001.jpg")  # a (dangling) file link
    for name in ("polarmap/19/1.png", "0000001.jpg"):
        with pytest.raises(CvmError, match="outside the folder") as info:
            output_path(str(out), name, row=ROW)
        assert ROW in str(info.value)


def test_polar_refuses_a_polarmap_link_out_of_the_root(tmp_path):
    from cvm.data.polar_batch import precompute_polar
    from cvm.data.synthetic import write_dataset

    root = tmp_path / "ds"
    write_dataset(str(root), layout="cvusa", pairs=3, seed=1, val_fraction=0.34, progress=False, workers=1,
                  segmaps=False)
    outside = tmp_path / "outside"
    os.makedirs(outside)
    os.symlink(outside, root / "polarmap")
    with pytest.raises(CvmError, match=r"cvusa train row 1 \(id '0000001'\).*outside the folder"):
        precompute_polar("cvusa", str(root), workers=1, progress=False)
    assert os.listdir(outside) == []  # refused before anything was written


def test_synthesize_refuses_an_output_name_out_of_its_folder(tmp_path, monkeypatch):
    """A Dayton-like split whose id (hence out_name "<id>.jpg") climbs out: refused before any generation."""
    from types import SimpleNamespace

    from cvm.data.synthesis import SynthesisSample, SynthesisSplit
    from cvm.synthesis import inference

    samples = [SynthesisSample(id=i, input_path=f"/in/{i}", target_path=f"/t/{i}", target_seg_path=None,
                               out_name=f"{i}.jpg") for i in ("0001", "../../escape")]
    split = SynthesisSplit("dayton", "val", str(tmp_path), "a2g", samples, source="")
    monkeypatch.setattr(inference, "load_generators", lambda model_dir, checkpoint: (SimpleNamespace(dataset="dayton", inference_mode=True, eval_batch_size=2),
                                                                                 {}, "test"))
    monkeypatch.setattr(inference, "load_split", lambda *args, **kwargs: split)
    out = tmp_path / "generated"
    with pytest.raises(CvmError, match=r"dayton val row 2 \(id '../../escape'\): output name '../../escape.jpg'"):
        inference.synthesize(str(tmp_path / "run"), str(out), split="val", progress=False)
    assert not out.exists()

"""One dataset registry (cvm.data.registry): every other module reads its entries."""

import dataclasses

import pytest

from cvm.data import load_split, registry, sources
from cvm.data.check import check_dataset
from cvm.data.records import Pair, Split
from cvm.errors import CvmError


def test_entries_are_complete_for_what_they_serve():
    assert registry.names("retrieval")[:4] == ("synthetic", "cvusa", "cvact", "ucfop")
    assert set(registry.names("polar")) == {"cvusa", "cvact", "ucfop"}
    assert "dayton" in registry.names("synthesis") and "dayton" not in registry.names("retrieval")
    for name in registry.names("check"):
        entry = registry.get(name, "check")
        assert entry.adapter is not None and entry.splits and set(entry.splits) <= set(entry.split_names), name
        assert entry.source is not None and entry.source.expected_files, name
        assert sources.source(name) is entry.source


def test_unknown_or_unsuitable_dataset_errors_name_the_valid_ones():
    with pytest.raises(CvmError, match=r"unknown --dataset 'cvusb'; valid: synthetic, cvusa"):
        registry.get("cvusb")
    with pytest.raises(CvmError, match=r"'dayton' for `cvm data polar`; valid: cvusa, cvact, ucfop"):
        registry.get("dayton", "polar")
    with pytest.raises(CvmError, match="'dayton' for retrieval training"):
        load_split("dayton", "train", root="/nowhere")
    with pytest.raises(CvmError, match="known datasets with official files: cvact, cvusa, dayton, ucfop"):
        sources.source("synthetic")


def test_a_registered_dataset_is_loaded_and_checked_through_its_entry(tmp_path, monkeypatch):
    calls = []

    def load_toy(root, split, **options):
        calls.append((root, split, options))
        return Split("toy", split, str(root), [], location_kind=None)

    toy = registry.Dataset(name="toy", uses=frozenset({"retrieval", "check"}), adapter=load_toy,
                           splits=("train",), split_names=("train",), sizes={(None, None): (None, None)},
                           source=dataclasses.replace(sources.source("ucfop"), title="Toy"))
    monkeypatch.setitem(registry.DATASETS, "toy", toy)
    assert "toy" in registry.names("retrieval")
    assert len(load_split("toy", "train", root=str(tmp_path), layout="x")) == 0
    assert calls == [(str(tmp_path), "train", {"layout": "x"})]
    report = check_dataset("toy", str(tmp_path))
    assert calls[-1][1] == "train" and not report.usable  # zero pairs: not usable
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(dataclasses.replace(toy))

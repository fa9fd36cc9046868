"""CVUSA coordinates from the release's split_locations/all.csv (row = image id - 1), optional."""

import os

import numpy as np
import pytest

from cvm.data.cvusa import load_cvusa
from cvm.data.synthetic.write import world_to_latlon, write_dataset
from cvm.errors import CvmError


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "CVPR_subset"
    rows = [f"bingmap/19/{i:07d}.jpg,streetview/panos/{i:07d}.jpg" for i in (3, 1)]
    write(str(root / "splits" / "train-19zl.csv"), "\n".join(rows) + "\n")
    return root


def test_without_all_csv_the_split_has_no_coordinates(root):
    split = load_cvusa(str(root), "train")
    assert split.location_kind is None and split.locations() is None


def test_all_csv_gives_each_pair_its_row_by_id(root):
    write(str(root / "split_locations" / "all.csv"),
          "40.1,-75.2,40.1001,-75.2001\n41.5,-80.25,41.5,-80.25\n42.75,-90.5,42.7,-90.4\n")
    split = load_cvusa(str(root), "train")
    assert split.location_kind == "latlon"
    # ids 0000003 and 0000001 -> rows 3 and 1: the aerial's lat, lon (columns 1 and 2).
    np.testing.assert_array_equal(split.locations(), [[42.75, -90.5], [40.1, -75.2]])


@pytest.mark.parametrize("text, match", [("40,-75\n", "no row for CVUSA image '0000003'"),
                                         ("40,-75\n1,2\nabc,def\n", r"row 3: expected 'lat,lon"),
                                         ("40,-75\n1,2\n95,10\n", r"row 3: \(95.0, 10.0\) is not a latitude")])
def test_a_bad_all_csv_is_an_error_naming_file_and_row(root, text, match):
    write(str(root / "split_locations" / "all.csv"), text)
    with pytest.raises(CvmError, match=match) as err:
        load_cvusa(str(root), "train")
    assert "all.csv" in str(err.value)


def test_synthetic_cvusa_folder_writes_the_worlds_coordinates_in_degrees(tmp_path):
    out = tmp_path / "synth"
    write_dataset(str(out), "cvusa", pairs=6, seed=2, progress=False, workers=1, segmaps=False)
    train, val = load_cvusa(str(out), "train"), load_cvusa(str(out), "val")
    latlon = np.concatenate([train.locations(), val.locations()])
    from cvm.data.synthetic.dataset import make_synthetic_split

    metres = np.concatenate([make_synthetic_split("train", 6, 2).locations(), make_synthetic_split("val", 6, 2).locations()])
    # world_to_latlon written with 8 decimals (1e-8 deg = 1.1 mm): equal to the projection of the world's metres.
    np.testing.assert_allclose(latlon, world_to_latlon(metres), atol=6e-9)
    # And the projection keeps distances: 1 km north is 1000 / 6371008.8 rad of latitude.
    moved = world_to_latlon(np.array([[0.0, 0.0], [0.0, 1000.0], [1000.0, 0.0]]))
    from cvm.data.sampling import haversine_matrix

    np.testing.assert_allclose(haversine_matrix(moved[:1], moved[1:])[0], [1000.0, 1000.0], rtol=1e-6)

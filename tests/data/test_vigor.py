"""VIGOR adapter, label versions, `cvm data check --dataset vigor` and the evaluator on real synthetic files."""

import json
import os
import shutil

import cv2
import numpy as np
import pytest

from cvm.data import load_split, vigor
from cvm.data.check import main_check
from cvm.data.synthetic.vigor_layout import write_vigor_dataset
from cvm.errors import CvmError
from cvm.evaluation import vigor as vigor_eval

PANOS = 4  # per city


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("vigor")
    write_vigor_dataset(str(out), panoramas_per_city=PANOS, grid=3, seed=0, progress=False, workers=2)
    return str(out)


def test_protocol_cities_counts_and_reference_sets(root):
    same = load_split("vigor", "test", root)  # through the registry, as training does
    assert isinstance(same, vigor.VigorSplit) and same.location_kind == "latlon"
    assert same.cities == vigor.CITIES and len(same) == 4 * PANOS // 2
    assert len(same.reference_paths) == 4 * 9  # every tile of every city, more than the queries
    cross_train = vigor.load_vigor(root, "train", area="cross")
    cross_test = vigor.load_vigor(root, "val", area="cross")  # val: alias of test
    assert set(cross_train.pair_cities) == {"NewYork", "Seattle"} and len(cross_train) == 2 * PANOS
    assert cross_test.cities == ("SanFrancisco", "Chicago") and len(cross_test.reference_paths) == 18
    # The positive is the pair's aerial; every index points at a file of the query's own city.
    for split in (same, cross_test):
        for i, pair in enumerate(split):
            assert pair.aerial_path == split.reference_paths[split.positives[i]]
            city = split.pair_cities[i]
            for j in (split.positives[i], *split.semi_positives[i]):
                assert split.reference_ids[j].startswith(city + "/")
            assert len({split.positives[i], *split.semi_positives[i]}) == 4


def test_positive_is_the_nearest_tile_and_offsets_follow_the_gps(root):
    split = vigor.load_vigor(root, "train", labels="corrected")
    q = split.locations()
    refs = split.reference_locations()
    four = np.concatenate([split.positives[:, None], split.semi_positives], axis=1)
    distances = vigor.great_circle_m(q[:, None, :], refs[four])
    assert np.all(distances[:, 0] <= distances[:, 1:].min(axis=1))
    # Recomputed offsets (Web Mercator) against the file's: the labels are whole pixels (<= 0.5 off) and the
    # panorama name keeps 6 decimals of GPS (<= 0.5e-6 deg, <= 0.5 px at zoom 20): within 1 px + float slack.
    recomputed = vigor.mercator_offsets(q[:, None, :], refs[four])
    np.testing.assert_allclose(split.offsets, recomputed, atol=1.01)
    assert np.all(np.abs(split.offsets[:, 0]) <= 160.5)  # the positive's centre region holds the query
    assert np.all(np.abs(split.offsets) <= 320.5)  # inside every one of its four tiles
    mercator = vigor.load_vigor(root, "train", labels="mercator")
    np.testing.assert_allclose(mercator.offsets, recomputed, atol=1e-9)


def test_original_labels_carry_vigors_resolution_error(root):
    original = vigor.load_vigor(root, "test", labels="original")
    corrected = vigor.load_vigor(root, "test", labels="corrected")
    np.testing.assert_array_equal(original.positives, corrected.positives)
    big = np.abs(corrected.offsets) > 150  # rounding (<= 0.5 px) stays under 0.4 % of these offsets
    ratio = original.offsets[big] / corrected.offsets[big]
    cities = np.repeat(np.array(original.pair_cities), 8).reshape(len(original), 4, 2)[big]
    for city in vigor.CITIES:
        lat = {"Chicago": 41.8781, "NewYork": 40.758, "SanFrancisco": 37.7749, "Seattle": 47.6062}[city]
        expected = vigor.mercator_metres_per_pixel(lat) / vigor.VIGOR_METRES_PER_PIXEL  # Seattle 0.88
        np.testing.assert_allclose(ratio[cities == city], expected, rtol=0.01)


def test_labelled_pixels_show_the_same_ground_in_all_four_tiles(root):
    split = vigor.load_vigor(root, "train", labels="corrected")
    half = 16

    def patch(path, dy, dx, shift=0):
        image = cv2.imread(path).astype(np.float32)
        r, c = int(round(320 + dy)), int(round(320 - dx))
        r += shift if r < 320 else -shift  # a displacement towards the centre stays inside the tile
        c += shift if c < 320 else -shift
        out = image[r - half:r + half, c - half:c + half]
        return out if out.shape == (2 * half, 2 * half, 3) else None

    checked, displaced = 0, []
    for i in range(len(split)):
        paths = [split.reference_paths[j] for j in (split.positives[i], *split.semi_positives[i])]
        patches = [patch(p, *split.offsets[i, k]) for k, p in enumerate(paths)]
        if any(p is None for p in patches):  # the query too near a tile edge for a whole patch
            continue
        checked += 1
        # Lossless PNG tiles on one 320-px lattice, rendered from one raster: the labelled pixels of the four
        # tiles show the same ground (equal up to resampling, < 1 grey level), 40 px (~4.5 m) away other ground.
        for k, p in enumerate(paths[1:], start=1):
            assert np.abs(patches[0] - patches[k]).mean() < 1.0
            displaced.append(np.abs(patches[0] - patch(p, *split.offsets[i, k], shift=40)).mean())
    assert checked >= 3
    assert np.median(displaced) > 5.0  # (a displaced patch on uniform asphalt can differ by only ~2)


def test_missing_label_lists_are_named(root, tmp_path):
    copy = tmp_path / "v"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("*.png", "*.jpg"))
    shutil.rmtree(copy / "splits")
    with pytest.raises(CvmError, match=r"splits/Chicago/satellite_list.txt.*issue #15"):
        vigor.load_vigor(str(copy), "train")
    os.remove(copy / "splits__corrected" / "Seattle" / "same_area_balanced_test__corrected.txt")
    with pytest.raises(CvmError, match="SliceMatch"):
        vigor.load_vigor(str(copy), "test", labels="corrected")
    with pytest.raises(CvmError, match="'original', 'corrected', 'mercator'"):
        vigor.load_vigor(str(copy), "test", labels="fixed")


def test_malformed_lines_raise_with_file_and_line(root, tmp_path):
    copy = tmp_path / "v"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("*.png", "*.jpg"))
    path = copy / "splits" / "NewYork" / "same_area_balanced_train.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1].rsplit(" ", 2)[0]] + lines[2:]) + "\n")
    with pytest.raises(CvmError, match=r"same_area_balanced_train.txt, line 2: expected 13"):
        vigor.load_vigor(str(copy), "train")
    path.write_text("\n".join(lines).replace(lines[0].split()[1], "satellite_1.0_2.0.png", 1) + "\n")
    with pytest.raises(CvmError, match="not in .*satellite_list.txt"):
        vigor.load_vigor(str(copy), "train")


def test_check_names_what_is_missing(root, tmp_path, capsys):
    assert main_check("vigor", root, area="same", labels="corrected", report_path=str(tmp_path / "r.txt")) == 0
    assert "VIGOR is usable" in capsys.readouterr().out
    copy = tmp_path / "v"
    shutil.copytree(root, copy)
    shutil.rmtree(copy / "splits")
    victim = sorted(os.listdir(copy / "Chicago" / "satellite"))[0]
    os.remove(copy / "Chicago" / "satellite" / victim)
    assert main_check("vigor", str(copy), report_path=str(tmp_path / "r2.txt")) == 1
    out = capsys.readouterr().out
    assert "the folder " + str(copy / "splits") + " does not exist" in out and "splits.zip" in out
    assert main_check("vigor", str(copy), labels="corrected", area="cross", report_path=str(tmp_path / "r3.txt")) == 1
    out = capsys.readouterr().out
    assert f"missing: {copy / 'Chicago' / 'satellite' / victim} (aerial)" in out  # a reference tile, not a pair's


def test_subset_keeps_labels_aligned(root):
    split = vigor.load_vigor(root, "test")
    sub = split.subset([3, 0])
    np.testing.assert_array_equal(sub.positives, split.positives[[3, 0]])
    np.testing.assert_array_equal(sub.offsets, split.offsets[[3, 0]])
    assert sub.pair_cities == [split.pair_cities[3], split.pair_cities[0]]
    assert sub.reference_paths is split.reference_paths


def test_oracle_descriptors_on_real_files(root):
    split = vigor.load_vigor(root, "test", labels="corrected")
    n_r = len(split.reference_paths)
    reference = np.eye(n_r, dtype=np.float32)
    query = reference[split.positives].copy()
    query[0] = reference[split.semi_positives[0, 1]]  # the first query retrieves a semi-positive
    raw = vigor_eval.evaluate_split(split, query, reference)
    m = raw["metrics"]
    assert m["r@1"] == pytest.approx(1 - 1 / len(split)) and m["hit_rate"] == 1.0
    # Retrieving the positive or a semi-positive and moving by its label lands on the query: label rounding
    # (<= 0.5 px) and the 6-decimal GPS (<= 0.06 m) give at most ~0.15 m.
    assert raw["distances"]["label_offset"].max() < 0.2
    assert raw["distances"]["positive_label_residual"].max() < 0.2
    centre = raw["distances"]["centre"]
    assert 0 < centre[1:].max() <= 160 * np.sqrt(2) * 0.12  # inside the positive's central square
    assert centre[0] > 10  # a semi-positive's centre is roughly half a tile away
    results = vigor_eval.vigor_results(raw, split, method="oracle", checkpoint=None)
    assert results["labels"] == "corrected" and results["extra"]["labels"] == "corrected"
    assert results["metrics"]["ground_to_aerial"]["hit_rate"] == 1.0
    assert set(results["metre_error"]) == {"centre", "label_offset", "positive_label_residual"}
    json.dumps(results)


class _MeanColour:
    """A stand-in encoder with the TwoTowerModel interface: per-channel means of a 4x4 grid, L2-normalised."""

    def _encode(self, images):
        import tensorflow as tf

        pooled = tf.nn.avg_pool2d(images, ksize=(images.shape[1] // 4, images.shape[2] // 4),
                                  strides=(images.shape[1] // 4, images.shape[2] // 4), padding="VALID")
        return tf.math.l2_normalize(tf.reshape(pooled, [tf.shape(images)[0], -1]), axis=1)

    def encode_ground(self, images, training=False):
        return self._encode(images[:, :, :images.shape[2] // 2])  # a different view, same descriptor size

    def encode_aerial(self, images, training=False):
        return self._encode(images)


def test_encoder_evaluation_writes_labelled_results(root, tmp_path):
    from cvm.data.images import ImageSpec

    split = vigor.load_vigor(root, "test", area="cross", labels="mercator")
    os.remove(split[1].ground_path)  # an unreadable query is left out, and counted
    spec = ImageSpec(ground_size=(32, 64), aerial_size=(32, 32))
    results = vigor_eval.evaluate_vigor_encoder(_MeanColour(), split, spec, 3, method="mean_colour",
                                                checkpoint=None, out_dir=str(tmp_path))
    assert results["n_queries"] == len(split) - 1 and results["n_references"] == 18
    assert results["extra"]["pairs_skipped_unreadable"] == 1
    with open(results["results_json"]) as f:
        written = json.load(f)
    assert written["labels"] == "mercator" and written["area"] == "cross"
    assert os.path.basename(results["results_json"]) == "vigor_cross_test_mercator.json"
    assert 0.0 <= written["metrics"]["ground_to_aerial"]["hit_rate"] <= 1.0
    assert written["metrics"]["ground_to_aerial"]["r@1"] <= written["metrics"]["ground_to_aerial"]["hit_rate"]


def test_write_dataset_layout_vigor(tmp_path):
    from cvm.data.synthetic import write_dataset

    summary = write_dataset(str(tmp_path), "vigor", pairs=8, seed=1, progress=False, workers=1)
    assert summary["layout"] == "vigor" and summary["pairs"] == 8 and summary["val"] == 4
    split = vigor.load_vigor(str(tmp_path), "train", area="cross")
    assert len(split) == 4 and all(os.path.isfile(p.ground_path) for p in split)
    with pytest.raises(CvmError, match="cvusa layout only"):
        write_dataset(str(tmp_path / "x"), "vigor", pairs=8, seed=1, progress=False, segmaps=True)


def test_each_label_version_is_read_with_its_own_pixel_size(root):
    # The original labels were made with 0.114 m/px; read with it they land on the query (rounding only:
    # 0.5 px x 0.114 m per axis plus the 6-decimal GPS, < 0.15 m). Read on the zoom-20 grid they miss by the
    # resolution error (Seattle: 12 % of offsets up to ~18 m), which is why the version is recorded.
    split = vigor.load_vigor(root, "test", labels="original")
    assert split.offset_convention == "vigor"
    q, refs = split.locations(), split.reference_locations()
    own = vigor_eval.metre_errors(q, refs, split.positives, positives=split.positives,
                                  semi_positives=split.semi_positives, offsets=split.offsets, offset_convention="vigor")
    other = vigor_eval.metre_errors(q, refs, split.positives, positives=split.positives,
                                    semi_positives=split.semi_positives, offsets=split.offsets,
                                    offset_convention="mercator")
    assert own["positive_label_residual"].max() < 0.15
    assert other["positive_label_residual"].max() > 0.3

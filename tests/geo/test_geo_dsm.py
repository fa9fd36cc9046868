"""Correlation galleries (DSM, Shi et al., CVPR 2020): `Localizer.locate` ranks by circular correlation over the
shards and reports the heading of the query's centre, checked against a brute-force NumPy search and known rolls.

Tolerances. Rankings, shifts and headings are compared exactly: they are integer argmaxes, and each test first
checks that the brute force's competitors are further apart than the float32 error below (else a tie could
flip legitimately). Similarities: the gallery computes scores[k] = sum_{h,n,c} A[h, n+k, c] G[h, n, c] by a
float32 FFT: the rfft of each of the H*C = 16 rows of Wa = 16 columns (relative error ~log2(16) * 2^-24),
a product summed over H*C rows and F = 9 frequencies, and the inverse DFT as a 9-term matmul; with |A| = |G| = 1
(both maps unit-normalised by the towers) every step errs by at most a few ulps of 1, so |error| <= (4 + 16 + 9)
* 2^-24 ~ 1.7e-6 in the worst (all errors aligned) case. Dividing by the crop's norm, ~sqrt(Wg / Wa) >= 0.5 for
the FoV-90 crop, at most doubles it: 3.5e-6, hence atol 1e-5 against the float64 brute force.
"""

import json
import os

import numpy as np
import pytest

from cvm.data.augment import fov_crop, roll_panorama
from cvm.errors import CvmError
from cvm.evaluation.orientation import expected_bin_from_roll, heading_deg
from cvm.geo import render
from cvm.geo import shards as shards_lib
from cvm.geo.gallery import build_gallery
from cvm.geo.localizer import Localizer
from cvm.geo.towers import KerasTowers, exported_correlation

PAIRS = 30  # the synthetic val split: 6 pairs
SEED = 2  # the DSM's random weights: the closest competitors below are >= 2.4e-4 apart
BINS = 16  # 128-column polar aerial / 8
ATOL = 1e-5  # float32 similarities (module docstring)
MARGIN = 2 * ATOL  # two values each within ATOL of the brute force cannot swap if further apart than this


class CircularGround:
    """A DSM whose ground branch is its aerial one (circular padding, unit-normalised): the ground map of a
    panorama rolled by whole map columns is then exactly the rolled map. DSM's own ground branch pads with
    zeros (SAME), so a random-weight model's peak need not follow a roll of the photo (a trained one learns to)."""

    correlation = True

    def __init__(self, model):
        self.model = model
        self.weights = model.weights
        self.map_height, self.map_channels = model.map_height, model.map_channels
        self.orientation_bins = model.orientation_bins

    def encode_aerial(self, images, training=False):
        return self.model.encode_aerial(images, training=training)

    def encode_ground(self, images, training=False):
        return self.model.encode_aerial(images, training=training)  # the towers L2-normalise it


@pytest.fixture(scope="module")
def split():
    from cvm.data import load_split

    return load_split("synthetic", "val", synthetic_pairs=PAIRS)


@pytest.fixture(scope="module")
def dsm():
    """(model, spec): a random-weight DSM on a 32x128 polar aerial (1 x 16 x 16 maps: 16 bins of 22.5 degrees)."""
    import keras

    from cvm.data.images import ImageSpec
    from cvm.models.dsm import DSM

    keras.utils.set_random_seed(SEED)  # fixed weights, so the near-tie checks hold every run
    spec = ImageSpec(ground_size=(32, 128), aerial_size=(32, 128), aerial_polar=True)
    model = DSM(backbone_width=0.125, aerial_size=(32, 128), keep_prob=1.0, init="he", freeze_blocks=0)
    return model, spec


def source_of(split):
    from cvm.geo.sources import SplitSource

    return SplitSource(split, load_options={"synthetic_pairs": PAIRS})


def build(split, towers, folder, **kwargs):
    # 4 cells a shard: the 6 cells span two shards, so the search merges top-k across shards.
    return build_gallery(source_of(split), towers, str(folder), shard_size=4, batch_size=8, progress=False, **kwargs)


@pytest.fixture(scope="module")
def gallery(dsm, split, tmp_path_factory):
    model, spec = dsm
    towers = KerasTowers(model, spec)
    folder = tmp_path_factory.mktemp("dsm") / "g"
    return build(split, towers, folder), Localizer(str(folder), towers)


def gallery_maps(loc):
    """(flattened aerial maps [N, D], cell ids [N]) in shard order, read straight from the shard files."""
    parts = [shards_lib.read_shard(p) for p in loc.shard_paths]
    return np.concatenate([p["embeddings"] for p in parts]), np.concatenate([p["cell_id"] for p in parts])


def brute_force(ground, aerial, height, channels):
    """DSM's matching restated pair by pair in float64, with np.roll: (similarity, best shift, argmax margin)."""
    g = ground.reshape(height, -1, channels).astype(np.float64)
    wg = g.shape[1]
    sims, shifts, margins = [], [], []
    for a in aerial.reshape(len(aerial), height, -1, channels).astype(np.float64):
        scores = np.array([np.sum(np.roll(a, -k, axis=1)[:, :wg] * g) for k in range(a.shape[1])])
        k = int(np.argmax(scores))
        sims.append(scores[k] / np.linalg.norm(np.roll(a, -k, axis=1)[:, :wg]))
        shifts.append(k)
        margins.append(scores[k] - np.sort(scores)[-2])
    return np.array(sims), np.array(shifts), np.array(margins)


def rgb_ground(split, i):
    return np.ascontiguousarray(split.read_ground(i)[..., ::-1])  # the split reads BGR; towers take RGB


def check_against_brute_force(loc, query, fov_deg, k=6):
    """The hits of `query` equal the brute-force ranking, similarities and headings; returns the hits."""
    hits = loc.locate(query, k=k, fov_deg=fov_deg)
    aerial, cell_ids = gallery_maps(loc)
    ground = loc.towers.embed_ground(query[None])[0]
    sims, shifts, margins = brute_force(ground, aerial, loc.correlation["map_height"], loc.correlation["map_channels"])
    order = np.argsort(-sims, kind="stable")[:k]
    gaps = -np.diff(np.sort(sims)[::-1])
    assert gaps.min() > MARGIN and margins[order].min() > MARGIN, "near-ties in the test data: change the seed"
    assert [h.cell_id for h in hits] == cell_ids[order].tolist()
    np.testing.assert_allclose([h.score for h in hits], sims[order], atol=ATOL)
    # The panorama convention (cvm.data.augment): azimuth 180 + 360 x / W at position x. At shift k the query's
    # first column sits at panorama column k W / BINS, its centre fov/2 further: 180 + 22.5 k + fov/2.
    expected = [(180.0 + 22.5 * shifts[i] + fov_deg / 2.0) % 360.0 for i in order]
    assert [h.heading_deg for h in hits] == expected
    return hits


def test_correlation_gallery_holds_maps_and_no_faiss_index(gallery):
    summary, loc = gallery
    assert summary["cells"] == 6 and summary["shards"] == 2 and summary["dim"] == 1 * BINS * 16
    assert summary["correlation"] == {"map_height": 1, "map_channels": 16, "bins": BINS, "ground_fov_deg": 360.0}
    assert summary["index"]["kind"] == "correlation" and summary["index"]["faiss"] is False
    assert "no FAISS" in summary["index"]["search"]
    assert not os.path.exists(os.path.join(loc.gallery, "index.faiss")) and loc.index is None
    manifest = json.load(open(os.path.join(loc.gallery, "gallery.json")))
    assert manifest["correlation"] == summary["correlation"]
    aerial, cell_ids = gallery_maps(loc)
    assert aerial.shape == (6, 256) and cell_ids.tolist() == list(range(6))  # the maps, flattened row-major


@pytest.mark.parametrize("yaw", [45.0, 135.0])
def test_ranking_scores_and_headings_equal_brute_force(gallery, split, yaw):
    _, loc = gallery
    query = roll_panorama(rgb_ground(split, 2), yaw)  # cell 2's own panorama, re-centred on azimuth yaw
    hits = check_against_brute_force(loc, query, 360.0)
    assert [h.rank for h in hits] == list(range(1, 7)) and all(0.0 <= h.heading_deg < 360.0 for h in hits)
    # Every query's maps are searched in one pass too (locate_many), with the same answer.
    both = loc.locate_many([query, roll_panorama(query, 90.0)], k=6)
    assert [(h.cell_id, h.heading_deg) for h in both[0]] == [(h.cell_id, h.heading_deg) for h in hits]
    np.testing.assert_allclose([h.score for h in both[0]], [h.score for h in hits], atol=ATOL)


def test_heading_is_the_true_heading_and_follows_a_roll(dsm, split, tmp_path):
    """With a ground branch that commutes with rolls, a cell's own polar map seen as a panorama and re-centred on
    azimuth yaw (roll_panorama: the new centre looks at yaw) is found with similarity 1 and heading yaw."""
    from cvm.data.polar import polar_transform

    model, spec = dsm
    towers = KerasTowers(CircularGround(model), spec)
    build(split, towers, tmp_path / "g")
    loc = Localizer(str(tmp_path / "g"), towers)
    cell = next(source_of(split).cells(4, 5, towers.cell_px))[1]  # exactly the gallery's cell 4
    pano = polar_transform(cell, 32, 128, stretch=spec.polar_stretch)  # north at the centre column, as CVUSA
    aerial, _ = gallery_maps(loc)
    headings = {}
    for yaw in (0.0, 67.5, 157.5, 270.0, 337.5):  # whole bins (22.5 degrees = 8 panorama columns)
        hits = loc.locate(roll_panorama(pano, yaw), k=3)
        ground = towers.embed_ground(roll_panorama(pano, yaw)[None])[0]
        sims, _, margins = brute_force(ground, aerial, 1, 16)
        assert np.sort(sims)[-1] - np.sort(sims)[-2] > MARGIN and margins[4] > MARGIN
        assert hits[0].cell_id == 4 and hits[0].score == pytest.approx(1.0, abs=ATOL)
        assert hits[0].heading_deg == yaw
        headings[yaw] = hits[0].heading_deg
    # Rolling the photo by +90 degrees turns the reported heading by +90 (mod 360).
    assert (headings[67.5] + 90.0) % 360.0 == headings[157.5]
    assert (headings[270.0] + 90.0) % 360.0 == headings[0.0]


def test_fov90_query(dsm, split, tmp_path):
    """A DSM built for 90-degree photos: its ground map is 4 columns wide against the aerial's 16."""
    model, spec = dsm
    towers = KerasTowers(model, spec, fov_deg=90.0)
    summary = build(split, towers, tmp_path / "g")
    assert summary["correlation"]["ground_fov_deg"] == 90.0 and towers.ground_size == (32, 32)
    loc = Localizer(str(tmp_path / "g"), towers)
    photo = fov_crop(roll_panorama(rgb_ground(split, 1), 112.5), 90.0)  # 128 x 128 of the 512-column panorama
    assert loc.towers.embed_ground(photo[None]).shape == (1, 1 * 4 * 16)
    check_against_brute_force(loc, photo, 90.0)
    with pytest.raises(CvmError, match="--fov_deg 360: this model takes 90-degree ground images"):
        loc.locate(photo, k=3, fov_deg=360.0)


def test_heading_convention_matches_augment_and_orientation():
    """A crop fov_crop(roll_panorama(pano, yaw), fov) peaks at orientation.expected_bin_from_roll; its centre looks
    at yaw. heading_deg of that bin gives yaw exactly when the crop starts on a bin, within half a bin otherwise."""
    for width, bins in ((128, 16), (512, 64)):
        for fov in (360.0, 180.0, 90.0, 70.0):
            keep = max(1, int(round(width * fov / 360.0)))
            start = (width - keep) // 2  # fov_crop's first column
            for yaw in np.arange(0.0, 360.0, 360.0 / bins):
                roll = int(round(yaw / 360.0 * width)) % width  # roll_panorama's shift
                got = heading_deg(expected_bin_from_roll(roll, start, width, bins), bins, 360.0 * keep / width)
                assert 0.0 <= got < 360.0
                if start % (width // bins) == 0:
                    assert got == yaw
                else:
                    assert min(abs(got - yaw) % 360, 360 - abs(got - yaw) % 360) <= 180.0 / bins + 1e-9
    assert heading_deg(0, 64) == 0.0 and heading_deg(63, 64) == 354.375 and heading_deg(0, 16, 90.0) == 225.0


def test_page_and_png_show_the_heading(gallery, split, tmp_path):
    _, loc = gallery
    query = roll_panorama(rgb_ground(split, 0), 90.0)
    hits = loc.locate(query, k=3)
    out = render.render(loc, query, hits, "q", png=str(tmp_path / "q.png"), html_path=str(tmp_path / "q.html"))
    assert out["markers"] == 3 and os.path.getsize(tmp_path / "q.png") > 1000
    page = open(tmp_path / "q.html", encoding="utf-8").read()
    assert page.count('<polygon class="heading"') == 3 and "<th>heading (\u00b0)</th>" in page
    assert f"<td>{hits[0].heading_deg:.1f}</td>" in page and "(correlation)" in page
    assert json.dumps(hits[0].heading_deg) in page  # in the page's hit list too
    # North-up arrows: heading 0 points up the image, 90 to the right.
    assert render.heading_vector(0.0, 10.0) == pytest.approx((0.0, -10.0))
    assert render.heading_vector(90.0, 10.0) == pytest.approx((10.0, 0.0), abs=1e-12)


def test_plain_method_hits_have_no_heading(tiny_model, split, tmp_path):
    model, spec = tiny_model  # SAFA: plain descriptors, a FAISS index
    towers = KerasTowers(model, spec)
    assert towers.correlation is None
    summary = build(split, towers, tmp_path / "g")
    assert "correlation" not in summary and summary["index"]["kind"] == "exact"
    loc = Localizer(str(tmp_path / "g"), towers)
    hits = loc.locate(rgb_ground(split, 0), k=3)
    assert len(hits) == 3 and all(h.heading_deg is None and h.to_dict()["heading_deg"] is None for h in hits)
    page = render.page("q", rgb_ground(split, 0), np.zeros((64, 64, 3), np.uint8), [], hits, 6, "exact")
    assert 'class="heading"' not in page and "<th>heading" not in page and '"heading_deg": null' in page


def test_refusals(dsm, split, gallery, tmp_path):
    model, spec = dsm
    towers = KerasTowers(model, spec)
    with pytest.raises(CvmError, match="--index hnsw: a correlation gallery"):
        build(split, towers, tmp_path / "a", index="hnsw")
    with pytest.raises(CvmError, match="--index_params"):
        build(split, towers, tmp_path / "b", index_params={"efSearch": 64})
    assert not os.path.exists(tmp_path / "a" / "shards")  # refused before anything was embedded
    # A DSM gallery of an older cvm (a FAISS index over the flattened maps, no layout in gallery.json).
    _, loc = gallery
    old = tmp_path / "old"
    os.makedirs(old)
    manifest = json.load(open(os.path.join(loc.gallery, "gallery.json")))
    del manifest["correlation"]
    json.dump(manifest, open(old / "gallery.json", "w"))
    with pytest.raises(CvmError, match="inner products rank wrongly"):
        Localizer(str(old), towers)
    # An export of a correlation method must say how to unflatten its maps; plain methods need nothing.
    with pytest.raises(CvmError, match="export it again"):
        exported_correlation({"method": "dsm"}, "exported/dsm")
    assert exported_correlation({"method": "safa"}, "x") is None
    layout = {"map_height": 1, "map_channels": 16, "bins": 16, "ground_fov_deg": 360.0}
    assert exported_correlation({"method": "dsm", "correlation": layout}, "x") == layout



@pytest.fixture(scope="module")
def exported(dsm, split, tmp_path_factory):
    """(SavedModel folder, its gallery): the DSM exported as `cvm export` writes it, the gallery built from it."""
    from cvm.export.savedmodel import export_savedmodel
    from cvm.geo.towers import SavedModelTowers

    model, spec = dsm
    tmp = tmp_path_factory.mktemp("dsm_sm")
    export_savedmodel(model, spec, str(tmp / "sm"), metadata={"method": "dsm", "checkpoint": "random init"})
    build(split, SavedModelTowers(str(tmp / "sm")), tmp / "g")
    return str(tmp / "sm"), str(tmp / "g")


def test_savedmodel_gallery_locates_like_the_keras_one(dsm, split, gallery, exported):
    from cvm.geo.towers import SavedModelTowers

    model, spec = dsm
    saved, folder = exported
    towers, keras_towers = SavedModelTowers(saved), KerasTowers(model, spec)
    assert towers.correlation == keras_towers.correlation  # recorded in assets/cvm.json
    assert towers.fingerprint == keras_towers.fingerprint and towers.cell_px == (256, 256)  # a polar model's cells
    query = roll_panorama(rgb_ground(split, 3), 90.0)
    hits = Localizer(folder).locate(query, k=6)  # the SavedModel recorded in gallery.json
    keras_hits = gallery[1].locate(query, k=6)
    # The same graph on the same cells (the polar map in TF, pixel for pixel as NumPy's): float32 noise only.
    assert [(h.cell_id, h.heading_deg) for h in hits] == [(h.cell_id, h.heading_deg) for h in keras_hits]
    np.testing.assert_allclose([h.score for h in hits], [h.score for h in keras_hits], atol=ATOL)


@pytest.mark.slow
def test_locate_cli_prints_headings(split, exported, tmp_path):
    """`cvm locate` on the DSM SavedModel's gallery: headings in --json (as the Localizer's), the text and the page."""
    import subprocess
    import sys

    import cv2

    _, gallery = exported
    photo = str(tmp_path / "photo.png")
    cv2.imwrite(photo, roll_panorama(split.read_ground(3), 90.0))  # a BGR file, as a camera's
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    args = [sys.executable, "-m", "cvm.cli.main", "locate", photo, f"--gallery={gallery}", "--k=3"]
    res = subprocess.run(args + ["--json", f"--out={tmp_path / 'out'}"], capture_output=True, text=True,
                         timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    hits = json.loads(res.stdout)[0]["hits"]
    expected = Localizer(gallery).locate(cv2.imread(photo)[..., ::-1], k=3)
    assert [(h["cell_id"], h["heading_deg"]) for h in hits] == [(h.cell_id, h.heading_deg) for h in expected]
    assert 'class="heading"' in open(tmp_path / "out" / "photo.html", encoding="utf-8").read()
    assert os.path.getsize(tmp_path / "out" / "photo.png") > 1000
    text = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert text.returncode == 0 and f"facing {expected[0].heading_deg:.1f} deg" in text.stdout
    assert text.stdout.count(" deg  ") == 3  # one heading per hit line


def _without_aerial_polar(saved: str, dest) -> str:
    """A copy of an export whose cvm.json lacks aerial_polar, as cvm wrote it before recording the flag."""
    import shutil

    shutil.copytree(saved, dest)
    meta_path = os.path.join(dest, "assets", "cvm.json")
    with open(meta_path) as f:
        meta = json.load(f)
    del meta["aerial_polar"]
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    return str(dest)


def test_polar_export_without_aerial_polar_is_refused_clearly(exported, tmp_path):
    from cvm.geo.towers import SavedModelTowers

    old = _without_aerial_polar(exported[0], tmp_path / "old")
    with pytest.raises(CvmError, match=r"cvm\.json does not record aerial_polar .* 32x128 is not square.*cvm export"):
        SavedModelTowers(old)

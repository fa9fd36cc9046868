"""Gallery build (shards, resume, fingerprints) and Localizer against independent references."""

import json
import os

import cv2
import numpy as np
import pytest

from cvm.data.images import normalise, resize_area
from cvm.errors import CvmError
from cvm.geo import shards as shards_lib
from cvm.geo.gallery import build_gallery
from cvm.geo.localizer import Localizer, haversine_m
from cvm.geo.sources import GeoTiffSource
from cvm.geo.towers import KerasTowers, SavedModelTowers
from tests.geo.geolib import rng_image, write_tif


class Counting:
    """Towers wrapper counting the cells embedded (to see what a resumed build recomputes)."""

    def __init__(self, towers):
        self.towers, self.cells = towers, 0

    def __getattr__(self, name):
        return getattr(self.towers, name)

    def embed_aerial(self, images):
        self.cells += len(images)
        return self.towers.embed_aerial(images)


@pytest.fixture(scope="module")
def raster(tmp_path_factory):
    img = cv2.GaussianBlur(rng_image(200, 200, seed=5), (0, 0), 3)
    return write_tif(tmp_path_factory.mktemp("r") / "ortho.tif", img, res=2.0)


def test_keras_and_savedmodel_towers_agree(tiny_model, saved_model):
    model, spec = tiny_model
    k, s = KerasTowers(model, spec), SavedModelTowers(saved_model)
    assert k.fingerprint == s.fingerprint
    cells = rng_image(64, 64, seed=9)[None].repeat(3, 0)
    # Same graph on the same input; oneDNN may block the convolutions differently: float32 noise ~1e-6.
    np.testing.assert_allclose(k.embed_aerial(cells), s.embed_aerial(cells), atol=1e-5)
    # Against the model itself on the pipeline's preprocessing (RGB -> BGR, Caffe mean), L2-normalised.
    expected = model.encode_aerial(normalise(cells[..., ::-1], spec), training=False).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(k.embed_aerial(cells), expected, atol=1e-5)


def test_build_resume_and_locate(tiny_model, saved_model, raster, tmp_path):
    model, spec = tiny_model
    towers = Counting(SavedModelTowers(saved_model))
    src = GeoTiffSource([raster], cell_m=100, stride_m=50)  # 7 x 7 cells of 50 px -> resampled to 64
    gallery = str(tmp_path / "g")
    summary = build_gallery(src, towers, gallery, shard_size=10, batch_size=4, progress=False)
    assert summary["cells"] == 49 and summary["shards"] == 5 and towers.cells == 49
    assert summary["index"]["kind"] == "exact" and summary["fingerprint"] == towers.fingerprint
    first = shards_lib.read_shard(shards_lib.shard_path(gallery, 1))

    # Resume: only the missing shard is embedded again, and it comes back the same.
    os.remove(shards_lib.shard_path(gallery, 1))
    with open(shards_lib.shard_path(gallery, 3), "wb") as f:
        f.write(b"truncated")  # a torn write is rebuilt too
    towers.cells = 0
    again = build_gallery(src, towers, gallery, shard_size=10, batch_size=4, progress=False)
    assert towers.cells == 20 and again["resumed_shards"] == 3
    redone = shards_lib.read_shard(shards_lib.shard_path(gallery, 1))
    np.testing.assert_allclose(redone["embeddings"], first["embeddings"], atol=1e-6)
    np.testing.assert_array_equal(redone["cell_id"], np.arange(10, 20))

    # Shard embedding of a cell == the model on that window, resampled independently with OpenCV.
    import rasterio
    with rasterio.open(raster) as f:
        full = np.moveaxis(f.read(), 0, -1)
    i = 12
    r, c = divmod(i, 7)
    window = full[25 * r:25 * r + 50, 25 * c:25 * c + 50]
    cell = resize_area(window, (64, 64))
    ref = model.encode_aerial(normalise(cell[None, ..., ::-1], spec), training=False).numpy()[0]
    got = redone["embeddings"][list(redone["cell_id"]).index(i)]
    # GDAL's average and OpenCV's INTER_AREA differ by rounding (<= 1 grey level per pixel): cosine ~1.
    assert float(np.dot(got, ref / np.linalg.norm(ref))) > 0.995

    # Localizer: top-k equals brute force over the shards; coordinates come from the cell metadata.
    loc = Localizer(gallery)  # the SavedModel recorded in gallery.json
    query = rng_image(32, 128, seed=11)
    hits = loc.locate(query, k=5)
    g = loc.towers.embed_ground(query[None])[0]
    allv = np.concatenate([shards_lib.read_shard(p)["embeddings"] for p in sorted(
        os.path.join(gallery, "shards", n) for n in os.listdir(os.path.join(gallery, "shards")))])
    order = np.argsort(-(allv @ g))[:5]
    assert [h.cell_id for h in hits] == list(order)
    np.testing.assert_allclose([h.score for h in hits], (allv @ g)[order], atol=1e-5)
    top = hits[0]
    r, c = divmod(top.cell_id, 7)
    assert (top.x, top.y) == (690000.0 + 50 * c + 50, 6090400.0 - 50 * r - 50)
    for h in hits:
        assert h.distance_to_top1_m == pytest.approx(float(haversine_m(top.lat, top.lon, h.lat, h.lon)))
        # UTM is conformal with scale ~1.0003 at 690 km easting: CRS and great-circle distances agree to 0.5 %.
        assert h.distance_to_top1_m == pytest.approx(np.hypot(h.x - top.x, h.y - top.y), rel=5e-3, abs=1e-6)
    assert hits[0].rank == 1 and hits[0].distance_to_top1_m == 0.0


def test_other_model_is_refused_naming_both(tiny_model, saved_model, raster, tmp_path):
    from cvm.models import build_model

    model, spec = tiny_model
    gallery = str(tmp_path / "g")
    src = GeoTiffSource([raster], cell_m=200, stride_m=200)
    build_gallery(src, SavedModelTowers(saved_model), gallery, progress=False)
    other = build_model("safa", backbone_width=0.0625, spatial_maps=2, keep_prob=1.0, init="he",
                        ground_size=spec.ground_size, aerial_size=spec.aerial_size)
    theirs = KerasTowers(other, spec)
    ours = json.load(open(os.path.join(gallery, "gallery.json")))["fingerprint"]
    with pytest.raises(CvmError) as err:
        Localizer(gallery, theirs)
    assert ours in str(err.value) and theirs.fingerprint in str(err.value)
    # Same weights, other preprocessing (a different mean): refused too.
    import dataclasses
    shifted = KerasTowers(model, dataclasses.replace(spec, mean=(0.0, 0.0, 0.0)))
    assert shifted.fingerprint.split("-")[0] == ours.split("-")[0] and shifted.fingerprint != ours
    with pytest.raises(CvmError, match=shifted.fingerprint):
        Localizer(gallery, shifted)
    with pytest.raises(CvmError, match="built with model fingerprint"):
        build_gallery(src, theirs, gallery, progress=False)  # nor resumed with it


@pytest.mark.slow
def test_onnx_towers_build_the_same_gallery(tiny_model, raster, tmp_path):
    pytest.importorskip("tf2onnx")
    from cvm.export.onnx import export_onnx
    from cvm.geo.towers import load_towers

    model, spec = tiny_model
    export_onnx(model, spec, str(tmp_path / "onnx"), metadata={"method": "safa"})
    onnx_towers, keras_towers = load_towers(str(tmp_path / "onnx")), KerasTowers(model, spec)
    src = GeoTiffSource([raster], cell_m=200, stride_m=100)
    a = build_gallery(src, onnx_towers, str(tmp_path / "a"), progress=False)
    build_gallery(src, keras_towers, str(tmp_path / "b"), progress=False)
    assert a["fingerprint"] == onnx_towers.fingerprint != keras_towers.fingerprint
    x = shards_lib.read_shard(shards_lib.shard_path(str(tmp_path / "a"), 0))
    y = shards_lib.read_shard(shards_lib.shard_path(str(tmp_path / "b"), 0))
    # cvm.export.towers.TOLERANCE: float32 kernels of ONNX Runtime against TF's on unit descriptors.
    np.testing.assert_allclose(x["embeddings"], y["embeddings"], atol=1e-4)
    hits = Localizer(str(tmp_path / "a")).locate(rng_image(32, 128, seed=2), k=3)  # its model_path: the export
    assert len(hits) == 3


def test_split_gallery_locates_and_renders(tiny_model, tmp_path):
    from cvm.data import load_split
    from cvm.geo import render
    from cvm.geo.sources import SplitSource

    model, spec = tiny_model
    towers = KerasTowers(model, spec)
    split = load_split("synthetic", "val", synthetic_pairs=30)  # 6 rendered pairs
    gallery = str(tmp_path / "g")
    summary = build_gallery(SplitSource(split, load_options={"synthetic_pairs": 30}), towers, gallery,
                            progress=False)
    assert summary["cells"] == 6 and summary["source"]["cell_extent_m"] == 172.5
    loc = Localizer(gallery, towers)
    ground = split.read_ground(0)[..., ::-1]
    hits = loc.locate(ground, k=3)
    assert {h.name for h in hits} <= set(split.ids) and len(hits) == 3
    from cvm.data.synthetic.write import UTM_OFFSET
    by_id = {p.id: p.location for p in split}
    assert all(h.x == by_id[h.name][0] + UTM_OFFSET[0] for h in hits)
    out = render.render(loc, ground, hits, "q", png=str(tmp_path / "q.png"), html_path=str(tmp_path / "q.html"))
    assert out["markers"] == 3 and os.path.getsize(tmp_path / "q.png") > 1000
    mosaic, bounds, markers = render.view(loc, hits)
    assert mosaic.std() > 5  # painted from the split's aerials, not the blank canvas
    with pytest.raises(CvmError, match="this model takes 360-degree ground images"):
        loc.locate(ground, k=3, fov_deg=90)


def test_plain_export_without_aerial_polar_still_loads(tiny_model, saved_model, tmp_path):
    """Exports before aerial_polar was recorded: a square aerial input is a plain one, same fingerprint."""
    from tests.geo.test_geo_dsm import _without_aerial_polar

    old = SavedModelTowers(_without_aerial_polar(saved_model, tmp_path / "old"))
    assert old.fingerprint == KerasTowers(*tiny_model).fingerprint and old.cell_px == (64, 64)


def test_ivfflat_gallery_locates_as_brute_force(tiny_model, raster, tmp_path):
    """--index ivfflat end to end: recorded with its parameters, searched with them, hits equal to brute force."""
    towers = KerasTowers(*tiny_model)
    src = GeoTiffSource([raster], cell_m=100, stride_m=25)  # 13 x 13 = 169 cells: nlist 4
    summary = build_gallery(src, towers, str(tmp_path / "g"), shard_size=50, progress=False, index="ivfflat",
                            index_params={"nprobe": 4})
    assert summary["index"]["kind"] == "ivfflat" and summary["index"]["params"] == {"nlist": 4, "nprobe": 4}
    # Every list probed: FAISS's and NumPy's float32 dot products (different summation orders, ~1e-7 apart) can
    # only swap near-ties at rank 10 of the build's 169 noisy queries (0.9994, one swap, with OMP_NUM_THREADS=1).
    assert summary["index"]["recall@10_vs_exact"] >= 0.99
    loc = Localizer(str(tmp_path / "g"), towers)
    query = rng_image(32, 128, seed=12)
    g = towers.embed_ground(query[None])[0]
    allv = np.concatenate([shards_lib.read_shard(shards_lib.shard_path(str(tmp_path / "g"), i))["embeddings"]
                           for i in range(4)])
    scores = allv @ g
    hits = loc.locate(query, k=10)
    # Brute force's top 10 scores, in order, and each hit's own score (tie-proof: cells of a blurred raster can
    # score within float32 rounding of each other, and the two sums may order such a pair either way).
    np.testing.assert_allclose([h.score for h in hits], np.sort(scores)[::-1][:10], atol=1e-5)
    np.testing.assert_allclose([h.score for h in hits], scores[[h.cell_id for h in hits]], atol=1e-5)
    assert len({h.cell_id for h in hits}) == 10

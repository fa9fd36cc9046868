"""The Beam embedding pipeline (DirectRunner) writes the same shards as the local build."""

import numpy as np

from cvm.geo import shards as shards_lib
from cvm.geo.gallery import build_gallery
from cvm.geo.sources import GeoTiffSource
from cvm.geo.towers import SavedModelTowers
from tests.geo.geolib import rng_image, write_tif


def test_beam_shards_equal_local_ones(saved_model, tmp_path):
    img = rng_image(120, 120, seed=4)
    img[img == 0] = 1  # 0 is the nodata value
    img[:40, :40] = 0
    raster = write_tif(tmp_path / "o.tif", img, res=1.0, nodata=0)
    src = GeoTiffSource([raster], cell_m=40, stride_m=40)  # 9 cells, one all nodata
    towers = SavedModelTowers(saved_model)
    local = build_gallery(src, towers, str(tmp_path / "local"), shard_size=4, batch_size=3, progress=False)
    beam = build_gallery(src, towers, str(tmp_path / "beam"), shard_size=4, batch_size=2, progress=False,
                         runner="beam", saved_model=saved_model)
    assert local["cells"] == beam["cells"] == 8 and local["skipped"] == beam["skipped"] == {"nodata": 1}
    for s in range(3):
        a = shards_lib.read_shard(shards_lib.shard_path(str(tmp_path / "local"), s))
        b = shards_lib.read_shard(shards_lib.shard_path(str(tmp_path / "beam"), s))
        assert a["header"] == b["header"]
        for k in shards_lib.META_KEYS:
            np.testing.assert_array_equal(a[k], b[k])
        # Other batch sizes change oneDNN's blocking: float32 noise on unit vectors, far below 1e-5.
        np.testing.assert_allclose(a["embeddings"], b["embeddings"], atol=1e-5)

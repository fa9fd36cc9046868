"""`cvm gallery build` and `cvm locate` end to end on the synthetic town, and the HTML page in Chromium."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.geo.geolib import rng_image

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def cvm(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "cvm.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def chromium(page, tmp_path):
    """(DOM after scripts ran, console lines) of a page loaded headless from file://."""
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                          "--virtual-time-budget=3000", "--dump-dom", f"file://{page}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout, [line for line in out.stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture(scope="module")
def located(town, saved_model, tmp_path_factory):
    """A gallery of the town (built through the API; the CLI build is test_gallery_build_cli) and `cvm locate`."""
    from cvm.geo.gallery import build_gallery
    from cvm.geo.sources import GeoTiffSource
    from cvm.geo.towers import SavedModelTowers

    tmp = tmp_path_factory.mktemp("cli")
    gallery = str(tmp / "gallery")
    build_gallery(GeoTiffSource([os.path.join(town, "orthophoto.tif")], 100, 50), SavedModelTowers(saved_model),
                  gallery, shard_size=20, progress=False)
    pano = os.path.join(town, "panos", "pano00001.jpg")
    res = cvm("locate", pano, os.path.join(town, "panos", "pano00002.jpg"), f"--gallery={gallery}", "--k=4",
              "--json", f"--out={tmp / 'out'}")
    assert res.returncode == 0, res.stderr
    return gallery, json.loads(res.stdout), tmp


@pytest.mark.slow
def test_gallery_build_cli_resumes_and_refuses_another_model(town, saved_model, tiny_model, tmp_path):
    gallery = str(tmp_path / "gallery")
    args = ["gallery", "build", f"--gallery={gallery}", f"--saved_model={saved_model}",
            f"--geotiff={os.path.join(town, 'orthophoto.tif')}", "--cell_m=100", "--stride_m=50", "--shard_size=20",
            "--noprogress"]
    out = cvm(*args)
    assert out.returncode == 0, out.stderr
    assert "49 cells of 49 candidates" in out.stdout and "index exact" in out.stdout
    again = cvm(*args, "--index=hnsw")
    assert again.returncode == 0 and "(3 already built)" in again.stdout and "recall@10 vs exact" in again.stdout
    from cvm.export.savedmodel import export_savedmodel
    from cvm.models import build_model

    model, spec = tiny_model
    other = build_model("safa", backbone_width=0.0625, spatial_maps=2, keep_prob=1.0, init="he",
                        ground_size=spec.ground_size, aerial_size=spec.aerial_size)
    export_savedmodel(other, spec, str(tmp_path / "other"))
    img = os.path.join(town, "panos", "pano00001.jpg")
    refused = cvm("locate", img, f"--gallery={gallery}", f"--saved_model={tmp_path / 'other'}")
    assert refused.returncode == 2 and "built with model fingerprint" in refused.stderr


def test_locate_json_pages_and_pngs(located):
    gallery, report, tmp = located
    assert [os.path.basename(e["image"]) for e in report] == ["pano00001.jpg", "pano00002.jpg"]
    manifest = json.load(open(os.path.join(gallery, "gallery.json")))
    for entry in report:
        hits = entry["hits"]
        assert [h["rank"] for h in hits] == [1, 2, 3, 4]
        assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
        assert hits[0]["distance_to_top1_m"] == 0.0
        assert all(-35.4 < h["lat"] < -35.2 and 149.0 < h["lon"] < 149.2 for h in hits)
        assert os.path.getsize(entry["png"]) > 1000
        html = open(entry["html"], encoding="utf-8").read()
        # Offline: no network references at all (images are data: URIs, no external script or style).
        assert not re.search(r"(src|href)\s*=\s*[\"'](https?:)?//", html) and "http://" not in html
        assert html.count('class="marker') == 4
    assert manifest["cells"] == 49


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary: apt-get install -y chromium (Debian) to run it")
def test_html_page_loads_in_chromium_with_k_markers(located, tmp_path):
    _, report, _ = located
    dom, console = chromium(report[0]["html"], tmp_path)
    assert console == []  # no console errors, warnings or uncaught exceptions
    assert 'data-markers="4"' in dom  # the inline script ran and counted the drawn markers
    assert "4 hits, 4 markers drawn" in dom
    # The check itself sees errors: a page with one logs it.
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    assert any("undefinedFunction" in line for line in chromium(str(bad), tmp_path)[1])


def test_user_errors(located, saved_model, tmp_path):
    gallery, _, _ = located
    img = tmp_path / "q.png"
    import cv2

    cv2.imwrite(str(img), rng_image(16, 64))
    out = cvm("locate", str(img), f"--gallery={tmp_path / 'none'}")
    assert out.returncode == 2 and "is not a gallery: no gallery.json" in out.stderr and "Traceback" not in out.stderr
    out = cvm("locate", str(img), f"--gallery={gallery}", "--checkpoint=latest")
    assert out.returncode == 2 and "--checkpoint has no effect" in out.stderr
    out = cvm("gallery", "build", f"--gallery={tmp_path / 'g'}", f"--saved_model={saved_model}",
              f"--geotiff={tmp_path / 'missing.tif'}", "--cell_m=50")
    assert out.returncode == 2 and "GeoTIFF not found" in out.stderr
    out = cvm("gallery", "build", f"--gallery={tmp_path / 'g'}", f"--saved_model={saved_model}",
              "--dataset=synthetic", "--zoom=3")
    assert out.returncode == 2 and "--zoom has no effect" in out.stderr

"""What `cvm locate` shows: the gallery mosaic around the hits with ranked markers, the query, the coordinates.

`view(localizer, hits)` picks a square window (in the top hit's CRS) around the hits in that CRS and renders
the source there; `write_png` draws numbered markers (top hit red) under the query; `write_html` writes a
self-contained page (images inline as data: URIs, an SVG overlay, no script or style from the network).
Hits of a correlation gallery (DSM) carry a heading: both draw it as an arrow from the marker (the mosaic is
north-up in the CRS grid) and print the number beside it.
"""

from __future__ import annotations

import base64
import html
import json
from typing import List, Optional

import cv2
import numpy as np

from cvm.geo.localizer import Hit

MAX_VIEW_PX = 768
MAX_VIEW_M = 20000.0  # hits farther than this from the top hit are listed but not drawn


def view(localizer, hits: List[Hit], size_px: int = MAX_VIEW_PX):
    """(RGB mosaic, bounds (x0, y0, x1, y1), [(hit, col, row)] markers in view) around the hits."""
    extent = localizer.cell_extent_m()
    top = hits[0]
    near = [h for h in hits if h.crs == top.crs and abs(h.x - top.x) <= MAX_VIEW_M and abs(h.y - top.y) <= MAX_VIEW_M]
    xs, ys = np.array([h.x for h in near]), np.array([h.y for h in near])
    cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
    side = max(xs.max() - xs.min(), ys.max() - ys.min()) + 2 * extent
    side = max(side, 3 * extent)
    bounds = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    mosaic = None
    source = localizer.source
    if source is not None and source.crs == top.crs:
        try:
            mosaic = source.mosaic(bounds, (size_px, size_px))
        except Exception:  # a moved or unreadable raster: markers on a plain canvas, said in the page
            mosaic = None
    if mosaic is None:
        mosaic = np.full((size_px, size_px, 3), 40, np.uint8)
    scale = size_px / side
    markers = [(h, (h.x - bounds[0]) * scale, (bounds[3] - h.y) * scale) for h in near]
    return mosaic, bounds, markers


def _thumb(image: np.ndarray, width: int) -> np.ndarray:
    h, w = image.shape[:2]
    height = max(1, int(round(h * width / w)))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if w > width else cv2.INTER_LINEAR)


def heading_vector(heading_deg: float, length: float) -> tuple:
    """(d_col, d_row) of a heading (clockwise from north) on a north-up image: north is up, east right."""
    a = np.radians(heading_deg)
    return float(length * np.sin(a)), float(-length * np.cos(a))


def marker_label(hit: Hit) -> str:
    """A marker's text: the rank, and the heading where the gallery estimates one (DSM)."""
    return str(hit.rank) if hit.heading_deg is None else f"{hit.rank} {hit.heading_deg:.0f}\u00b0"


def draw_png(query: np.ndarray, mosaic: np.ndarray, markers) -> np.ndarray:
    """RGB image: the query on top, the mosaic with numbered markers below (rank 1 red, others yellow), each
    with its heading arrow and number when the hits have one (DSM)."""
    out = mosaic.copy()
    radius = max(6, out.shape[0] // 60)
    for h, col, row in reversed(markers):  # rank 1 drawn last, on top
        colour = (230, 40, 40) if h.rank == 1 else (250, 210, 40)
        centre = (int(round(col)), int(round(row)))
        text = str(h.rank)
        if h.heading_deg is not None:
            dx, dy = heading_vector(h.heading_deg, 3.0 * radius)
            tip = (int(round(col + dx)), int(round(row + dy)))
            for width, c in ((4, (0, 0, 0)), (2, colour)):
                cv2.arrowedLine(out, centre, tip, c, width, cv2.LINE_AA, tipLength=0.35)
            text = f"{h.rank} {h.heading_deg:.0f}deg"  # OpenCV's Hershey fonts have no degree sign
        cv2.circle(out, centre, radius, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.circle(out, centre, radius, colour, 2, cv2.LINE_AA)
        cv2.putText(out, text, (centre[0] + radius, centre[1] - radius), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, text, (centre[0] + radius, centre[1] - radius), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5, colour, 1, cv2.LINE_AA)
    q = _thumb(query, out.shape[1])
    return np.concatenate([q, np.full((4, out.shape[1], 3), 255, np.uint8), out], axis=0)


def write_png(path: str, image_rgb: np.ndarray) -> None:
    from cvm.errors import CvmError

    if not cv2.imwrite(path, np.ascontiguousarray(image_rgb[..., ::-1])):
        raise CvmError(f"could not write {path}: check that the folder exists and is writable")


def _data_uri(image_rgb: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image_rgb[..., ::-1]))
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>cvm locate: {title}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; background: #fafafa; color: #222; }}
.view {{ position: relative; display: inline-block; }}
.view img {{ display: block; }}
.view svg {{ position: absolute; left: 0; top: 0; }}
.marker circle {{ fill: none; stroke-width: 3; }}
.marker.top circle {{ stroke: #e62828; }}
.marker circle {{ stroke: #fad228; }}
.marker text {{ font: bold 13px sans-serif; fill: #fff; paint-order: stroke; stroke: #000; stroke-width: 3; }}
.marker .heading {{ stroke-width: 3; }}
.marker.top .heading {{ stroke: #e62828; fill: #e62828; }}
.marker .heading {{ stroke: #fad228; fill: #fad228; }}
table {{ border-collapse: collapse; margin-top: 1em; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }}
tr.selected {{ background: #ffe9a8; }}
</style></head>
<body>
<h1>Where was {title} taken?</h1>
<p>Query:</p>
<img id="query" alt="query image" src="{query}" width="{qw}" height="{qh}">
<p>Top {k} of {cells} gallery cells ({index}); {note}</p>
<div class="view"><img id="mosaic" alt="gallery mosaic around the hits" src="{mosaic}" width="{size}" height="{size}">
<svg width="{size}" height="{size}" viewBox="0 0 {size} {size}">{markers}</svg></div>
<table id="hits"><thead><tr><th>rank</th><th>score</th><th>lat</th><th>lon</th><th>x</th><th>y</th>
<th>distance to #1 (m)</th>{heading_th}<th>cell</th></tr></thead><tbody>{rows}</tbody></table>
<p id="status"></p>
<script>
(function () {{
  var hits = {hits_json};
  var markers = document.querySelectorAll('.marker');
  markers.forEach(function (m) {{
    m.addEventListener('mouseenter', function () {{
      var row = document.getElementById('hit-' + m.getAttribute('data-rank'));
      if (row) row.className = 'selected';
    }});
    m.addEventListener('mouseleave', function () {{
      var row = document.getElementById('hit-' + m.getAttribute('data-rank'));
      if (row) row.className = '';
    }});
  }});
  document.getElementById('status').textContent = hits.length + ' hits, ' + markers.length + ' markers drawn';
  document.body.setAttribute('data-markers', String(markers.length));
}})();
</script>
</body></html>
"""


def page(title: str, query: np.ndarray, mosaic: np.ndarray, markers, hits: List[Hit], cells: int, index: str,
         note: str = "") -> str:
    size = mosaic.shape[0]
    q = _thumb(query, min(size, max(query.shape[1], 256)))
    headed = any(h.heading_deg is not None for h in hits)
    drawn = []
    for h, col, row in markers:
        cls = "marker top" if h.rank == 1 else "marker"
        arrow, heading = "", ""
        if h.heading_deg is not None:
            heading = f", heading {h.heading_deg:.1f}\u00b0"
            dx, dy = heading_vector(h.heading_deg, 28.0)
            hx, hy = heading_vector(h.heading_deg, 8.0)  # the arrow head: a triangle at the tip
            tip = (col + dx, row + dy)
            head = [tip, (tip[0] - hx - 0.6 * hy, tip[1] - hy + 0.6 * hx),
                    (tip[0] - hx + 0.6 * hy, tip[1] - hy - 0.6 * hx)]
            points = " ".join(f"{x:.1f},{y:.1f}" for x, y in head)
            arrow = (f'<line class="heading" x1="{col:.1f}" y1="{row:.1f}" x2="{tip[0]:.1f}" y2="{tip[1]:.1f}"></line>'
                     f'<polygon class="heading" points="{points}"></polygon>')
        drawn.append(f'<g class="{cls}" data-rank="{h.rank}"><title>#{h.rank} {h.lat:.6f}, {h.lon:.6f} '
                     f'(score {h.score:.3f}{heading})</title>{arrow}<circle cx="{col:.1f}" cy="{row:.1f}" r="9">'
                     f'</circle><text x="{col + 10:.1f}" y="{row - 10:.1f}">{html.escape(marker_label(h))}</text></g>')
    rows = "".join(
        f'<tr id="hit-{h.rank}"><td>{h.rank}</td><td>{h.score:.4f}</td><td>{h.lat:.6f}</td><td>{h.lon:.6f}</td>'
        f'<td>{h.x:.1f}</td><td>{h.y:.1f}</td><td>{h.distance_to_top1_m:.1f}</td>'
        f'{f"<td>{h.heading_deg:.1f}</td>" if headed else ""}<td>{html.escape(h.name)}</td></tr>'
        for h in hits)
    hits_json = json.dumps([{"rank": h.rank, "lat": h.lat, "lon": h.lon, "score": h.score,
                             "heading_deg": h.heading_deg} for h in hits])
    hits_json = hits_json.replace("</", "<\\/")  # never closes the script element
    if headed and not note:
        note = ("markers: rank 1 red; arrows: the estimated heading of the photo's centre (clockwise from north, "
                "the map north-up)")
    return _PAGE.format(title=html.escape(title), query=_data_uri(q), qw=q.shape[1], qh=q.shape[0], k=len(hits),
                        cells=cells, index=html.escape(index), note=html.escape(note) or "markers: rank 1 red",
                        mosaic=_data_uri(mosaic), size=size, markers="".join(drawn), rows=rows, hits_json=hits_json,
                        heading_th="<th>heading (\u00b0)</th>" if headed else "")


def write_html(path: str, text: str) -> None:
    from cvm.errors import CvmError

    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise CvmError(f"could not write {path}: {exc.strerror}") from None


def render(localizer, query: np.ndarray, hits: List[Hit], title: str, png: Optional[str] = None,
           html_path: Optional[str] = None) -> dict:
    """Write the PNG and / or HTML for one query; returns {markers drawn, hits}."""
    mosaic, bounds, markers = view(localizer, hits)
    note = ""
    if len(markers) < len(hits):
        note = f"{len(hits) - len(markers)} hits lie outside this view (over {MAX_VIEW_M / 1000:g} km or another CRS)"
    if png:
        write_png(png, draw_png(query, mosaic, markers))
    if html_path:
        idx = localizer.manifest["index"]["kind"]
        write_html(html_path, page(title, query, mosaic, markers, hits, len(localizer), idx, note))
    return {"markers": len(markers), "bounds": list(bounds)}

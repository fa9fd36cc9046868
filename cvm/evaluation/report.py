"""Evaluation reports: the results JSON of the design's contract, a recall@K curve and a retrieval grid."""

from __future__ import annotations

import datetime
import os
from typing import Callable, Mapping, Optional, Sequence, Union

import cv2
import numpy as np

from cvm import atomic
from cvm.errors import CvmError
from cvm.evaluation.recall import RANKING_CONVENTION, recall_curve, top1_percent_k

TOP1_PERCENT_CONVENTIONS = {
    "r@1%_floor": "K = floor(N/100), N = references: CVFT/SAFA test scripts, DSM, Sample4Geo",
    "r@1%_floor_plus_1": "K = floor(N/100) + 1: CVM-Net, Regmi, CVFT training-time validation, L2LTR, TransGeo",
}
RADIUS_PROTOCOL = (
    "success at K if any of the top-K references lies within radius_m metres (UTM) of the query; "
    "0 = the same id only, 5 = OriCNN's CVACT_test protocol, 25 = the CVACT loaders' same-place radius"
)
GREEN = (0, 255, 0)  # BGR
RED = (0, 0, 255)
GRID_GAP = 6  # pixels between tiles and around the grid
GRID_QUERY_GAP = 18  # wider gap after the query column
GRID_FRAME = 4  # frame thickness drawn inside each retrieved tile

ImageSource = Union[Sequence[np.ndarray], Callable[[int], np.ndarray]]


def _plain(value):
    """JSON-ready copy: NumPy scalars to Python, arrays dropped by the caller."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def results_dict(
    metrics: Mapping,
    *,
    method: str,
    dataset: str,
    split: str,
    n_queries: int,
    n_references: int,
    checkpoint: Optional[str],
    model_dir: Optional[str] = None,
    extra: Optional[Mapping] = None,
) -> dict:
    """The results JSON (design.md contracts) from `evaluate`'s output, or from one `recall_at_k` result.

    Metrics are fractions in [0, 1], per direction; per-query arrays (ranks, top-k) are left out.
    """
    import cvm

    if "directions" in metrics:
        per_direction = metrics["directions"]
    else:  # a single recall_at_k / recall_within_radius result: the ground -> aerial direction
        single = {k: v for k, v in metrics.items() if not isinstance(v, np.ndarray)}
        radius = float(single.get("radius_m", 0.0))
        if radius > 0:
            per_direction = {"ground_to_aerial": {"metrics": {}, "within_radius": {f"{radius:g}": single}}}
        else:
            per_direction = {"ground_to_aerial": {"metrics": single, "within_radius": {}}}
    metric_table, radius_table = {}, {}
    for direction, result in per_direction.items():
        metric_table[direction] = {
            k: v for k, v in result["metrics"].items() if k.startswith(("r@", "k_"))
        }
        if result.get("within_radius"):
            radius_table[direction] = {
                radius: {k: v for k, v in m.items() if k.startswith(("r@", "k_"))}
                for radius, m in result["within_radius"].items()
            }
    results = {
        "method": method,
        "dataset": dataset,
        "split": split,
        "n_queries": int(n_queries),
        "n_references": int(n_references),
        "directions": list(per_direction),
        "direction": next(iter(per_direction)),  # the primary direction (ground -> aerial when computed)
        "metrics": metric_table,
        "metric_unit": "fraction in [0, 1]",
        "ranking": RANKING_CONVENTION,
        "top1_percent_k": top1_percent_k(n_references),
        "top1_percent_conventions": dict(TOP1_PERCENT_CONVENTIONS),
        "within_radius": radius_table,
        "checkpoint": checkpoint,
        "model_dir": model_dir,
        "cvm_version": cvm.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if radius_table:
        results["radius_protocol"] = RADIUS_PROTOCOL
    if extra:
        results["extra"] = dict(extra)
    return _plain(results)


def write_results(path: str, results: Mapping) -> str:
    """Write the results JSON (folders created; written to a temporary file then renamed, never half-written)."""
    return atomic.write_json(path, _plain(results), indent=2)


def recall_curve_png(
    ranks_by_name: Mapping[str, np.ndarray],
    path: str,
    max_k: Optional[int] = None,
    n_references: Optional[int] = None,
    title: str = "Recall@K",
) -> str:
    """Recall@K against K (log axis, 1..max_k), one line per direction / model; PNG via Matplotlib's Agg.

    max_k defaults to n_references, else to the largest number of queries (N for one-to-one splits).
    A dotted line marks the top-1% K (floor(N/100) + 1) when n_references is given.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not ranks_by_name:
        raise CvmError("recall curve: no ranks to plot")
    if max_k is None:
        max_k = n_references or max(len(r) for r in ranks_by_name.values())
    max_k = max(int(max_k), 2)
    ks = np.arange(1, max_k + 1)
    fig = Figure(figsize=(7, 5), dpi=100)  # a private figure: no global pyplot state, thread-safe
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, ranks in ranks_by_name.items():
        curve = 100.0 * recall_curve(ranks, max_k)
        ax.plot(ks, curve, linewidth=2, label=f"{name}  (R@1 {curve[0]:.1f}%)")
    if n_references:
        k1 = top1_percent_k(n_references)["floor_plus_1"]
        if k1 <= max_k:
            ax.axvline(k1, color="gray", linestyle=":", linewidth=1, label=f"top-1% (K = {k1})")
    ax.set_xscale("log")
    ax.set_xlim(1, max_k)
    ax.set_ylim(0, 100)
    ax.set_xlabel("K (number of retrieved references)", fontsize=12)
    ax.set_ylabel("Recall@K (%)", fontsize=12)
    ax.set_title(title, fontsize=13)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return path


def _loader(source: ImageSource, name: str) -> Callable[[int], np.ndarray]:
    def load(index: int) -> np.ndarray:
        image = source(int(index)) if callable(source) else source[int(index)]
        image = np.asarray(image)
        if image.dtype != np.uint8:
            raise CvmError(f"retrieval grid: {name} image {index} must be uint8 BGR, got {image.dtype}")
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        if image.ndim != 3 or image.shape[2] != 3:
            raise CvmError(f"retrieval grid: {name} image {index} must be HxWx3 BGR, got shape {image.shape}")
        return image

    return load


def _tile(image: np.ndarray, height: int, width: int) -> np.ndarray:
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA).copy()


def _label(tile: np.ndarray, text: str) -> None:
    """White text on a black box in the tile's top-left corner, inside the frame."""
    font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1
    (w, h), baseline = cv2.getTextSize(text, font, scale, thickness)
    x0, y0 = GRID_FRAME + 1, GRID_FRAME + 1
    cv2.rectangle(tile, (x0, y0), (x0 + w + 4, y0 + h + baseline + 2), (0, 0, 0), thickness=-1)
    cv2.putText(tile, text, (x0 + 2, y0 + h + 1), font, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def _frame(tile: np.ndarray, colour) -> None:
    t = GRID_FRAME
    tile[:t], tile[-t:], tile[:, :t], tile[:, -t:] = colour, colour, colour, colour


def grid_layout(query_size: tuple, reference_size: tuple, n_rows: int, k: int) -> dict:
    """Pixel geometry of `retrieval_grid_png`: tile sizes, the grid size and each column's x offset."""
    (qh, qw), (rh, rw) = query_size, reference_size
    columns = [GRID_GAP + qw + GRID_QUERY_GAP + c * (rw + GRID_GAP) for c in range(k)]
    width = columns[-1] + rw + GRID_GAP if k else GRID_GAP + qw + GRID_GAP
    height = GRID_GAP + n_rows * (max(qh, rh) + GRID_GAP)
    rows = [GRID_GAP + r * (max(qh, rh) + GRID_GAP) for r in range(n_rows)]
    return {"width": width, "height": height, "rows": rows, "query_x": GRID_GAP, "columns": columns}


def retrieval_grid_png(
    query_images: ImageSource,
    reference_images: ImageSource,
    topk_indices,
    true_indices,
    path: str,
    n_queries: int = 8,
    k: int = 5,
    *,
    query_indices: Optional[Sequence[int]] = None,
    height: int = 128,
    ranks=None,
) -> np.ndarray:
    """Grid PNG: each row is a query then its top-k references (true match framed green, others red).

    Args:
      query_images / reference_images: sequences of uint8 BGR images, or loaders `index -> image`
        (a real gallery does not fit in memory).
      topk_indices: [Nq, >= k] retrieved reference indices per query (from `recall_at_k` / `evaluate`).
      true_indices: [Nq] index of each query's true reference.
      query_indices: which queries to show (default: the first `n_queries`).
      height: tile height in pixels; widths keep the first query's / reference's aspect ratio.
      ranks: optional per-query ranks, printed on the query tile.

    Returns the grid image (also written to `path` with cv2.imwrite).
    """
    topk_indices = np.asarray(topk_indices)
    true_indices = np.asarray(true_indices)
    if topk_indices.ndim != 2 or topk_indices.shape[1] < k:
        raise CvmError(f"retrieval grid needs at least k={k} retrieved indices per query, got {topk_indices.shape}")
    if query_indices is None:
        query_indices = range(min(n_queries, len(topk_indices)))
    query_indices = [int(q) for q in query_indices]
    if not query_indices:
        raise CvmError("retrieval grid: no queries to show")
    load_query = _loader(query_images, "query")
    load_reference = _loader(reference_images, "reference")

    first_query = load_query(query_indices[0])
    first_reference = load_reference(topk_indices[query_indices[0], 0]) if k else first_query
    query_size = (height, max(1, round(height * first_query.shape[1] / first_query.shape[0])))
    reference_size = (height, max(1, round(height * first_reference.shape[1] / first_reference.shape[0])))
    layout = grid_layout(query_size, reference_size, len(query_indices), k)
    grid = np.full((layout["height"], layout["width"], 3), 255, np.uint8)

    for row, q in enumerate(query_indices):
        y = layout["rows"][row]
        tile = _tile(load_query(q), *query_size)
        _label(tile, f"q{q}" if ranks is None else f"q{q} rank {int(np.asarray(ranks)[q])}")
        grid[y : y + query_size[0], layout["query_x"] : layout["query_x"] + query_size[1]] = tile
        for c in range(k):
            r = int(topk_indices[q, c])
            tile = _tile(load_reference(r), *reference_size)
            _frame(tile, GREEN if r == int(true_indices[q]) else RED)
            _label(tile, str(c + 1))
            x = layout["columns"][c]
            grid[y : y + reference_size[0], x : x + reference_size[1]] = tile

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, grid):
        raise CvmError(f"could not write the retrieval grid to {path} (use a .png path in a writable folder)")
    return grid

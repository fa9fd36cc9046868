"""Reports: results JSON keys, recall-curve PNG, retrieval-grid PNG (frame colours at the true match)."""

import json
import os

import cv2
import numpy as np
import pytest

import cvm
from cvm.errors import CvmError
from cvm.evaluation import evaluate, recall_at_k, recall_curve_png, results_dict, retrieval_grid_png, write_results
from cvm.evaluation.report import GREEN, GRID_FRAME, RED, grid_layout


@pytest.fixture(scope="module")
def evaluated():
    rng = np.random.default_rng(0)
    aerial = rng.normal(size=(40, 16)).astype(np.float32)
    ground = aerial + 0.8 * rng.normal(size=(40, 16)).astype(np.float32)
    locations = rng.uniform(0, 100, size=(40, 2)) + [500000.0, 6100000.0]
    return evaluate(ground, aerial, locations=locations, radii=(0, 25)), ground, aerial


def test_results_json_has_every_key(evaluated, tmp_path):
    result, _, _ = evaluated
    results = results_dict(
        result, method="cvm_net", dataset="cvact", split="val", n_queries=40, n_references=40,
        checkpoint="run/checkpoints/ckpt-3", model_dir="run", extra={"precision": "float32"},
    )
    path = write_results(str(tmp_path / "run" / "results" / "cvact_val.json"), results)
    with open(path) as f:
        loaded = json.load(f)
    for key in ("method", "dataset", "split", "n_queries", "n_references", "directions", "direction", "metrics",
                "metric_unit", "ranking", "top1_percent_k", "top1_percent_conventions", "within_radius",
                "radius_protocol", "checkpoint", "model_dir", "cvm_version", "date", "extra"):
        assert key in loaded, key
    assert loaded["directions"] == ["ground_to_aerial", "aerial_to_ground"]
    assert loaded["direction"] == "ground_to_aerial"
    assert loaded["cvm_version"] == cvm.__version__
    assert loaded["date"].endswith("+00:00")
    assert "ties count as success" in loaded["ranking"]
    for direction in loaded["directions"]:
        metrics = loaded["metrics"][direction]
        for key in ("r@1", "r@5", "r@10", "r@1%_floor", "r@1%_floor_plus_1", "k_1%_floor", "k_1%_floor_plus_1"):
            assert key in metrics, key
        assert 0.0 <= metrics["r@1"] <= metrics["r@5"] <= metrics["r@10"] <= 1.0
        assert set(loaded["within_radius"][direction]) == {"25"}
    assert loaded["top1_percent_k"] == {"floor": 0, "floor_plus_1": 1}
    assert not os.path.exists(path + ".tmp")


def test_results_from_single_recall(evaluated):
    _, ground, aerial = evaluated
    single = recall_at_k(ground, aerial)
    results = results_dict(single, method="safa", dataset="cvusa", split="val", n_queries=40, n_references=40,
                           checkpoint=None)
    assert results["directions"] == ["ground_to_aerial"]
    assert "ranks" not in results["metrics"]["ground_to_aerial"]
    json.dumps(results)  # plain JSON types only


def test_results_from_radius_recall():
    from cvm.evaluation import recall_within_radius

    locations = np.array([[0.0, 0.0], [3.0, 0.0], [100.0, 0.0]])
    ground = np.eye(3, dtype=np.float32)
    aerial = np.array([[1, 0, 0], [2, 1, 0], [0, 0, 1]], dtype=np.float32)  # query 0's top-1 is 3 m away
    single = recall_within_radius(ground, aerial, locations, locations, 5, ks=(1,))
    results = results_dict(single, method="safa", dataset="cvact", split="test", n_queries=3, n_references=3,
                           checkpoint=None)
    assert results["metrics"]["ground_to_aerial"] == {}
    assert results["within_radius"]["ground_to_aerial"]["5"]["r@1"] == 1.0
    assert "radius_protocol" in results


def test_recall_curve_png(evaluated, tmp_path):
    result, _, _ = evaluated
    ranks = {name: d["ranks"] for name, d in result["directions"].items()}
    path = recall_curve_png(ranks, str(tmp_path / "plots" / "curve.png"), n_references=40)
    image = cv2.imread(path)
    assert image is not None and image.shape == (500, 700, 3)
    assert image.std() > 10  # not blank


def synthetic_images(n, h, w, seed):
    rng = np.random.default_rng(seed)
    # Mid-grey noise, far from pure red / green, so frame pixels are unambiguous.
    return [rng.integers(90, 160, size=(h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_retrieval_grid_png(evaluated, tmp_path):
    queries = synthetic_images(6, 40, 220, seed=1)
    references = synthetic_images(10, 60, 60, seed=2)
    topk = np.array([[3, 0, 5], [1, 2, 4], [9, 8, 7]])
    true = np.array([0, 1, 6])
    path = str(tmp_path / "grid.png")
    grid = retrieval_grid_png(
        queries, lambda i: references[i], topk, true, path, n_queries=3, k=3, height=64, ranks=[1, 0, 40]
    )
    decoded = cv2.imread(path)
    np.testing.assert_array_equal(decoded, grid)  # PNG is lossless
    layout = grid_layout((64, 352), (64, 64), n_rows=3, k=3)
    assert decoded.shape == (layout["height"], layout["width"], 3)
    for row in range(3):
        for col in range(3):
            y = layout["rows"][row] + 32  # middle of the tile's left edge, away from the rank label
            x = layout["columns"][col] + GRID_FRAME // 2
            expected = GREEN if topk[row, col] == true[row] else RED
            assert tuple(decoded[y, x]) == expected, (row, col)
    # Row 0's true match is 2nd, row 1's is 1st, row 2's is not retrieved (all red).
    assert tuple(decoded[layout["rows"][0] + 32, layout["columns"][1] + 1]) == GREEN
    assert all(tuple(decoded[layout["rows"][2] + 32, x + 1]) == RED for x in layout["columns"])


def test_retrieval_grid_rejects_bad_input(tmp_path):
    images = synthetic_images(2, 8, 8, seed=0)
    with pytest.raises(CvmError, match="k=5"):
        retrieval_grid_png(images, images, np.zeros((2, 2), int), [0, 1], str(tmp_path / "g.png"))
    floats = [im.astype(np.float32) for im in images]
    with pytest.raises(CvmError, match="uint8"):
        retrieval_grid_png(floats, images, np.zeros((2, 2), int), [0, 1], str(tmp_path / "g.png"), k=2)

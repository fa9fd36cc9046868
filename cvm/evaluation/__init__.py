"""Evaluation: streaming recall@K (recall.py) and its reports (results JSON, recall curve, retrieval grid)."""

from cvm.evaluation.recall import (  # noqa: F401
    DIRECTIONS,
    RANKING_CONVENTION,
    Evaluator,
    evaluate,
    metrics_from_ranks,
    positives_from_ids,
    recall_at_k,
    recall_curve,
    recall_within_radius,
    stream_ranks,
    top1_percent_k,
)
from cvm.evaluation.report import recall_curve_png, results_dict, retrieval_grid_png, write_results  # noqa: F401

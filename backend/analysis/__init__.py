"""Error analysis of detection results: TIDE matching and dAP, confusion matrix, overlays.

A plain library over a COCO ground-truth dict and a COCO results list; storage and the REST
API build on these functions.
"""

from backend.analysis.confusion import confusion_matrix
from backend.analysis.inputs import AnalysisInputError
from backend.analysis.matching import GtMatch, PredictionMatch, match_predictions
from backend.analysis.metrics import coco_metrics
from backend.analysis.overlay import render_overlay
from backend.analysis.summary import Analysis, ImageSummary, analyze
from backend.analysis.tables import BOX_COLOURS, DEFAULTS, ERROR_TYPES, METRIC_KEYS, METRICS

__all__ = [
    "BOX_COLOURS",
    "DEFAULTS",
    "ERROR_TYPES",
    "METRICS",
    "METRIC_KEYS",
    "Analysis",
    "AnalysisInputError",
    "GtMatch",
    "ImageSummary",
    "PredictionMatch",
    "analyze",
    "coco_metrics",
    "confusion_matrix",
    "match_predictions",
    "render_overlay",
]

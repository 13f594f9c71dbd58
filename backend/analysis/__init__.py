"""Error analysis of detection results: TIDE matching and dAP, confusion matrix, overlays.

A plain library over a COCO ground-truth dict and a COCO results list; storage and the REST
API build on these functions.
"""

from backend.analysis.confusion import confusion_matrix
from backend.analysis.inputs import AnalysisInputError
from backend.analysis.matching import (
    ERROR_TYPES,
    OUTCOMES,
    GtMatch,
    PredictionMatch,
    match_predictions,
)
from backend.analysis.metrics import coco_metrics
from backend.analysis.overlay import OUTCOME_COLORS, render_overlay
from backend.analysis.summary import Analysis, ImageSummary, analyze

__all__ = [
    "ERROR_TYPES",
    "OUTCOMES",
    "OUTCOME_COLORS",
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

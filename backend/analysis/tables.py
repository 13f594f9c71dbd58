"""The analysis' vocabulary, one table each: outcomes and error types, metrics, thresholds.

Matching, summaries, overlays, storage, the API schemas and (through `GET /analysis/legend`)
the dashboard all read these tables; none restates a name, a colour or a default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "ALL_METRICS",
    "BOX_COLOURS",
    "COUNTED",
    "DEFAULTS",
    "ERROR_TYPES",
    "FILTERABLE_ERRORS",
    "GT_COLOUR",
    "MAJOR_ERRORS",
    "MASK_METRICS",
    "METRICS",
    "METRIC_KEYS",
    "OUTCOMES",
    "PREDICTION_OUTCOMES",
    "SHOW_GROUPS",
    "Defaults",
    "Metric",
    "Outcome",
    "code",
    "is_mask_metric",
    "is_error_code",
    "legend",
    "mask_key",
]


@dataclass(frozen=True)
class Outcome:
    """What became of one prediction, or of one ground-truth box ("missed")."""

    name: str
    side: str  # "prediction" or "ground_truth"
    colour: tuple[int, int, int] | None  # in overlays; None: never drawn
    error: bool  # counts as an error (dAP, filters, badness)
    # an image with one of these is not "right" for a job (compare's agreement test)
    major: bool
    description: str


# Prediction outcomes first, in the order the matching stores them as codes (see `code`).
OUTCOMES: tuple[Outcome, ...] = (
    Outcome(
        "tp",
        "prediction",
        (0, 200, 0),
        error=False,
        major=False,
        description="matches an unmatched ground-truth box of its class at IoU >= 0.5",
    ),
    Outcome(
        "classification",
        "prediction",
        (255, 140, 0),
        error=True,
        major=True,
        description="IoU >= 0.5 with a ground-truth box of another class",
    ),
    Outcome(
        "localization",
        "prediction",
        (255, 230, 0),
        error=True,
        major=True,
        description="right class, best IoU with its class in [0.1, 0.5)",
    ),
    Outcome(
        "both",
        "prediction",
        (255, 0, 200),
        error=True,
        major=True,
        description="wrong class and best IoU in [0.1, 0.5)",
    ),
    Outcome(
        "duplicate",
        "prediction",
        (0, 230, 230),
        error=True,
        major=False,
        description="IoU >= 0.5 with a box of its class already matched by a higher score",
    ),
    Outcome(
        "background",
        "prediction",
        (230, 0, 0),
        error=True,
        major=False,
        description="IoU < 0.1 with every ground-truth box",
    ),
    Outcome(
        "ignored",
        "prediction",
        None,
        error=False,
        major=False,
        description="covers a crowd region; left out of AP as COCO does, never an error",
    ),
    Outcome(
        "missed",
        "ground_truth",
        (150, 60, 255),
        error=True,
        major=True,
        description="a ground-truth box no prediction matched",
    ),
)
_BY_NAME = {outcome.name: outcome for outcome in OUTCOMES}
PREDICTION_OUTCOMES: tuple[str, ...] = tuple(o.name for o in OUTCOMES if o.side == "prediction")
# The prediction errors of TIDE in display order; "missed" is the ground-truth side's.
ERROR_TYPES: tuple[str, ...] = tuple(o.name for o in OUTCOMES if o.error and o.side == "prediction")
FILTERABLE_ERRORS: tuple[str, ...] = tuple(o.name for o in OUTCOMES if o.error)
MAJOR_ERRORS: tuple[str, ...] = tuple(o.name for o in OUTCOMES if o.major)
# Outcomes counted per image (stored as columns of image_results): all but "ignored"
COUNTED: tuple[str, ...] = tuple(o.name for o in OUTCOMES if o.name != "ignored")
GT_COLOUR = (30, 144, 255)
# Overlay colours, in legend order: ground truth first, then every drawn outcome
BOX_COLOURS: dict[str, tuple[int, int, int]] = {
    "gt": GT_COLOUR,
    **{o.name: o.colour for o in OUTCOMES if o.colour is not None},
}
# Names an overlay's ``show`` accepts besides single outcomes: name -> (label, members)
SHOW_GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "gt": ("ground truth", ("gt",)),
    "tp": ("true positives", ("tp",)),
    "errors": ("errors", FILTERABLE_ERRORS),
}
_IS_ERROR = np.array([_BY_NAME[name].error for name in PREDICTION_OUTCOMES], dtype=bool)


def code(name: str) -> int:
    """The int8 code of a prediction outcome in match tables."""
    return PREDICTION_OUTCOMES.index(name)


def is_error_code(codes: np.ndarray) -> np.ndarray:
    """Which prediction outcome codes are errors."""
    return _IS_ERROR[codes]


@dataclass(frozen=True)
class Metric:
    """One COCO summary figure as evaluations store it."""

    key: str  # as mmdet's CocoMetric names it; a column of evaluations
    label: str
    stat: int  # position in COCOeval.stats
    description: str


METRICS: tuple[Metric, ...] = (
    Metric("bbox_mAP", "mAP", 0, "AP at IoU .50:.05:.95, all areas, 100 detections"),
    Metric("bbox_mAP_50", "mAP50", 1, "AP at IoU .50"),
    Metric("bbox_mAP_75", "mAP75", 2, "AP at IoU .75"),
    Metric("bbox_mAP_s", "AP small", 3, "AP of objects under 32x32 px"),
    Metric("bbox_mAP_m", "AP medium", 4, "AP of objects between 32x32 and 96x96 px"),
    Metric("bbox_mAP_l", "AP large", 5, "AP of objects over 96x96 px"),
)
# The same six figures of instance masks (iouType "segm"), for detectors with a mask head
MASK_METRICS: tuple[Metric, ...] = tuple(
    Metric(
        "segm" + m.key.removeprefix("bbox"),
        "mask " + m.label,
        m.stat,
        m.description.replace("AP", "mask AP", 1),
    )
    for m in METRICS
)
ALL_METRICS: tuple[Metric, ...] = METRICS + MASK_METRICS
# every stored figure a leaderboard, an experiment or a comparison can be ranked by
METRIC_KEYS: tuple[str, ...] = tuple(m.key for m in ALL_METRICS)


def mask_key(box_key: str) -> str:
    """The mask figure of a box figure's key: bbox_mAP_50 -> segm_mAP_50."""
    return "segm" + box_key.removeprefix("bbox")


def is_mask_metric(key: str) -> bool:
    """Whether a metric key is a mask (segm) figure."""
    return key.startswith("segm_")


@dataclass(frozen=True)
class Defaults:
    """Default thresholds of the analysis and its views."""

    # predictions at or above this score are matched and counted in the stored analysis
    count_score_thr: float = 0.05
    # predictions at or above this score are drawn on overlays and enter the confusion matrix
    draw_score_thr: float = 0.3
    # IoU at which the confusion matrix pairs a prediction with a ground-truth box
    confusion_iou_thr: float = 0.5
    # bootstrap over val images: resamples, the seed that fixes them, interval level, and
    # the significance level of comparisons
    resamples: int = 1000
    bootstrap_seed: int = 0
    level: float = 0.95
    alpha: float = 0.05


DEFAULTS = Defaults()


def legend() -> dict[str, object]:
    """The vocabulary as the API serves it to clients that draw or filter by it."""
    return {
        "outcomes": [
            {
                "name": o.name,
                "side": o.side,
                "colour": list(o.colour) if o.colour else None,
                "error": o.error,
                "major": o.major,
                "description": o.description,
            }
            for o in OUTCOMES
        ],
        "gt_colour": list(GT_COLOUR),
        "show_groups": [
            {"name": name, "label": label, "members": list(members)}
            for name, (label, members) in SHOW_GROUPS.items()
        ],
        "metrics": [
            {"key": m.key, "label": m.label, "description": m.description} for m in ALL_METRICS
        ],
        "defaults": {
            "count_score_thr": DEFAULTS.count_score_thr,
            "draw_score_thr": DEFAULTS.draw_score_thr,
            "confusion_iou_thr": DEFAULTS.confusion_iou_thr,
            "resamples": DEFAULTS.resamples,
            "bootstrap_seed": DEFAULTS.bootstrap_seed,
            "level": DEFAULTS.level,
            "alpha": DEFAULTS.alpha,
        },
    }

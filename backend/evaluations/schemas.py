"""Evaluation schemas; metric and outcome fields come from the analysis tables."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field, create_model

from backend.analysis.tables import ALL_METRICS, COUNTED, OUTCOMES
from backend.jobs.paths import mask_predictions_of

__all__ = [
    "METRIC_FIELDS",
    "AnalysisRead",
    "ComparedSide",
    "ConfusionChange",
    "ConfusionChanges",
    "EvaluationRead",
    "ImageComparison",
    "ImageComparisonPage",
    "ImagePage",
    "ImageResultRead",
]

# one optional float field per COCO metric of the analysis tables (0..1, None where COCO has
# no objects of that kind), for every schema that carries the figures
METRIC_FIELDS: dict[str, Any] = {
    m.key: (float | None, Field(description=m.description)) for m in ALL_METRICS
}


class AnalysisRead(BaseModel):
    """The error breakdown of an evaluation (TIDE's definitions, see README)."""

    model_config = ConfigDict(extra="allow")

    score_thr: float | None = Field(
        default=None,
        description="the breakdown (counts, per_class, ap50, dAP, per-image rows) uses the "
        "predictions with score >= score_thr; the COCO metrics always use every prediction",
    )
    counts: dict[str, int] | None = Field(
        default=None,
        description="predictions per outcome (GET /analysis/legend), plus 'missed': every "
        "regular ground-truth box no prediction matched, and 'missed_not_covered': those "
        "of them that no classification or localization error points at (the boxes the "
        "'missed' dAP removes, as TIDE defines its missed error)",
    )
    per_class: dict[str, dict[str, int]] | None = Field(
        default=None, description="counts per class (a prediction's class; a missed box's own)"
    )
    ap50: float | None = Field(
        default=None,
        description="TIDE's AP50 in points over the analysed predictions (no 100-per-image cap, "
        "no area ranges): the baseline of dAP, not COCO's bbox_mAP_50",
    )
    dAP: dict[str, float] | None = Field(
        default=None, description="AP50 points gained by fixing each error type alone"
    )
    confusion: dict[str, Any] | None = None
    error: str | None = Field(default=None, description="why there is no breakdown")


class _EvaluationBase(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    job_id: int
    per_class_ap: dict[str, Any] = Field(description="class -> COCO AP .50:.95 (None: no boxes)")
    per_class_mask_ap: dict[str, Any] | None = Field(
        default=None,
        description="class -> COCO mask AP .50:.95 (None: no masks); null for box-only models",
    )
    analysis: AnalysisRead | None
    record: dict[str, Any] | None = Field(
        description="what produced these figures: scoring engine, IoU thresholds, max dets, "
        "area ranges, the predictions file's sha256, counts of predictions, zero-size boxes "
        "and images (None for evaluations stored before records were kept: POST "
        "/jobs/{id}/analysis scores them again)"
    )
    intervals: dict[str, Any] | None = Field(
        description="95% bootstrap intervals over val images: 'metrics' and 'per_class' map "
        "to {estimate, low, high, defined} ('per_class_mask' too for a mask model, whose "
        "'metrics' hold the segm_ figures beside the bbox_ ones); with 'resamples', 'seed', "
        "'level' and 'method' that reproduce them (None before intervals were kept: POST "
        "/jobs/{id}/analysis)"
    )
    predictions_path: str | None
    created_at: datetime

    @computed_field(  # type: ignore[prop-decorator]
        description="whether the predictions have masks (a mask model's segm file beside "
        "them): the overlays draw them with masks=true"
    )
    @property
    def has_masks(self) -> bool:
        # read from the file itself, so that it cannot disagree with what overlays draw
        path = mask_predictions_of(self.predictions_path) if self.predictions_path else None
        return path is not None and path.is_file()


# one field per COCO metric (0..1, None where COCO has no objects of that kind)
EvaluationRead = create_model(
    "EvaluationRead",
    __base__=_EvaluationBase,
    **METRIC_FIELDS,
)


class _ImageResultBase(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    image_id: int
    file_name: str
    n_gt: int = Field(description="regular ground-truth boxes (no crowd or ignore regions)")
    n_pred: int = Field(description="predictions at or above the analysis' score_thr")
    badness: float = Field(
        description="sum of the scores of its error predictions + 1 per missed box"
    )
    selected: int | None = Field(
        default=None,
        description="boxes of what the page is filtered by (ImagePage.selected_label), counted "
        "from ImagePage.selected_score_thr; None without a filter",
    )


_DESCRIPTIONS = {o.name: o.description for o in OUTCOMES}
# one count per outcome of the analysis tables
ImageResultRead = create_model(
    "ImageResultRead",
    __base__=_ImageResultBase,
    **{name: (int, Field(description=_DESCRIPTIONS[name])) for name in COUNTED},  # type: ignore[call-overload]
)


class ImagePage(BaseModel):
    items: list[ImageResultRead]  # type: ignore[valid-type]
    total: int
    score_thr: float = Field(
        description="the per-image counts are of predictions with score >= score_thr (the "
        "analysis' threshold)"
    )
    selected_label: str | None = Field(
        default=None, description="what the filter selects, in words; None without a filter"
    )
    selected_score_thr: float | None = Field(
        default=None,
        description="the threshold of the `selected` counts: the analysis' for an error type "
        "or a class, the confusion matrix's for a confusion cell",
    )


# the per-image figures of one job in a comparison: every counted outcome, their errors summed
ComparedSide = create_model(
    "ComparedSide",
    job_id=(int, ...),
    errors=(int, Field(description="every error, missed objects included")),
    badness=(float, ...),
    **{name: (int, Field(description=_DESCRIPTIONS[name])) for name in COUNTED},  # type: ignore[call-overload]
)


class ImageComparison(BaseModel):
    image_id: int
    file_name: str
    better: str = Field(description="a or b: the job with the better figure on this image")
    difference: int = Field(description="by how much, in the compared figure")
    a: ComparedSide  # type: ignore[valid-type]
    b: ComparedSide  # type: ignore[valid-type]
    changed: dict[str, int] = Field(description="B - A of every count that differs")


class ConfusionChange(BaseModel):
    gt: str
    predicted: str
    label: str = Field(description="the cell in words: 'circle predicted as ellipse'")
    a: int
    b: int


class ConfusionChanges(BaseModel):
    changes: list[ConfusionChange] | None = Field(
        description="off-diagonal cells whose counts differ, largest change first; None when "
        "the matrices cannot be compared (`why`)"
    )
    why: str | None = None
    score_thr: float | None = None
    iou_thr: float | None = None


class ImageComparisonPage(BaseModel):
    by: str = Field(description="the per-image figure compared")
    compared: str = Field(description="that figure in words")
    score_thr: float = Field(description="both jobs' counts are of predictions >= score_thr")
    images: int = Field(description="val images compared")
    better_in_a: int
    better_in_b: int
    same: int
    sentence: str = Field(description="what was compared and what came out, in one sentence")
    total: int = Field(description="images in the direction asked for (`better`)")
    items: list[ImageComparison]
    confusion: ConfusionChanges

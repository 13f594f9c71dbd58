"""Evaluation schemas; metric and outcome fields come from the analysis tables."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from backend.analysis.tables import COUNTED, METRICS, OUTCOMES

__all__ = ["EvaluationRead", "ImagePage", "ImageResultRead"]


class _EvaluationBase(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    job_id: int
    per_class_ap: dict[str, Any]
    analysis: dict[str, Any] | None
    predictions_path: str | None
    created_at: datetime


# one field per COCO metric (0..1, None where COCO has no objects of that kind)
EvaluationRead = create_model(
    "EvaluationRead",
    __base__=_EvaluationBase,
    **{m.key: (float | None, Field(description=m.description)) for m in METRICS},  # type: ignore[call-overload]
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

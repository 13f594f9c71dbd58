"""Evaluation schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["EvaluationRead", "ImagePage", "ImageResultRead"]


class EvaluationRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    job_id: int
    bbox_mAP: float | None
    bbox_mAP_50: float | None
    bbox_mAP_75: float | None
    bbox_mAP_s: float | None
    bbox_mAP_m: float | None
    bbox_mAP_l: float | None
    per_class_ap: dict[str, Any]
    analysis: dict[str, Any] | None
    predictions_path: str | None
    created_at: datetime


class ImageResultRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    image_id: int
    file_name: str
    n_gt: int
    n_pred: int
    tp: int
    classification: int
    localization: int
    both: int
    duplicate: int
    background: int
    missed: int
    badness: float


class ImagePage(BaseModel):
    items: list[ImageResultRead]
    total: int

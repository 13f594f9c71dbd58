"""COCO evaluations of finished jobs and the per-image analysis behind them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from backend.db import Base, JSONType, utcnow

__all__ = ["Evaluation", "ImageResult", "ImageError"]


class Evaluation(Base):
    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    # the leaderboard sorts by these, so they are columns, not JSON
    bbox_mAP: Mapped[float | None] = mapped_column(Float)
    bbox_mAP_50: Mapped[float | None] = mapped_column(Float)
    bbox_mAP_75: Mapped[float | None] = mapped_column(Float)
    bbox_mAP_s: Mapped[float | None] = mapped_column(Float)
    bbox_mAP_m: Mapped[float | None] = mapped_column(Float)
    bbox_mAP_l: Mapped[float | None] = mapped_column(Float)
    # the same of instance masks (a detector with a mask head; null for box-only models)
    segm_mAP: Mapped[float | None] = mapped_column(Float)
    segm_mAP_50: Mapped[float | None] = mapped_column(Float)
    segm_mAP_75: Mapped[float | None] = mapped_column(Float)
    segm_mAP_s: Mapped[float | None] = mapped_column(Float)
    segm_mAP_m: Mapped[float | None] = mapped_column(Float)
    segm_mAP_l: Mapped[float | None] = mapped_column(Float)
    per_class_ap: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    per_class_mask_ap: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # error breakdown (counts, dAP), confusion matrix and the thresholds they used
    analysis: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    predictions_path: Mapped[str | None] = mapped_column(String(1024))
    # what produced the figures: scoring engine and version, IoU thresholds, max dets, area
    # ranges, the predictions file's sha256, counts (predictions, zero-size boxes, images)
    record: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # 95% bootstrap intervals over val images of every metric and per-class AP, with the
    # number of resamples and the seed that reproduce them
    intervals: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ImageResult(Base):
    __tablename__ = "image_results"
    __table_args__ = (
        Index("ix_image_results_job_badness", "job_id", "badness"),
        Index("ix_image_results_job_image", "job_id", "image_id", unique=True),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(Integer)
    file_name: Mapped[str] = mapped_column(String(1024))
    n_gt: Mapped[int] = mapped_column(Integer)
    n_pred: Mapped[int] = mapped_column(Integer)
    tp: Mapped[int] = mapped_column(Integer)
    classification: Mapped[int] = mapped_column(Integer)
    localization: Mapped[int] = mapped_column(Integer)
    both: Mapped[int] = mapped_column(Integer)
    duplicate: Mapped[int] = mapped_column(Integer)
    background: Mapped[int] = mapped_column(Integer)
    missed: Mapped[int] = mapped_column(Integer)
    badness: Mapped[float] = mapped_column(Float)


class ImageError(Base):
    """One (error type, class) pair present in an image, for filtered worst-first queries."""

    __tablename__ = "image_errors"
    __table_args__ = (
        Index("ix_image_errors_lookup", "job_id", "error_type", "category_id", "badness"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(Integer)
    error_type: Mapped[str] = mapped_column(String(20))
    category_id: Mapped[int] = mapped_column(Integer)
    badness: Mapped[float] = mapped_column(Float)

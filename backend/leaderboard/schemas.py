"""Leaderboard schemas."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

__all__ = ["LeaderboardRow", "Leaderboard", "METRICS"]

METRICS = ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "bbox_mAP_s", "bbox_mAP_m", "bbox_mAP_l")


class LeaderboardRow(BaseModel):
    job_id: int
    name: str | None
    dataset_id: int
    detector: str
    backbone: str
    neck: str
    init: str
    norm: str | None
    image_scale: list[int]
    epochs: int | None
    iterations: int | None
    batch_size: int
    lr: float
    seed: int
    data_fraction: float
    amp: bool
    bbox_mAP: float | None
    bbox_mAP_50: float | None
    bbox_mAP_75: float | None
    bbox_mAP_s: float | None
    bbox_mAP_m: float | None
    bbox_mAP_l: float | None
    finished_at: datetime | None


class Leaderboard(BaseModel):
    dataset_id: int | None
    metric: str
    items: list[LeaderboardRow]
    total: int

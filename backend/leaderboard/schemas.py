"""Leaderboard schemas."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field, create_model

from backend.analysis.tables import METRICS

__all__ = ["LeaderboardRow", "Leaderboard"]


class _RowBase(BaseModel):
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
    finished_at: datetime | None


# one field per COCO metric of the analysis tables
LeaderboardRow = create_model(
    "LeaderboardRow",
    __base__=_RowBase,
    **{m.key: (float | None, Field(description=m.description)) for m in METRICS},  # type: ignore[call-overload]
)


class Leaderboard(BaseModel):
    dataset_id: int | None
    metric: str
    items: list[LeaderboardRow]  # type: ignore[valid-type]
    total: int

"""Leaderboard schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, create_model

from backend.evaluations.schemas import METRIC_FIELDS

__all__ = ["LeaderboardRow", "Leaderboard"]


class _RowBase(BaseModel):
    job_id: int
    name: str | None
    dataset_id: int
    kind: str = Field(
        default="finetune",
        description="finetune: trained here; import: predictions uploaded from elsewhere (the "
        "training fields are then unknown, null)",
    )
    source: dict[str, Any] | None = Field(
        default=None, description="import: what the uploader said made the predictions"
    )
    detector: str | None
    backbone: str | None
    neck: str | None
    init: str
    norm: str | None
    image_scale: list[int] | None
    epochs: int | None
    iterations: int | None
    batch_size: int | None
    lr: float | None
    seed: int | None
    data_fraction: float | None
    amp: bool | None
    finished_at: datetime | None
    group_id: int | None = Field(default=None, description="replicate group, if any")
    replicates: dict[str, Any] | None = Field(
        default=None,
        description="with group=true: n, mean, std (between seeds), seed_share, job_ids and "
        "seeds of the group's runs; the row's metrics are then means over them",
    )
    interval: dict[str, Any] | None = Field(
        default=None,
        description="95% bootstrap interval of the chosen metric: {metric, low, high}",
    )
    intervals: dict[str, Any] = Field(
        default_factory=dict,
        description="95% interval of every metric that has one: {metric: {low, high}} "
        "(bootstrap over val images; with group=true and n >= 2, t-interval over seeds)",
    )
    record_differs: list[str] = Field(
        default_factory=list,
        description="the reproducibility record's fields (environment and data: library "
        "versions, GPU, annotation hashes ...) in which this row's runs differ from most runs "
        "of its dataset among the rows returned; empty when they agree or have no record",
    )
    vs_leader: dict[str, Any] | None = Field(
        default=None,
        description="with significance=true: {leader: true} on the top row; on the others the "
        "paired bootstrap test against it: difference (row - leader), p_value, p_holm (Holm "
        "over the rows shown) and tied_with_leader (p_holm >= 0.05)",
    )


# one field per COCO metric of the analysis tables
LeaderboardRow = create_model(
    "LeaderboardRow",
    __base__=_RowBase,
    **METRIC_FIELDS,
)


class Leaderboard(BaseModel):
    dataset_id: int | None
    metric: str
    items: list[LeaderboardRow]  # type: ignore[valid-type]
    total: int

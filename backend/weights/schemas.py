"""Weights API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["WeightsImport", "WeightsRead", "WeightsPage", "WeightsDetail", "JobLink"]

ARCHITECTURES = ("resnet18", "resnet50", "resnet101", "resnext101_32x4d")


class WeightsImport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[\w.\- ]+$")
    path: str = Field(description="checkpoint under an allowed data root")
    architecture: Literal["resnet18", "resnet50", "resnet101", "resnext101_32x4d"]
    method: str = Field(
        default="other",
        pattern=r"^[a-z0-9_]{1,50}$",
        description="imagenet, mocov2, densecl, detco, ...",
    )


class WeightsRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    architecture: str
    method: str
    source: str
    path: str
    sha256: str
    producing_job_id: int | None
    report: dict[str, Any]
    created_at: datetime


class WeightsPage(BaseModel):
    items: list[WeightsRead]
    total: int


class JobLink(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str | None
    status: str


class WeightsDetail(WeightsRead):
    finetune_jobs: list[JobLink]

"""Weights API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from backend.users.schemas import OWNER
from backend.weights.convert import Architecture

__all__ = ["WeightsImport", "WeightsRead", "WeightsPage", "WeightsDetail", "JobRef"]


class WeightsImport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[\w.\- ]+$")
    path: str = Field(
        min_length=1,
        description="checkpoint under an allowed data root: .pth, .pth.tar, .pt or detectron2 .pkl",
    )
    architecture: Architecture = Field(description="the backbone the checkpoint holds")
    method: str = Field(
        pattern=r"^[a-z0-9_\-]{1,50}$",
        description="how it was trained, lowercase: imagenet, mocov2, detco, densecl, other, ...",
    )


class WeightsRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    architecture: str
    method: str
    kind: str = Field(
        description="backbone: a backbone's weights; detector: a whole detector's (backbone, "
        "neck and heads), from box-domain pretraining"
    )
    detector: str | None = Field(description="the detector of kind-detector weights")
    source: str
    path: str
    sha256: str
    producing_job_id: int | None
    report: dict[str, Any]
    owner: str | None = OWNER
    created_at: datetime


class WeightsPage(BaseModel):
    items: list[WeightsRead]
    total: int


class JobRef(BaseModel):
    """A job that used a weights entry."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str | None
    status: str = Field(description="the job's status, as GET /jobs/{id} gives it")


class WeightsDetail(WeightsRead):
    finetune_jobs: list[JobRef]

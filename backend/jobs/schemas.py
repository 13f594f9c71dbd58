"""Job API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field

from backend.jobs.models import JobKind, JobStatus
from backend.users.schemas import OWNER

__all__ = ["JobRead", "JobPage", "MetricSeries", "MetricsRead"]


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: JobKind
    status: JobStatus
    name: str | None
    dataset_id: int | None
    parent_id: int | None
    experiment_id: int | None = Field(default=None, description="the experiment it is a cell of")
    rerun_of_id: int | None = Field(default=None, description="the job it runs again")
    group_id: int | None = Field(
        default=None, description="replicate group: the id of the group's first job"
    )
    weights_id: int | None
    owner: str | None = OWNER
    spec: dict[str, Any]
    record: dict[str, Any] | None = Field(
        default=None,
        description="reproducibility record, captured by the worker when the job starts: DetLab "
        "version and git commit, Python and library versions, CUDA, cuDNN and GPU, the sha256 of "
        "the annotation files, image lists, init weights and config, seed and deterministic "
        "flag (fields: backend/jobs/records.py); null until a worker starts it, and for imports",
    )
    progress_iter: int
    progress_total: int | None
    eta_seconds: float | None
    cancel_requested: bool
    attempts: int
    error: str | None
    worker_host: str | None
    # processes it trains with, and what its running attempt holds (GPU indices, or "cpu")
    gpus: int = 1
    devices: list[str] | None = None
    queue: str = Field(description="the broker queue whose workers run it")
    queue_position: int | None = Field(
        default=None, description="queued jobs only: 1 for the next job its workers claim"
    )
    created_at: datetime
    queued_at: datetime | None = Field(description="when it last joined its queue")
    heartbeat_at: datetime | None = Field(description="when its worker last said it was alive")
    started_at: datetime | None
    finished_at: datetime | None
    group_job_ids: list[int] | None = Field(
        default=None, description="on submission: the ids of every job the request created"
    )
    estimated_seconds: float | None = Field(
        default=None,
        description="on submission: the expected run time on this queue's workers, learned "
        "from the jobs of the same kind they finished (null without such history)",
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="on submission: what may not be what you meant (the job is queued anyway)",
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def progress(self) -> float | None:
        """Share of iterations done, 0 to 1."""
        if not self.progress_total:
            return None
        return min(1.0, self.progress_iter / self.progress_total)


class JobPage(BaseModel):
    items: list[JobRead]
    total: int


class MetricSeries(BaseModel):
    key: str
    steps: list[int]
    epochs: list[int | None]
    values: list[float]
    downsampled: bool


class MetricsRead(BaseModel):
    job_id: int
    series: list[MetricSeries]

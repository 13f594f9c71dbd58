"""Fleet API schemas: each worker with its GPUs, busy or idle, and the jobs it runs."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from backend.jobs.models import JobKind
from backend.users.schemas import OWNER

__all__ = ["WorkerGpu", "WorkerJob", "WorkerPage", "WorkerRead", "WorkerState"]

# stopped: shut down cleanly; stale: stopped beating without saying so (it died, or hangs)
WorkerState = Literal["alive", "stale", "stopped"]


class WorkerGpu(BaseModel):
    index: int
    name: str
    memory_mb: int
    job_id: int | None = Field(description="the running job that holds it; null: idle")


class WorkerJob(BaseModel):
    """A job running on the worker now."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str | None
    kind: JobKind
    gpus: int = Field(description="processes it trains with")
    devices: list[str] | None = Field(
        description='what the attempt holds: GPU indices on its host, or ["cpu"]'
    )
    progress_iter: int
    progress_total: int | None
    owner: str | None = OWNER


class WorkerRead(BaseModel):
    name: str = Field(description="Celery's node name (detlab@host); jobs' worker_host")
    host: str
    pid: int
    queues: list[str]
    slots: int = Field(description="jobs it runs at once")
    max_job_gpus: int = Field(description="the most processes one job may get here")
    version: str
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    state: WorkerState = Field(
        description="stopped: shut down cleanly; stale: no heartbeat for DETLAB_HEARTBEAT_STALE_S "
        "(it died or hangs); else alive"
    )
    heartbeat_age_s: float = Field(description="seconds since its last heartbeat")
    gpus: list[WorkerGpu] = Field(description="empty on a CPU worker")
    jobs: list[WorkerJob]


class WorkerPage(BaseModel):
    items: list[WorkerRead]
    total: int

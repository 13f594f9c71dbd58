"""A worker process as it registered itself: where it runs, its GPUs, its last heartbeat.

What a worker is running is not stored here: the jobs table says it (`Job.worker_host`, the
worker's name, and `Job.devices`, the GPUs the attempt holds)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from backend.db import Base, JSONType, utcnow

__all__ = ["Worker"]


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Celery's node name (`detlab@host`): unique in a fleet, and what a job's worker_host holds
    name: Mapped[str] = mapped_column(String(255), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    # [{"index": 0, "name": "NVIDIA H200", "memory_mb": 143771}], empty on a CPU worker
    gpus: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    queues: Mapped[list[str]] = mapped_column(JSONType, default=list)
    # jobs it runs at once: one per GPU, or one on a CPU worker
    slots: Mapped[int] = mapped_column(Integer, default=1)
    # the most processes one job may get here (its GPUs; gloo processes on a CPU worker)
    max_job_gpus: Mapped[int] = mapped_column(Integer, default=1)
    version: Mapped[str] = mapped_column(String(100))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # set when it shut down cleanly; a worker that stops beating without it died
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

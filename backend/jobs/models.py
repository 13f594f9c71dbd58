"""Pretrain and fine-tune jobs, and the metric points they report."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from backend.db import Base, JSONType, utcnow

__all__ = ["Job", "JobKind", "JobStatus", "MetricPoint", "FINISHED_STATUSES"]


class JobKind(str, enum.Enum):
    pretrain = "pretrain"
    finetune = "finetune"
    # a checkpoint scored on a val split: inference only
    evaluate = "evaluate"
    # predictions made elsewhere, uploaded and scored: succeeded from the start, no training
    imported = "import"


class JobStatus(str, enum.Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINISHED_STATUSES = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=20,
        values_callable=lambda members: [m.value for m in members],
    )


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_queue_order", "status", "queue", "queued_at", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[JobKind] = mapped_column(_enum(JobKind, "job_kind"), index=True)
    status: Mapped[JobStatus] = mapped_column(
        _enum(JobStatus, "job_status"), default=JobStatus.queued, index=True
    )
    dataset_id: Mapped[int | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="RESTRICT"), index=True
    )
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    # replicates of one spec with seeds seed..seed+n-1 share the id of the group's first job
    group_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), index=True
    )
    weights_id: Mapped[int | None] = mapped_column(
        ForeignKey("weights.id", ondelete="RESTRICT"), index=True
    )
    # who submitted it (null: submitted before DetLab had users; only admins change those)
    owner_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    # users depend on nothing, so the ORM resolves "User" by name; loaded when read (once a
    # session per user: a many-to-one found in the identity map costs no query)
    owner: Mapped[Any] = relationship("User", lazy="select")

    @property
    def owner_name(self) -> str | None:
        return self.owner.name if self.owner is not None else None

    # the experiment whose grid it is a cell of; a re-run's original job
    experiment_id: Mapped[int | None] = mapped_column(
        ForeignKey("experiments.id", ondelete="SET NULL"), index=True
    )
    rerun_of_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    name: Mapped[str | None] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # the generated mmdet/mmpretrain config, runnable with the library's own tools/train.py
    config_text: Mapped[str | None] = mapped_column(Text)
    # what produced its numbers, captured by the worker: code and library versions, hardware,
    # the sha256 of the annotation files, the image list, the init weights and the config
    record: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    progress_iter: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int | None] = mapped_column(Integer)
    eta_seconds: Mapped[float | None] = mapped_column(Float)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    worker_host: Mapped[str | None] = mapped_column(String(255))
    # processes the job trains with (one per GPU; gloo processes on a CPU worker), and what the
    # running attempt holds: GPU indices on its host, or ["cpu"]
    gpus: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    devices: Mapped[list[str] | None] = mapped_column(JSONType)
    # The database is the queue: workers of `queue` claim its oldest queued job (by queued_at)
    # with a compare-and-set that writes a fresh claim_token; the attempt holding the token is
    # the only one whose writes count. sent_at: when a broker message was last sent for it.
    queue: Mapped[str] = mapped_column(String(100), default="detlab", server_default="detlab")
    claim_token: Mapped[str | None] = mapped_column(String(32))
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class MetricPoint(Base):
    __tablename__ = "metric_points"
    # one point per (job, key, step): a resumed run rewrites a step, never adds a second
    __table_args__ = (Index("ix_metric_points_job_key_step", "job_id", "key", "step", unique=True),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(100))
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int | None] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)

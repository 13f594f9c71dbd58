"""Backbone weights: imported checkpoints and the output of pretrain jobs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from backend.db import Base, JSONType, utcnow

__all__ = ["Weights"]


class Weights(Base):
    __tablename__ = "weights"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    architecture: Mapped[str] = mapped_column(String(50))
    method: Mapped[str] = mapped_column(String(50))  # imagenet, mocov2, densecl, detco, ...
    # "backbone": a backbone's weights (``architecture`` names it); "detector": a whole
    # detector's (backbone, neck and heads: box-domain pretraining), ``detector`` naming it
    kind: Mapped[str] = mapped_column(String(20), default="backbone", server_default="backbone")
    detector: Mapped[str | None] = mapped_column(String(50))
    source: Mapped[str] = mapped_column(String(50))  # the import format or "pretrain_job"
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    producing_job_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL", use_alter=True)
    )
    report: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # who imported them, or who submitted the pretraining that made them
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # users depend on nothing, so the ORM resolves "User" by name; loaded when read (once a
    # session per user: a many-to-one found in the identity map costs no query)
    owner: Mapped[Any] = relationship("User", lazy="select")

    @property
    def owner_name(self) -> str | None:
        return self.owner.name if self.owner is not None else None

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # lineage: the fine-tunes that started from these weights. Jobs depend on weights, not the
    # reverse, so the ORM resolves "Job" by name and this module never imports it.
    finetune_jobs: Mapped[list[Any]] = relationship(
        "Job",
        primaryjoin="and_(Job.weights_id == Weights.id, Job.kind == 'finetune')",
        foreign_keys="Job.weights_id",
        order_by="Job.id",
        viewonly=True,
    )

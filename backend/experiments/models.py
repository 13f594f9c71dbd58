"""Experiments: a grid of job specs (a base spec and axes) queued as one request."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from backend.db import Base, JSONType, utcnow

__all__ = ["Experiment"]


class Experiment(Base):
    """A group of jobs, one replicate group per cell of the grid; jobs keep working on their
    own (each points back with `experiment_id`)."""

    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))  # the cells' job kind: finetune or pretrain
    base_spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # [[axis, its values], ...] in the order given (a JSONB object would sort its keys): each
    # cell is the base spec with one value of each axis
    axes: Mapped[list[list[Any]]] = mapped_column(JSONType)
    repeats: Mapped[int] = mapped_column(Integer, default=1)
    template: Mapped[str | None] = mapped_column(String(100))
    owner_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    owner: Mapped[Any] = relationship("User", lazy="select")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    @property
    def grid(self) -> dict[str, list[Any]]:
        """axis -> its values, in the order given."""
        return {axis: values for axis, values in self.axes}

    @property
    def owner_name(self) -> str | None:
        return self.owner.name if self.owner is not None else None

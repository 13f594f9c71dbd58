"""Registered COCO-format datasets."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from backend.db import Base, JSONType, utcnow

__all__ = ["Dataset"]


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    train_ann: Mapped[str] = mapped_column(String(1024))
    val_ann: Mapped[str] = mapped_column(String(1024))
    train_images: Mapped[str] = mapped_column(String(1024))
    val_images: Mapped[str] = mapped_column(String(1024))
    # category names in id order, image/box counts and COCO size buckets per split
    stats: Mapped[dict[str, Any]] = mapped_column(JSONType)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # users depend on nothing, so the ORM resolves "User" by name; loaded when read (once a
    # session per user: a many-to-one found in the identity map costs no query)
    owner: Mapped[Any] = relationship("User", lazy="select")

    @property
    def owner_name(self) -> str | None:
        return self.owner.name if self.owner is not None else None

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

"""Audit trail API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["AuditEventRead", "AuditPage"]


class AuditEventRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    user_id: int | None
    user_name: str
    action: str
    object_type: str
    object_id: int | None
    detail: dict[str, Any]
    client: str | None


class AuditPage(BaseModel):
    items: list[AuditEventRead]
    total: int

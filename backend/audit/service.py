"""Recording and reading the audit trail."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from fastapi import Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.audit.models import AuditEvent

__all__ = ["ACTIONS", "Actor", "list_events", "record", "record_request"]


class Actor(Protocol):
    """Who made a change: a user (the audit trail needs only their id and name)."""

    @property
    def id(self) -> int: ...

    @property
    def name(self) -> str: ...


# every action the trail records, with what it is about
ACTIONS = {
    "job.submit": "job",
    "job.cancel": "job",
    "job.requeue": "job",
    "job.rescore": "job",
    "job.rerun": "job",
    "run.import": "job",
    "experiment.submit": "experiment",
    "experiment.cancel": "experiment",
    "dataset.register": "dataset",
    "weights.import": "weights",
    "user.create": "user",
    "user.update": "user",
    "token.create": "token",
    "token.revoke": "token",
}


def record(
    *,
    session: Session,
    user: Actor | None,
    action: str,
    object_id: int | None,
    detail: dict[str, Any] | None = None,
    client: str | None = None,
    user_name: str | None = None,
) -> AuditEvent:
    """Store one state change; user None is the command line (user_name says whose shell)."""
    event = AuditEvent(
        user_id=user.id if user is not None else None,
        user_name=user.name if user is not None else (user_name or "cli"),
        action=action,
        object_type=ACTIONS[action],
        object_id=object_id,
        detail=detail or {},
        client=client,
    )
    session.add(event)
    session.commit()
    return event


def record_request(
    request: Request,
    *,
    session: Session,
    user: Actor,
    action: str,
    object_id: int | None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """record() for a change made through the API, from the request's client address."""
    client = request.client.host if request.client is not None else None
    return record(
        session=session,
        user=user,
        action=action,
        object_id=object_id,
        detail=detail,
        client=client,
    )


def list_events(
    *,
    session: Session,
    user: str | None = None,
    action: str | None = None,
    object_type: str | None = None,
    object_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[AuditEvent], int]:
    """Events newest first, filtered, and how many match."""
    query = select(AuditEvent)
    if user is not None:
        query = query.where(AuditEvent.user_name == user)
    if action is not None:
        query = query.where(AuditEvent.action == action)
    if object_type is not None:
        query = query.where(AuditEvent.object_type == object_type)
    if object_id is not None:
        query = query.where(AuditEvent.object_id == object_id)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if until is not None:
        query = query.where(AuditEvent.at < until)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    items = session.scalars(query.order_by(AuditEvent.id.desc()).limit(limit).offset(offset)).all()
    return list(items), total

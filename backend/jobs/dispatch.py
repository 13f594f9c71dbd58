"""Sending queued jobs' messages to the broker, after their rows are committed."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from backend import queue
from backend.jobs import service

__all__ = ["send"]

log = logging.getLogger(__name__)


def send(session: Session, job_ids: list[int]) -> None:
    """One message per job, in order; when the broker refuses, the rest stay queued without a
    message and the workers' reconciler sends them later."""
    for position, job_id in enumerate(job_ids):
        try:
            queue.enqueue(job_id)
        except Exception:
            log.exception("the broker refused the messages of jobs %s", job_ids[position:])
            service.mark_unsent(session=session, job_ids=job_ids[position:])
            return

"""The queue's reconciler: the database says which jobs wait; the broker is made to agree.

One pass (`reconcile`): jobs whose running attempt stopped beating are put back in line (any
host's), then as many messages are sent as queued jobs lack. Workers run a pass when they start
and every DETLAB_RECONCILE_INTERVAL_S; `python -m backend.jobs.reconciler` runs one by hand.
Passes may race (several workers): every step is a compare-and-set, and a worker claims a job
with one, so a race costs at most a spare message, never a job run twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from backend import queue
from backend.config import Settings
from backend.jobs import service as job_service

__all__ = ["Reconciled", "reconcile"]

log = logging.getLogger(__name__)


@dataclass
class Reconciled:
    """What one pass did: jobs taken back from dead attempts, and jobs whose message was sent."""

    requeued: list[int]
    resent: list[int]
    waiting: int | None


def reconcile(
    *,
    sessions: sessionmaker[Session],
    settings: Settings,
    send: Callable[[int], None] = queue.enqueue,
    waiting: Callable[[Settings], int | None] = queue.waiting_messages,
) -> Reconciled:
    """One pass over the configured queue (see the module's docstring)."""
    with sessions() as session:
        requeued = job_service.requeue_stale(
            session=session, queue=settings.queue, stale_s=settings.heartbeat_stale_s
        )
    for job_id in requeued:
        log.warning(
            "job %s stopped beating for over %g s; back in line to resume from its checkpoint",
            job_id,
            settings.heartbeat_stale_s,
        )
    # count the broker before reading the database: a message taken meanwhile makes the pass
    # send a spare one (harmless), never miss one
    count = waiting(settings)
    with sessions() as session:
        resent = job_service.resend(
            session=session,
            queue=settings.queue,
            waiting=count,
            min_age_s=settings.reconcile_interval_s,
        )
    for job_id in resent:
        send(job_id)
    if resent:
        log.warning("sent %d message(s) the broker lacked for jobs %s", len(resent), resent)
    return Reconciled(requeued=requeued, resent=resent, waiting=count)


if __name__ == "__main__":
    from backend.config import get_settings
    from backend.db import session_factory

    logging.basicConfig(level=logging.INFO)
    print(reconcile(sessions=session_factory(), settings=get_settings()))

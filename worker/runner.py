"""Runs one job of any kind: claim the next in line, hand it to its kind's runner while its
heartbeat beats, record how it ended (only while this attempt still holds it)."""

from __future__ import annotations

import logging
import socket
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

import backend.models  # noqa: F401 - every table, so the ORM can resolve foreign keys
from backend.config import Settings
from backend.jobs import service as job_service
from backend.jobs.models import JobKind, JobStatus
from backend.jobs.service import Claim, ClaimLost
from worker.db_writes import DatabaseUnreachable, retrying
from worker.heartbeat import Heartbeat
from worker.outcomes import JobCancelled, JobFailed

__all__ = ["run_job"]

log = logging.getLogger(__name__)


def _run_kind(claim: Claim, *, settings: Settings, sessions: Any) -> None:
    if claim.job.kind == JobKind.pretrain:
        from worker.pretrain import run_pretrain

        run_pretrain(claim, settings=settings, sessions=sessions)
    elif claim.job.kind == JobKind.evaluate:
        from worker.evaluate import run_evaluate

        run_evaluate(claim, settings=settings, sessions=sessions)
    else:
        from worker.finetune import run_finetune

        run_finetune(claim, settings=settings, sessions=sessions)


def run_job(
    message: int | None, *, settings: Settings, sessions: sessionmaker[Session], host: str = ""
) -> JobStatus | None:
    """Claim the oldest queued job of the worker's queue, run it to its end and record the
    outcome; never raises. `message`: the job the waking message named (it may run later, or
    have run already: the database decides). None when nothing was waiting or the claim was
    lost to another attempt."""
    host = host or socket.gethostname()

    def take() -> job_service.Claim | None:
        with sessions() as session:
            return job_service.claim(session=session, queue=settings.queue, host=host)

    try:
        claim = retrying(take, grace_s=settings.db_grace_s, what="claiming a job")
    except DatabaseUnreachable:
        log.exception("no job could be claimed (message for job %s)", message)
        return None  # the job stays queued; the reconciler sends its message again
    if claim is None:
        log.info("message for job %s: no queued job waits; nothing to run", message)
        return None
    job_id = claim.job.id
    if message is not None and message != job_id:
        log.info("message for job %s: running job %s, the oldest in line", message, job_id)
    status, error = JobStatus.succeeded, None
    with Heartbeat(
        job_id=job_id,
        token=claim.token,
        sessions=sessions,
        interval_s=settings.heartbeat_interval_s,
    ) as beat:
        try:
            _run_kind(claim, settings=settings, sessions=sessions)
        except ClaimLost:
            log.warning("job %s was taken from this attempt; it stops here", job_id)
            return None
        except JobCancelled as exc:
            status, error = JobStatus.cancelled, str(exc)
        except JobFailed as exc:
            status, error = JobStatus.failed, str(exc)
        except Exception as exc:  # noqa: BLE001 - every failure must be recorded, never lost
            status, error = JobStatus.failed, _describe(exc, spec=claim.job.spec)
            log.exception("job %s failed", job_id)
        if beat.lost:
            log.warning("job %s was taken from this attempt; its outcome is not recorded", job_id)
            return None

    def record() -> bool:
        with sessions() as session:
            return job_service.finish(
                session=session, job_id=job_id, status=status, error=error, token=claim.token
            )

    try:
        recorded = retrying(
            record, grace_s=settings.db_grace_s, what=f"recording that the job {status.value}"
        )
    except DatabaseUnreachable:
        log.exception("job %s ended %s but that could not be recorded", job_id, status.value)
        return JobStatus.failed
    if not recorded:
        log.warning("job %s was taken from this attempt before it ended", job_id)
        return None
    return status


def _describe(exc: BaseException, *, spec: dict[str, Any]) -> str:
    """A failure reason a user can act on."""
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if name == "OutOfMemoryError" or "CUDA out of memory" in text:
        size = spec.get("image_scale") or spec.get("image_size")
        return (
            f"CUDA out of memory with batch_size {spec.get('batch_size')} at image size "
            f"{size}; lower either, or enable amp"
        )
    return f"{name}: {text}"[:2000]

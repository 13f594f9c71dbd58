"""Runs one job of any kind: claim it, hand it to its kind's runner, record how it ended."""

from __future__ import annotations

import logging
import socket
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

import backend.models  # noqa: F401 - every table, so the ORM can resolve foreign keys
from backend.config import Settings
from backend.jobs import service as job_service
from backend.jobs.models import Job, JobKind, JobStatus
from worker.db_writes import DatabaseUnreachable, retrying
from worker.outcomes import JobCancelled, JobFailed

__all__ = ["run_job"]

log = logging.getLogger(__name__)


def _run_kind(job: Job, *, resuming: bool, settings: Settings, sessions: Any) -> None:
    if job.kind == JobKind.pretrain:
        from worker.pretrain import run_pretrain

        run_pretrain(job, resuming=resuming, settings=settings, sessions=sessions)
    else:
        from worker.finetune import run_finetune

        run_finetune(job, resuming=resuming, settings=settings, sessions=sessions)


def run_job(job_id: int, *, settings: Settings, sessions: sessionmaker[Session]) -> JobStatus:
    """Run a queued (or redelivered) job to its end and record the outcome; never raises."""
    try:
        with sessions() as session:
            claimed = job_service.claim(session=session, job_id=job_id, host=socket.gethostname())
    except Exception as exc:
        log.exception("job %s could not be started", job_id)
        _record_failure(
            sessions, job_id, f"the worker could not start it: {_describe(exc, spec={})}"
        )
        return JobStatus.failed
    if claimed is None:
        with sessions() as session:
            job = session.get(Job, job_id)
            if job is None:
                log.warning("job %s does not exist; dropping the task", job_id)
                return JobStatus.failed
            log.info("job %s is %s; nothing to run", job_id, job.status.value)
            return job.status
    job, resuming = claimed
    status, error = JobStatus.succeeded, None
    try:
        _run_kind(job, resuming=resuming, settings=settings, sessions=sessions)
    except JobCancelled as exc:
        status, error = JobStatus.cancelled, str(exc)
    except JobFailed as exc:
        status, error = JobStatus.failed, str(exc)
    except Exception as exc:  # noqa: BLE001 - every failure must be recorded, never lost
        status, error = JobStatus.failed, _describe(exc, spec=job.spec)
        log.exception("job %s failed", job_id)

    def record() -> None:
        with sessions() as session:
            job_service.finish(session=session, job_id=job_id, status=status, error=error)

    try:
        retrying(record, grace_s=settings.db_grace_s, what=f"recording that the job {status.value}")
    except DatabaseUnreachable:
        log.exception("job %s ended %s but that could not be recorded", job_id, status.value)
        return JobStatus.failed
    return status


def _record_failure(sessions: sessionmaker[Session], job_id: int, reason: str) -> None:
    """Best effort: a job that cannot even be claimed must not stay queued forever."""
    try:
        with sessions() as session:
            job_service.fail(session=session, job_id=job_id, reason=reason)
    except Exception:
        log.exception("could not record the failure of job %s", job_id)


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

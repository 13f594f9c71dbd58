"""Runs one job of any kind: claim the next in line, hand it to its kind's runner while its
heartbeat beats, record how it ended (only while this attempt still holds it)."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

import backend.models  # noqa: F401 - every table, so the ORM can resolve foreign keys
from backend import queue
from backend.config import Settings
from backend.jobs import service as job_service
from backend.jobs.models import JobKind, JobStatus
from backend.jobs.service import Claim, ClaimLost
from backend.workers import service as workers_service
from worker.db_writes import DatabaseUnreachable, retrying
from worker.devices import WorkerDevices, cuda_environment
from worker.heartbeat import Heartbeat
from worker.outcomes import JobCancelled, JobFailed, describe_failure

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
    devices = worker_devices(settings)

    def take() -> job_service.Claim | None:
        with devices.claiming() as free:
            with sessions() as session:
                claim = job_service.claim(
                    session=session, queue=settings.queue, host=host, **devices.claim_limits(free)
                )
            devices.keep(claim.job.devices if claim else None)
            return claim

    try:
        claim = retrying(take, grace_s=settings.db_grace_s, what="claiming a job")
    except DatabaseUnreachable:
        log.exception("no job could be claimed (message for job %s)", message)
        return None  # the job stays queued; the reconciler sends its message again
    if claim is None:
        log.info("message for job %s: no queued job fits here now; nothing to run", message)
        _pass_wake_on(settings=settings, sessions=sessions, host=host)
        return None
    try:
        return _run_claimed(claim, settings=settings, sessions=sessions, message=message)
    finally:
        devices.release()
        _wake_next(settings=settings, sessions=sessions)


def _run_claimed(
    claim: Claim, *, settings: Settings, sessions: sessionmaker[Session], message: int | None
) -> JobStatus | None:
    # this process runs one job: it sees exactly the job's GPUs (none for a CPU job)
    os.environ.update(cuda_environment(claim.job.devices))
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
            status, error = JobStatus.failed, describe_failure(exc, spec=claim.job.spec)
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


_devices: dict[str, WorkerDevices] = {}


def worker_devices(settings: Settings) -> WorkerDevices:
    """This process's GPUs and locks (one per process: the locks it holds live in it)."""
    key = f"{settings.worker_gpus}/{settings.worker_cpu_slots}"
    if key not in _devices:
        _devices[key] = WorkerDevices.from_settings(settings)
    return _devices[key]


def _wake_next(*, settings: Settings, sessions: sessionmaker[Session]) -> None:
    """A job ended and its GPUs are free: wake a worker for the next in line, if any (a job
    that waited for GPUs has no message left; a spare message costs one empty claim)."""
    try:
        with sessions() as session:
            waiting = job_service.waiting(session=session, queue=settings.queue)
        if waiting:
            queue.enqueue(waiting[0][0])
    except Exception:  # the reconciler sends what is missing on its next pass
        log.exception("could not wake a worker for the next queued job")


def _pass_wake_on(*, settings: Settings, sessions: sessionmaker[Session], host: str) -> None:
    """Woken, but nothing waiting fits here now: when another live worker could start one of
    the waiting jobs, send the wake on (after a pause, so a fleet where nothing fits does not
    spin); otherwise the job waits for GPUs to free (_wake_next) or the reconciler."""
    try:
        with sessions() as session:
            waiting = job_service.waiting(session=session, queue=settings.queue)
            if not waiting:
                return
            fits = workers_service.hosts_that_fit(
                session=session,
                queue=settings.queue,
                gpus=min(gpus for _, gpus in waiting),
                stale_s=settings.heartbeat_stale_s,
                exclude=host,
            )
        if fits:
            time.sleep(1)
            queue.enqueue(waiting[0][0])
    except Exception:
        log.exception("could not pass the wake on to another worker")

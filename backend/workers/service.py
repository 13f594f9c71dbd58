"""The fleet: workers register, beat and stop here; the API reads who runs what, on which GPU.

A worker's row says what it is (host, GPUs, queues); what it runs is read from the jobs table
(running jobs whose worker_host is its name, holding the GPUs in their `devices`), so the two
never disagree.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, joinedload

from backend.db import as_utc, utcnow
from backend.jobs.models import Job, JobStatus
from backend.workers.models import Worker
from backend.workers.schemas import WorkerGpu, WorkerJob, WorkerRead, WorkerState

__all__ = ["beat", "hosts_that_fit", "list_workers", "register", "stop"]


def register(
    *,
    session: Session,
    name: str,
    host: str,
    pid: int,
    gpus: list[dict[str, Any]],
    queues: list[str],
    slots: int,
    max_job_gpus: int,
    version: str,
) -> Worker:
    """Insert the worker, or refresh its row when the name is known (a restart); commits."""
    now = utcnow()
    values: dict[str, Any] = {
        "name": name,
        "host": host,
        "pid": pid,
        "gpus": gpus,
        "queues": queues,
        "slots": slots,
        "max_job_gpus": max_job_gpus,
        "version": version,
        "started_at": now,
        "heartbeat_at": now,
        "stopped_at": None,
    }
    # one statement: of two processes registering the same name at once, neither fails
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    insert = dialect.insert(Worker).values(**values)
    statement = insert.on_conflict_do_update(
        index_elements=[Worker.name],
        set_={key: insert.excluded[key] for key in values if key != "name"},
    ).returning(Worker)
    worker = session.scalars(statement, execution_options={"populate_existing": True}).one()
    session.commit()
    return worker


def beat(*, session: Session, name: str) -> bool:
    """Record a heartbeat; False when the worker has no row (it should register again)."""
    statement = update(Worker).where(Worker.name == name).values(heartbeat_at=utcnow())
    result = cast(CursorResult[Any], session.execute(statement))
    session.commit()
    return result.rowcount > 0


def stop(*, session: Session, name: str) -> None:
    """Mark the worker as shut down cleanly; commits."""
    session.execute(update(Worker).where(Worker.name == name).values(stopped_at=utcnow()))
    session.commit()


def _utc(value: datetime) -> datetime:
    aware = as_utc(value)
    assert aware is not None
    return aware


def _state(worker: Worker, *, now: datetime, stale_s: float) -> WorkerState:
    if worker.stopped_at is not None:
        return "stopped"
    stale = now - _utc(worker.heartbeat_at) > timedelta(seconds=stale_s)
    return "stale" if stale else "alive"


def _running_jobs(session: Session, names: list[str]) -> dict[str, list[Job]]:
    """The running jobs of the named workers, by worker name (one query, owners joined)."""
    if not names:
        return {}
    jobs = session.scalars(
        select(Job)
        .options(joinedload(Job.owner))
        .where(Job.status == JobStatus.running, Job.worker_host.in_(names))
        .order_by(Job.id)
    ).all()
    by_worker: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        by_worker[str(job.worker_host)].append(job)
    return by_worker


def _holders(jobs: list[Job]) -> dict[str, int]:
    """Device (a GPU index as text) -> the id of the running job that holds it."""
    holders: dict[str, int] = {}
    for job in jobs:
        for device in job.devices or []:
            holders.setdefault(device, job.id)
    return holders


def _read(worker: Worker, jobs: list[Job], *, now: datetime, stale_s: float) -> WorkerRead:
    holders = _holders(jobs)
    heartbeat = _utc(worker.heartbeat_at)
    return WorkerRead(
        name=worker.name,
        host=worker.host,
        pid=worker.pid,
        queues=worker.queues,
        slots=worker.slots,
        max_job_gpus=worker.max_job_gpus,
        version=worker.version,
        started_at=_utc(worker.started_at),
        heartbeat_at=heartbeat,
        stopped_at=as_utc(worker.stopped_at),
        state=_state(worker, now=now, stale_s=stale_s),
        heartbeat_age_s=max(0.0, (now - heartbeat).total_seconds()),
        gpus=[
            WorkerGpu(
                index=gpu["index"],
                name=gpu["name"],
                memory_mb=gpu["memory_mb"],
                job_id=holders.get(str(gpu["index"])),
            )
            for gpu in worker.gpus
        ],
        jobs=[WorkerJob.model_validate(job) for job in jobs],
    )


def list_workers(
    *, session: Session, stale_s: float, include_stopped: bool = False
) -> list[WorkerRead]:
    """Workers by name, each with its state, its GPUs (busy or idle) and its running jobs."""
    query = select(Worker).order_by(Worker.name)
    if not include_stopped:
        query = query.where(Worker.stopped_at.is_(None))
    workers = session.scalars(query).all()
    running = _running_jobs(session, [worker.name for worker in workers])
    now = utcnow()
    return [
        _read(worker, running.get(worker.name, []), now=now, stale_s=stale_s) for worker in workers
    ]


def _fits(worker: Worker, jobs: list[Job], *, gpus: int) -> bool:
    """Whether the worker could start a job of `gpus` processes beside `jobs`."""
    if worker.gpus:
        held = _holders(jobs)
        return sum(str(gpu["index"]) not in held for gpu in worker.gpus) >= gpus
    # a CPU worker runs up to `slots` jobs, each of up to max_job_gpus gloo processes
    return worker.max_job_gpus >= gpus and len(jobs) < worker.slots


def hosts_that_fit(
    *, session: Session, queue: str, gpus: int, stale_s: float, exclude: str | None = None
) -> list[str]:
    """Names of alive workers of `queue` (but `exclude`) that could start a job of `gpus`
    processes now."""
    now = utcnow()
    query = select(Worker).where(Worker.stopped_at.is_(None)).order_by(Worker.name)
    if exclude is not None:
        query = query.where(Worker.name != exclude)
    candidates = [
        worker
        for worker in session.scalars(query).all()
        if queue in worker.queues and _state(worker, now=now, stale_s=stale_s) == "alive"
    ]
    running = _running_jobs(session, [worker.name for worker in candidates])
    return [
        worker.name
        for worker in candidates
        if _fits(worker, running.get(worker.name, []), gpus=gpus)
    ]

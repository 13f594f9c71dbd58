"""Jobs: submission, listing, metrics, and the lifecycle of a job's state.

This module is the only code that writes a job's status, progress, heartbeat or config: the
API's routes and the worker call it. Lifecycle: `create` (queued) -> `claim` (running) ->
`record_progress` (heartbeat, metric points; tells the worker whether to stop) -> `finish`
(succeeded, failed or cancelled). `cancel` asks; `orphans` finds jobs a dead worker left.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from backend.datasets import service as dataset_service
from backend.datasets.validation import PathOutsideRoots, confine
from backend.db import utcnow
from backend.errors import Conflict, Invalid, NotFound
from backend.jobs.models import FINISHED_STATUSES, Job, JobKind, JobStatus, MetricPoint
from backend.jobs.schemas import MetricSeries
from backend.jobs.spec import CheckpointInit, FinetuneSpec, PretrainSpec, WeightsInit
from backend.weights.models import Weights

__all__ = [
    "cancel",
    "claim",
    "create",
    "fail",
    "finish",
    "get",
    "list_jobs",
    "metric_series",
    "orphans",
    "record_progress",
    "save_config",
]


def _check_dataset(session: Session, dataset_id: int) -> None:
    try:
        dataset_service.get(session=session, dataset_id=dataset_id)
    except NotFound:
        raise Invalid(
            f"dataset_id: dataset {dataset_id} not found; see GET /datasets for the registered ones"
        ) from None


def _check_pretrain(session: Session, spec: PretrainSpec, roots: list[Path]) -> PretrainSpec:
    if spec.dataset_id is not None:
        _check_dataset(session, spec.dataset_id)
        return spec
    try:
        folder = confine(spec.image_folder or "", roots)
    except PathOutsideRoots as exc:
        raise Invalid(f"image_folder: {exc}") from None
    if not folder.is_dir():
        raise Invalid(
            f"image_folder: {spec.image_folder} is not a folder; give a folder of "
            "images under an allowed data root"
        )
    return spec.model_copy(update={"image_folder": str(folder)})


def create(*, session: Session, spec: FinetuneSpec | PretrainSpec, roots: list[Path]) -> list[Job]:
    """Check a spec against what is stored and queue it as new jobs (not yet sent): one job,
    or one per replicate seed in a replicate group when a fine-tune asks for repeats."""
    if isinstance(spec, PretrainSpec):
        spec = _check_pretrain(session, spec, roots)
        job = Job(
            kind=JobKind.pretrain,
            status=JobStatus.queued,
            name=spec.name,
            dataset_id=spec.dataset_id,
            spec=spec.model_dump(mode="json"),
        )
        session.add(job)
        session.commit()
        return [job]
    _check_dataset(session, spec.dataset_id)
    spec, weights_id = _check_init(session, spec, roots)
    jobs = [
        Job(
            kind=JobKind(spec.kind),
            status=JobStatus.queued,
            name=replicate.name,
            dataset_id=replicate.dataset_id,
            weights_id=weights_id,
            spec=replicate.model_dump(mode="json"),
        )
        for replicate in spec.replicates()
    ]
    session.add_all(jobs)
    session.flush()
    if len(jobs) > 1:
        for job in jobs:
            job.group_id = jobs[0].id
    session.commit()
    return jobs


def _check_init(
    session: Session, spec: FinetuneSpec, roots: list[Path]
) -> tuple[FinetuneSpec, int | None]:
    """The spec with its checkpoint path confined to the roots, and the weights id it uses."""
    if isinstance(spec.init, CheckpointInit):
        try:
            path = confine(spec.init.checkpoint, roots)
        except PathOutsideRoots as exc:
            raise Invalid(f"init.checkpoint: {exc}") from None
        if not path.is_file():
            raise Invalid(
                f"init.checkpoint: {spec.init.checkpoint} is not a file; give the path "
                "of a checkpoint under an allowed data root"
            )
        init = CheckpointInit(checkpoint=str(path), prefix=spec.init.prefix)
        return spec.model_copy(update={"init": init}), None
    if isinstance(spec.init, WeightsInit):
        if session.get(Weights, spec.init.weights_id) is None:
            raise Invalid(
                f"init.weights_id: weights {spec.init.weights_id} not found; "
                "see GET /weights for the registered ones"
            )
        return spec, spec.init.weights_id
    return spec, None


def get(*, session: Session, job_id: int) -> Job:
    """The job with this id, or NotFound."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def list_jobs(
    *,
    session: Session,
    status: JobStatus | None = None,
    kind: JobKind | None = None,
    dataset_id: int | None = None,
    group_id: int | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Job], int]:
    """One page of jobs, newest first, with the total matching the filters."""
    query = select(Job)
    if group_id is not None:
        query = query.where(Job.group_id == group_id)
    if status is not None:
        query = query.where(Job.status == status)
    if kind is not None:
        query = query.where(Job.kind == kind)
    if dataset_id is not None:
        query = query.where(Job.dataset_id == dataset_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    items = session.scalars(query.order_by(Job.id.desc()).limit(limit).offset(offset)).all()
    return list(items), total


def cancel(*, session: Session, job_id: int) -> Job:
    """Cancel a queued job at once; ask a running one to stop (its worker checks every second)."""
    job = get(session=session, job_id=job_id)
    if job.status in FINISHED_STATUSES:
        raise Conflict(
            f"job {job_id} is already {job.status.value}; only queued or running jobs "
            "can be cancelled"
        )
    # one UPDATE guarded by status, so a worker that starts the job meanwhile is not overwritten
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued)
        .values(
            status=JobStatus.cancelled,
            cancel_requested=True,
            finished_at=func.now(),
            error="cancelled before it started",
        )
    )
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running)
        .values(cancel_requested=True)
    )
    session.commit()
    session.refresh(job)
    return job


def claim(*, session: Session, job_id: int, host: str) -> tuple[Job, bool] | None:
    """Mark a job running on host; (job, resuming) or None when it must not run.

    `resuming` is True for a job already marked running: its task was redelivered because
    a worker died, so the run continues from its last checkpoint."""
    job = session.get(Job, job_id)
    if job is None or job.status in FINISHED_STATUSES:
        return None
    if job.cancel_requested:
        finish(
            session=session,
            job_id=job_id,
            status=JobStatus.cancelled,
            error="cancelled before it started",
        )
        return None
    resuming = job.status == JobStatus.running
    job.status = JobStatus.running
    job.attempts += 1
    job.started_at = job.started_at or utcnow()
    job.heartbeat_at = utcnow()
    job.worker_host = host
    session.commit()
    return job, resuming


def save_config(*, session: Session, job_id: int, config_text: str) -> None:
    """Keep the generated mmdet/mmpretrain config with the job."""
    session.execute(update(Job).where(Job.id == job_id).values(config_text=config_text))
    session.commit()


def record_progress(
    *,
    session: Session,
    job_id: int,
    points: list[dict[str, Any]] | None = None,
    progress_iter: int | None = None,
    progress_total: int | None = None,
    eta_seconds: float | None = None,
    resumed_at: int | None = None,
) -> bool:
    """Store metric points (dicts of key, step, epoch, value) and progress, beat the heart;
    returns whether a cancel was asked. ``resumed_at``: a run restarting from its checkpoint
    at that step drops the points an earlier attempt wrote after it, so each step is written
    once."""
    if resumed_at is not None:
        session.execute(
            delete(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.step > resumed_at)
        )
    if points:
        _upsert_points(session, job_id, points)
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress_iter is not None:
        values.update(progress_iter=progress_iter, eta_seconds=eta_seconds)
    if progress_total is not None:
        values["progress_total"] = progress_total
    session.execute(update(Job).where(Job.id == job_id).values(**values))
    cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    session.commit()
    return bool(cancel)


def _upsert_points(session: Session, job_id: int, points: list[dict[str, Any]]) -> None:
    """Insert points; a (key, step) already stored takes the new value (a rewritten step)."""
    latest = {(p["key"], p["step"]): {"job_id": job_id, **p} for p in points}
    dialect = session.get_bind().dialect.name
    statement = (postgres_insert if dialect == "postgresql" else sqlite_insert)(MetricPoint)
    statement = statement.on_conflict_do_update(
        index_elements=["job_id", "key", "step"],
        set_={"value": statement.excluded.value, "epoch": statement.excluded.epoch},
    )
    session.execute(statement, list(latest.values()))


def finish(*, session: Session, job_id: int, status: JobStatus, error: str | None = None) -> None:
    """Record how a job ended (succeeded, failed or cancelled) and why."""
    if status not in FINISHED_STATUSES:
        raise ValueError(f"finish takes a final status ({FINISHED_STATUSES}); got {status}")
    now = utcnow()
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(
            status=status,
            error=error[:2000] if error else error,
            finished_at=now,
            heartbeat_at=now,
        )
    )
    session.commit()


def fail(*, session: Session, job_id: int, reason: str) -> None:
    """Record that a job failed and why."""
    finish(session=session, job_id=job_id, status=JobStatus.failed, error=reason)


def orphans(*, session: Session, host: str) -> list[int]:
    """Jobs marked running by a worker on host: after that worker's restart, none is alive."""
    return list(
        session.scalars(
            select(Job.id).where(Job.status == JobStatus.running, Job.worker_host == host)
        )
    )


def metric_series(
    *, session: Session, job_id: int, keys: list[str] | None = None, max_points: int = 1000
) -> list[MetricSeries]:
    """Each metric of a job over steps; long series are averaged down to max_points buckets."""
    get(session=session, job_id=job_id)
    query = select(MetricPoint.key, MetricPoint.step, MetricPoint.epoch, MetricPoint.value).where(
        MetricPoint.job_id == job_id
    )
    if keys:
        query = query.where(MetricPoint.key.in_(keys))
    rows = session.execute(query.order_by(MetricPoint.key, MetricPoint.step)).all()
    grouped: dict[str, list[tuple[int, int | None, float]]] = {}
    for key, step, epoch, value in rows:
        grouped.setdefault(key, []).append((step, epoch, value))
    return [_downsample(key, points, max_points) for key, points in grouped.items()]


def _downsample(
    key: str, points: list[tuple[int, int | None, float]], max_points: int
) -> MetricSeries:
    if len(points) <= max_points:
        return MetricSeries(
            key=key,
            steps=[p[0] for p in points],
            epochs=[p[1] for p in points],
            values=[p[2] for p in points],
            downsampled=False,
        )
    size = -(-len(points) // max_points)  # ceil
    steps, epochs, values = [], [], []
    for start in range(0, len(points), size):
        bucket = points[start : start + size]
        steps.append(bucket[-1][0])
        epochs.append(bucket[-1][1])
        values.append(sum(p[2] for p in bucket) / len(bucket))
    return MetricSeries(key=key, steps=steps, epochs=epochs, values=values, downsampled=True)

"""Jobs: submission, listing, metrics, and the lifecycle of a job's state.

This module is the only code that writes a job's status, progress, heartbeat or config: the
API's routes, the workers and the reconciler call it. Lifecycle: `create` (queued) -> `claim`
(running, under a fresh claim token) -> `heartbeat` / `record_progress` (metric points; tells
the worker whether to stop) -> `finish` (succeeded, failed or cancelled). `cancel` asks;
`requeue` puts a job back in line; `requeue_stale` and `resend` are the reconciler's.

The database is the queue. A broker message only wakes a worker; the worker then claims the
oldest queued job of its queue with a compare-and-set, so jobs run in submission order on every
broker, a lost or duplicated message neither loses nor doubles a job, and two workers never hold
one job: every write of an attempt names its claim token, and an attempt whose token is gone
(the job was requeued or taken over) gets ClaimLost and stops.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from pydantic import TypeAdapter
from sqlalchemy import CursorResult, Select, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from backend import registry
from backend.datasets import service as dataset_service
from backend.datasets.models import Dataset
from backend.datasets.validation import PathOutsideRoots, confine
from backend.db import utcnow
from backend.errors import Conflict, Invalid, NotFound
from backend.jobs import quota as job_quota
from backend.jobs.models import FINISHED_STATUSES, Job, JobKind, JobStatus, MetricPoint
from backend.jobs.quota import Quota
from backend.jobs.schemas import MetricSeries
from backend.jobs.spec import (
    DEFAULT_FEATURE_CHANNELS,
    CheckpointInit,
    EvaluateSpec,
    FinetuneSpec,
    JobSpec,
    PretrainSpec,
    WeightsInit,
)
from backend.users.models import User
from backend.weights.models import Weights

__all__ = [
    "Claim",
    "ClaimLost",
    "cancel",
    "claim",
    "waiting",
    "create",
    "add_queued",
    "rerun",
    "create_import",
    "prepare",
    "discard",
    "fail",
    "finish",
    "get",
    "heartbeat",
    "list_jobs",
    "mark_unsent",
    "metric_series",
    "queue_positions",
    "record_progress",
    "requeue",
    "requeue_stale",
    "resend",
    "save_config",
    "save_record",
]

_SPEC: TypeAdapter[Any] = TypeAdapter(JobSpec)


class ClaimLost(Exception):
    """This attempt no longer holds its job: it was requeued or taken over by another worker."""


@dataclass
class Claim:
    """A job a worker holds: its writes name `token`; `resuming` when an earlier attempt ran."""

    job: Job
    token: str
    resuming: bool


def _changed(session: Session, statement: Any) -> int:
    """Run an UPDATE or DELETE; the number of rows it changed (a compare-and-set's verdict)."""
    result = cast(CursorResult[Any], session.execute(statement))
    return result.rowcount


def _check_dataset(session: Session, dataset_id: int) -> Dataset:
    try:
        return dataset_service.get(session=session, dataset_id=dataset_id)
    except NotFound:
        raise Invalid(
            f"dataset_id: dataset {dataset_id} not found; see GET /datasets for the registered ones"
        ) from None


def _check_masks(detector: str, dataset: Dataset) -> None:
    """A detector with a mask head needs a dataset with a segmentation on every box."""
    if not registry.DETECTORS[detector].masks:
        return
    missing = dataset_service.masks_missing(dataset.stats or {})
    if missing is not None:
        box_detectors = [n for n, e in registry.DETECTORS.items() if not e.masks]
        raise Invalid(
            f"detector: {detector} trains and is scored on instance masks, and dataset "
            f"{dataset.id} ({dataset.name!r}) lacks them ({missing}); choose a box detector "
            f"({', '.join(box_detectors)}) or a dataset whose annotations carry a segmentation "
            "(COCO polygons or RLE; VOC and KITTI imports have none)"
        )


def _check_pretrain(session: Session, spec: PretrainSpec, roots: list[Path]) -> PretrainSpec:
    if isinstance(spec.init, WeightsInit):
        weights = session.get(Weights, spec.init.weights_id)
        if weights is None or weights.kind != "backbone" or weights.architecture != spec.backbone:
            found = (
                "not found"
                if weights is None
                else f"{weights.kind} weights of {weights.architecture}"
            )
            raise Invalid(
                f"init.weights_id: weights {spec.init.weights_id} are {found}; a box-domain "
                f"pretraining starts its {spec.backbone} from backbone weights of {spec.backbone} "
                "(see GET /weights)"
            )
    if spec.dataset_id is not None:
        _check_dataset(session, spec.dataset_id)
        return spec
    folder = _existing(
        "image_folder", spec.image_folder or "", roots, "a folder of images", folder=True
    )
    return spec.model_copy(update={"image_folder": str(folder)})


def _existing(
    field: str, given: str, roots: list[Path], what: str, *, folder: bool = False
) -> Path:
    """`given` resolved under the roots and there (a folder, or a file), or an Invalid naming
    the field and `what` is accepted."""
    try:
        path = confine(given, roots)
    except PathOutsideRoots as exc:
        raise Invalid(f"{field}: {exc}") from None
    if not (path.is_dir() if folder else path.is_file()):
        raise Invalid(
            f"{field}: {given} is not {'a folder' if folder else 'a file'}; give {what} under "
            "an allowed root"
        )
    return path


def create(
    *,
    session: Session,
    spec: FinetuneSpec | PretrainSpec | EvaluateSpec,
    roots: list[Path],
    queue: str = "detlab",
    artifact_root: Path | None = None,
    owner_id: int | None = None,
    quota: Quota | None = None,
    **columns: Any,
) -> list[Job]:
    """Check a spec against what is stored and the owner's quota, and queue it as new jobs of
    `queue` owned by owner_id (their messages are the caller's to send): one job, or one per
    replicate seed in a replicate group when a fine-tune asks for repeats. `columns` are set
    on every job (a re-run's rerun_of_id)."""
    jobs = prepare(
        session=session,
        spec=spec,
        roots=roots,
        queue=queue,
        artifact_root=artifact_root,
        owner_id=owner_id,
        quota=quota,
    )
    if quota is not None and owner_id is not None:
        job_quota.check_active(session=session, owner_id=owner_id, new_jobs=len(jobs), quota=quota)
    add_queued(session=session, groups=[jobs], **columns)
    session.commit()
    return jobs


def add_queued(*, session: Session, groups: list[list[Job]], **columns: Any) -> None:
    """Add prepared jobs (not committed): each list of several is a replicate group named by
    its first job; `columns` are set on every job."""
    for jobs in groups:
        for job in jobs:
            for name, value in columns.items():
                setattr(job, name, value)
        session.add_all(jobs)
    session.flush()
    for jobs in groups:
        if len(jobs) > 1:
            for job in jobs:
                job.group_id = jobs[0].id


def prepare(
    *,
    session: Session,
    spec: FinetuneSpec | PretrainSpec | EvaluateSpec,
    roots: list[Path],
    queue: str = "detlab",
    artifact_root: Path | None = None,
    owner_id: int | None = None,
    quota: Quota | None = None,
) -> list[Job]:
    """The jobs a spec makes, checked against what is stored and the length quota, not yet
    added to the session: Invalid names the first problem."""
    now = utcnow()

    def queued(kind: JobKind, one: FinetuneSpec | PretrainSpec | EvaluateSpec, **row: Any) -> Job:
        return Job(
            kind=kind,
            status=JobStatus.queued,
            name=one.name,
            dataset_id=one.dataset_id,
            spec=one.model_dump(mode="json"),
            queue=queue,
            queued_at=now,
            sent_at=now,
            owner_id=owner_id,
            gpus=getattr(one, "gpus", 1),
            **row,
        )

    if isinstance(spec, EvaluateSpec):
        # a DetLab job's own checkpoint lies under the artifact root
        spec = _check_evaluate(session, spec, [*roots, *filter(None, [artifact_root])])
        jobs = [queued(JobKind.evaluate, spec, parent_id=spec.source_job_id)]
    elif isinstance(spec, PretrainSpec):
        spec = _check_pretrain(session, spec, roots)
        # a box-domain pretraining's start, like a fine-tune's: its weights' lineage
        start = spec.init.weights_id if isinstance(spec.init, WeightsInit) else None
        jobs = [queued(JobKind.pretrain, spec, weights_id=start)]
    else:
        dataset = _check_dataset(session, spec.dataset_id)
        _check_masks(spec.detector, dataset)
        spec, weights_id = _check_init(session, spec, roots)
        images = int((dataset.stats or {}).get("train", {}).get("images") or 0)
        per_epoch = max(1, math.ceil(images * spec.data_fraction / spec.batch_size))
        try:
            spec = spec.fit_warmup(per_epoch)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        jobs = [
            queued(JobKind.finetune, replicate, weights_id=weights_id)
            for replicate in spec.replicates()
        ]
    if quota is not None:
        job_quota.check_length(session=session, spec=spec, quota=quota)
    return jobs


def _check_evaluate(session: Session, spec: EvaluateSpec, roots: list[Path]) -> EvaluateSpec:
    """The spec with its checkpoint confined to the roots (data roots and the artifact root),
    its source job a finished fine-tune, its mmdet config one the installed mmdet ships."""
    _check_dataset(session, spec.dataset_id)
    if spec.source_job_id is not None:
        source = session.get(Job, spec.source_job_id)
        if source is None or source.kind != JobKind.finetune:
            raise Invalid(
                f"source_job_id: {spec.source_job_id} is not a fine-tune job; see "
                "GET /jobs?kind=finetune"
            )
        if source.status != JobStatus.succeeded:
            raise Invalid(
                f"source_job_id: job {spec.source_job_id} is {source.status.value}; only a "
                "succeeded fine-tune has a final checkpoint to score"
            )
    if spec.mmdet_config is not None and registry.mmdet_config_file(spec.mmdet_config) is None:
        close = registry.similar_mmdet_configs(spec.mmdet_config)
        raise Invalid(
            f"mmdet_config: {spec.mmdet_config!r} is not a config of the installed mmdet"
            + (f"; did you mean {', '.join(close)}?" if close else "")
        )
    if spec.checkpoint is None:
        return spec
    path = _existing(
        "checkpoint",
        spec.checkpoint,
        roots,
        "the path of a checkpoint (a data root or the artifacts)",
    )
    return spec.model_copy(update={"checkpoint": str(path)})


def rerun(
    *,
    session: Session,
    job_id: int,
    roots: list[Path],
    queue: str,
    artifact_root: Path | None,
    owner_id: int | None,
    quota: Quota | None,
) -> Job:
    """Queue the job's spec again, seed included, as a new job that names it (rerun_of_id)."""
    original = get(session=session, job_id=job_id)
    if original.kind == JobKind.imported:
        raise Conflict(
            f"job {job_id} is an import: its predictions were made elsewhere, so there is no "
            "spec to run again; import the re-made predictions instead"
        )
    spec_in = {**original.spec, "name": f"re-run of {original.name or job_id}"[:200]}
    try:
        spec = _SPEC.validate_python(spec_in)
    except ValueError as exc:
        raise Conflict(
            f"job {job_id}'s spec is no longer accepted, so it cannot be run again as it was: {exc}"
        ) from None
    (job,) = create(
        session=session,
        spec=spec,
        roots=roots,
        queue=queue,
        artifact_root=artifact_root,
        owner_id=owner_id,
        quota=quota,
        rerun_of_id=original.id,
    )
    return job


def create_import(
    *,
    session: Session,
    dataset_id: int,
    name: str,
    source: dict[str, Any],
    owner_id: int | None = None,
) -> Job:
    """A run whose predictions were made elsewhere: succeeded at once, nothing to train. Its
    spec says so (kind import) and keeps what the uploader told of the model in `source`."""
    _check_dataset(session, dataset_id)
    now = utcnow()
    job = Job(
        kind=JobKind.imported,
        status=JobStatus.succeeded,
        name=name,
        dataset_id=dataset_id,
        spec={"kind": JobKind.imported.value, "dataset_id": dataset_id, "source": source},
        created_at=now,
        started_at=now,
        finished_at=now,
        queue="",
        owner_id=owner_id,
    )
    session.add(job)
    session.commit()
    return job


def discard(*, session: Session, job_id: int) -> None:
    """Remove a job that never became usable (an import whose file could not be scored)."""
    session.execute(delete(MetricPoint).where(MetricPoint.job_id == job_id))
    session.execute(delete(Job).where(Job.id == job_id))
    session.commit()


def _check_init(
    session: Session, spec: FinetuneSpec, roots: list[Path]
) -> tuple[FinetuneSpec, int | None]:
    """The spec with its checkpoint path confined to the roots, and the weights id it uses."""
    if isinstance(spec.init, CheckpointInit):
        path = _existing("init.checkpoint", spec.init.checkpoint, roots, "a checkpoint file")
        init = CheckpointInit(checkpoint=str(path), prefix=spec.init.prefix)
        return spec.model_copy(update={"init": init}), None
    if isinstance(spec.init, WeightsInit):
        weights = session.get(Weights, spec.init.weights_id)
        if weights is None:
            raise Invalid(
                f"init.weights_id: weights {spec.init.weights_id} not found; "
                "see GET /weights for the registered ones"
            )
        if weights.kind == "detector":
            if (weights.detector, weights.architecture, "fpn") != (
                spec.detector,
                spec.backbone,
                spec.neck,
            ):
                raise Invalid(
                    f"init.weights_id: weights {weights.id} are a whole {weights.detector} on "
                    f"{weights.architecture} with fpn (box-domain pretraining); they start that "
                    f"model only: set detector {weights.detector!r}, backbone "
                    f"{weights.architecture!r} and neck 'fpn' (got {spec.detector}, "
                    f"{spec.backbone}, {spec.neck})"
                )
            if spec.feature_channels not in (None, DEFAULT_FEATURE_CHANNELS):
                raise Invalid(
                    f"feature_channels: weights {weights.id} are a whole {weights.detector} "
                    f"whose neck and heads are {DEFAULT_FEATURE_CHANNELS} channels wide; they "
                    f"load only into that width: leave feature_channels out or set it to "
                    f"{DEFAULT_FEATURE_CHANNELS} (got {spec.feature_channels})"
                )
        return spec, spec.init.weights_id
    return spec, None


def get(*, session: Session, job_id: int) -> Job:
    """The job with this id, or NotFound."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def check_exists(*, session: Session, job_id: int) -> None:
    """NotFound unless the job exists; reads its id only (a Job row carries its config and
    record texts)."""
    if session.scalar(select(Job.id).where(Job.id == job_id)) is None:
        raise NotFound(f"job {job_id} not found")


def list_jobs(
    *,
    session: Session,
    status: JobStatus | None = None,
    kind: JobKind | None = None,
    dataset_id: int | None = None,
    group_id: int | None = None,
    owner_id: int | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """One page of jobs, newest first, with the total matching the filters: each job's
    columns as JobRead takes them, with its owner's name and its place in line.

    Plain rows, not ORM objects, and in one query: a page of jobs is the API's most common
    answer (the dashboard polls it), and loading, tracking and validating 50 ORM objects,
    their config texts included, cost most of its time (issue 13)."""
    conditions = [
        condition
        for condition, wanted in (
            (Job.owner_id == owner_id, owner_id),
            (Job.group_id == group_id, group_id),
            (Job.status == status, status),
            (Job.kind == kind, kind),
            (Job.dataset_id == dataset_id, dataset_id),
        )
        if wanted is not None
    ]
    line = _queue_line().subquery()
    page = (
        select(
            *LISTED_COLUMNS,
            User.name.label("owner_name"),
            line.c.place.label("queue_position"),
            # the total matching, counted by the same query (a window over the whole result)
            func.count().over().label("matching"),
        )
        .outerjoin(User, User.id == Job.owner_id)
        .outerjoin(line, line.c.id == Job.id)
        .where(*conditions)
        .order_by(Job.id.desc())
        .limit(limit)
        .offset(offset)
    )
    rows = [dict(row._mapping) for row in session.execute(page)]
    if rows:
        total = rows[0]["matching"]
    elif offset:  # a page past the end still says how many there are
        total = session.scalar(select(func.count()).select_from(Job).where(*conditions)) or 0
    else:
        total = 0
    for row in rows:
        del row["matching"]
    return rows, total


# what a listed job shows: every column but its config text, claim token and send time
LISTED_COLUMNS = tuple(
    column
    for column in Job.__table__.columns
    if column.name not in ("config_text", "claim_token", "sent_at")
)


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


def claim(
    *,
    session: Session,
    queue: str,
    host: str,
    free_gpus: Sequence[str] | None = None,
    max_processes: int | None = None,
) -> Claim | None:
    """Claim the oldest queued job of `queue` that fits this worker, for a worker on host, or
    None when none waits.

    `free_gpus`: a GPU worker's GPUs that no job holds (a job of n processes takes the first
    n); `max_processes`: a CPU worker's limit on one job's gloo processes. A job that does not
    fit now stays in line and younger jobs that fit run first (a 4-GPU job waits for a host
    with 4 free GPUs without blocking 1-GPU jobs). The claim is a compare-and-set (status still
    queued) that writes a fresh token, so of two workers racing for a job exactly one gets it;
    the loser tries the next job in line."""
    limit = len(free_gpus) if free_gpus is not None else max_processes
    skipped: list[int] = []
    while True:
        query = select(Job.id, Job.gpus).where(Job.status == JobStatus.queued, Job.queue == queue)
        if limit is not None:
            query = query.where(Job.gpus <= limit)
        if skipped:
            query = query.where(Job.id.not_in(skipped))
        row = session.execute(query.order_by(Job.queued_at, Job.id).limit(1)).first()
        if row is None:
            return None
        job_id, gpus = row
        if free_gpus is not None:
            held: list[str] | None = [str(index) for index in free_gpus[:gpus]]
        else:
            held = ["cpu"] if max_processes is not None else None
        token = uuid.uuid4().hex
        now = utcnow()
        won = _changed(
            session,
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.queued)
            .values(
                status=JobStatus.running,
                claim_token=token,
                attempts=Job.attempts + 1,
                started_at=func.coalesce(Job.started_at, now),
                heartbeat_at=now,
                worker_host=host,
                devices=held,
            ),
        )
        session.commit()
        if won == 1:
            job = get(session=session, job_id=job_id)
            session.refresh(job)
            return Claim(job=job, token=token, resuming=job.attempts > 1)
        skipped.append(job_id)


def waiting(*, session: Session, queue: str) -> list[tuple[int, int]]:
    """The queued jobs of `queue` as (id, gpus), oldest first."""
    rows = session.execute(
        select(Job.id, Job.gpus)
        .where(Job.status == JobStatus.queued, Job.queue == queue)
        .order_by(Job.queued_at, Job.id)
    ).all()
    return [(job_id, gpus) for job_id, gpus in rows]


def _held(job_id: int, token: str | None) -> list[Any]:
    """The WHERE clause of an attempt's write: the job, still running under that token."""
    if token is None:  # the caller does not hold a claim (tests, tools): the job alone
        return [Job.id == job_id]
    return [Job.id == job_id, Job.status == JobStatus.running, Job.claim_token == token]


def heartbeat(*, session: Session, job_id: int, token: str) -> bool:
    """Say the attempt holding token is alive; False when it no longer holds the job."""
    held = _changed(session, update(Job).where(*_held(job_id, token)).values(heartbeat_at=utcnow()))
    session.commit()
    return held == 1


def save_config(
    *, session: Session, job_id: int, config_text: str, token: str | None = None
) -> None:
    """Keep the generated mmdet/mmpretrain config with the job."""
    held = _changed(
        session, update(Job).where(*_held(job_id, token)).values(config_text=config_text)
    )
    session.commit()
    if held != 1:
        raise ClaimLost(f"job {job_id} is no longer held by this attempt")


def save_record(
    *, session: Session, job_id: int, record: dict[str, Any], token: str | None = None
) -> None:
    """Keep the job's reproducibility record (backend/jobs/records.py) with the job."""
    held = _changed(session, update(Job).where(*_held(job_id, token)).values(record=record))
    session.commit()
    if held != 1:
        raise ClaimLost(f"job {job_id} is no longer held by this attempt")


def record_progress(
    *,
    session: Session,
    job_id: int,
    points: list[dict[str, Any]] | None = None,
    progress_iter: int | None = None,
    progress_total: int | None = None,
    eta_seconds: float | None = None,
    resumed_at: int | None = None,
    token: str | None = None,
) -> bool:
    """Store metric points (dicts of key, step, epoch, value) and progress, beat the heart;
    returns whether a cancel was asked. ``resumed_at``: a run restarting from its checkpoint
    at that step drops the points an earlier attempt wrote after it, so each step is written
    once. With ``token``, nothing is written unless that attempt still holds the job
    (ClaimLost)."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress_iter is not None:
        values.update(progress_iter=progress_iter, eta_seconds=eta_seconds)
    if progress_total is not None:
        values["progress_total"] = progress_total
    # the job's row first: it locks the row, so a takeover waits for this transaction or wins
    if _changed(session, update(Job).where(*_held(job_id, token)).values(**values)) != 1:
        session.rollback()
        raise ClaimLost(f"job {job_id} is no longer held by this attempt")
    if resumed_at is not None:
        session.execute(
            delete(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.step > resumed_at)
        )
    if points:
        _upsert_points(session, job_id, points)
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


def finish(
    *,
    session: Session,
    job_id: int,
    status: JobStatus,
    error: str | None = None,
    token: str | None = None,
) -> bool:
    """Record how a job ended (succeeded, failed or cancelled) and why; with ``token``, only
    while that attempt holds the job. Returns whether it was recorded."""
    if status not in FINISHED_STATUSES:
        raise ValueError(f"finish takes a final status ({FINISHED_STATUSES}); got {status}")
    now = utcnow()
    recorded = _changed(
        session,
        update(Job)
        .where(*_held(job_id, token))
        .values(
            status=status,
            error=error[:2000] if error else error,
            finished_at=now,
            heartbeat_at=now,
            devices=None,
        ),
    )
    session.commit()
    return recorded == 1


def fail(*, session: Session, job_id: int, reason: str) -> None:
    """Record that a job failed and why."""
    finish(session=session, job_id=job_id, status=JobStatus.failed, error=reason)


def requeue(*, session: Session, job_id: int, stale_s: float) -> Job:
    """Put a job back at the end of its queue (its message is the caller's to send).

    Queued, failed and cancelled jobs go back in line; a failed or cancelled one resumes from
    its last checkpoint. A running job only when its heartbeat is older than stale_s (its
    worker is gone); a live one must be cancelled first. Succeeded jobs are not rerun."""
    job = get(session=session, job_id=job_id)
    if job.status == JobStatus.succeeded:
        raise Conflict(
            f"job {job_id} succeeded; it is not run again. Submit a new job to train again"
        )
    cutoff = utcnow() - timedelta(seconds=stale_s)
    if job.status == JobStatus.running and job.heartbeat_at and job.heartbeat_at >= cutoff:
        raise Conflict(
            f"job {job_id} is running on {job.worker_host} (heartbeat "
            f"{(utcnow() - job.heartbeat_at).total_seconds():.0f} s ago); cancel it first, or "
            f"requeue it once its heartbeat is older than {stale_s:g} s "
            "(DETLAB_HEARTBEAT_STALE_S)"
        )
    now = utcnow()
    condition = [Job.id == job_id, Job.status == job.status]
    if job.status == JobStatus.running:  # still the same stale attempt (compare-and-set)
        condition += [Job.claim_token == job.claim_token, Job.heartbeat_at < cutoff]
    moved = _changed(
        session,
        update(Job)
        .where(*condition)
        .values(
            status=JobStatus.queued,
            claim_token=None,
            cancel_requested=False,
            error=None,
            finished_at=None,
            queued_at=now,
            sent_at=now,
            devices=None,
        ),
    )
    session.commit()
    if moved != 1:
        raise Conflict(f"job {job_id} changed while it was being requeued; try again")
    session.refresh(job)
    return job


def mark_unsent(*, session: Session, job_ids: list[int]) -> None:
    """These jobs' messages could not be sent: the reconciler sends them."""
    session.execute(update(Job).where(Job.id.in_(job_ids)).values(sent_at=None))
    session.commit()


def requeue_stale(*, session: Session, queue: str, stale_s: float) -> list[int]:
    """Jobs of `queue` whose running attempt stopped beating more than stale_s ago (on any host)
    go back to queued, keeping their place in line, to resume from their last checkpoint.
    One compare-and-set statement: of two reconcilers, one moves each job."""
    cutoff = utcnow() - timedelta(seconds=stale_s)
    moved = session.scalars(
        update(Job)
        .where(
            Job.status == JobStatus.running,
            Job.queue == queue,
            or_(Job.heartbeat_at < cutoff, Job.heartbeat_at.is_(None)),
        )
        .values(status=JobStatus.queued, claim_token=None, sent_at=None, devices=None)
        .returning(Job.id)
    ).all()
    session.commit()
    return list(moved)


def resend(*, session: Session, queue: str, waiting: int | None, min_age_s: float) -> list[int]:
    """The queued jobs of `queue` whose messages are missing, marked as sent again.

    `waiting`: messages the broker holds for the queue (None when it cannot tell: then only
    jobs never sent, such as those requeue_stale moved, count as missing). A worker claims the
    oldest queued job whatever its message names, so the count matters, not which ids: with Q
    jobs queued for longer than min_age_s (younger ones may have their message on its way) and
    `waiting` messages, max(0, Q - waiting) jobs are sent again, never-sent ones first. Each is
    marked by a compare-and-set on sent_at, so two reconcilers do not both send it."""
    cutoff = utcnow() - timedelta(seconds=min_age_s)
    due = session.execute(
        select(Job.id, Job.sent_at)
        .where(
            Job.status == JobStatus.queued,
            Job.queue == queue,
            or_(Job.sent_at < cutoff, Job.sent_at.is_(None)),
        )
        .order_by(Job.sent_at.is_not(None), Job.queued_at, Job.id)
    ).all()
    if waiting is None:
        due = [row for row in due if row.sent_at is None]
    else:
        queued = session.scalar(
            select(func.count()).where(Job.status == JobStatus.queued, Job.queue == queue)
        )
        due = due[: max(0, (queued or 0) - waiting)]
    sent = []
    now = utcnow()
    for job_id, sent_at in due:
        seen = Job.sent_at.is_(None) if sent_at is None else Job.sent_at == sent_at
        if _changed(
            session,
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.queued, seen)
            .values(sent_at=now),
        ):
            sent.append(job_id)
    session.commit()
    return sent


def queue_positions(*, session: Session, jobs: list[Job]) -> dict[int, int]:
    """Place in line of each queued job among `jobs`: 1 for the next one its queue's workers
    claim (oldest queued_at first). One query; the database numbers the lines."""
    wanted = [job.id for job in jobs if job.status == JobStatus.queued]
    if not wanted:
        return {}
    line = _queue_line().subquery()
    found = session.execute(select(line.c.id, line.c.place).where(line.c.id.in_(wanted)))
    return {job_id: int(place) for job_id, place in found}


def _queue_line() -> Select[tuple[int, int]]:
    """Each queued job's id and place in its queue's line (1: claimed next)."""
    return select(
        Job.id,
        func.row_number()
        .over(partition_by=Job.queue, order_by=(Job.queued_at, Job.id))
        .label("place"),
    ).where(Job.status == JobStatus.queued)


def metric_series(
    *, session: Session, job_id: int, keys: list[str] | None = None, max_points: int = 1000
) -> list[MetricSeries]:
    """Each metric of a job over steps; long series are averaged down to max_points buckets."""
    check_exists(session=session, job_id=job_id)
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

"""Job routes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse

from backend import queue
from backend.deps import MAX_ID, Offset, RowId, SessionDep, SettingsDep
from backend.errors import NotFound
from backend.jobs import service
from backend.jobs.models import JobKind, JobStatus
from backend.jobs.schemas import JobPage, JobRead, MetricsRead
from backend.jobs.spec import JobSpec, accepted_values

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("", response_model=JobRead, status_code=201)
def submit_job(spec: JobSpec, session: SessionDep, settings: SettingsDep):
    """Queue a job; with "repeats": n, n replicates (seeds seed..seed+n-1) in one group: the
    first is returned with every member's id in group_job_ids (also GET /jobs?group=)."""
    jobs = service.create(session=session, spec=spec, roots=settings.data_roots)
    for job in jobs:
        try:
            queue.enqueue(job.id)
        except Exception as exc:
            for unsent in jobs[jobs.index(job) :]:
                service.fail(
                    session=session, job_id=unsent.id, reason=f"could not be queued: {exc}"
                )
            raise
    return JobRead.model_validate(jobs[0]).model_copy(
        update={"group_job_ids": [job.id for job in jobs]}
    )


@router.get("/options")
def job_options() -> dict[str, Any]:
    """Accepted values for each spec field, for forms."""
    return accepted_values()


@router.get("", response_model=JobPage)
def list_jobs(
    session: SessionDep,
    status: JobStatus | None = None,
    kind: JobKind | None = None,
    dataset_id: Annotated[int | None, Query(alias="dataset", ge=1, le=MAX_ID)] = None,
    group_id: Annotated[int | None, Query(alias="group", ge=1, le=MAX_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
):
    items, total = service.list_jobs(
        session=session,
        status=status,
        kind=kind,
        dataset_id=dataset_id,
        group_id=group_id,
        limit=limit,
        offset=offset,
    )
    return JobPage(items=[JobRead.model_validate(j) for j in items], total=total)


@router.get("/{job_id}", response_model=JobRead)
def get_job(job_id: RowId, session: SessionDep):
    return service.get(session=session, job_id=job_id)


@router.post("/{job_id}/cancel", response_model=JobRead)
def cancel_job(job_id: RowId, session: SessionDep):
    return service.cancel(session=session, job_id=job_id)


@router.get("/{job_id}/metrics", response_model=MetricsRead)
def get_metrics(
    job_id: RowId,
    session: SessionDep,
    key: Annotated[list[str] | None, Query()] = None,
    max_points: Annotated[int, Query(ge=10, le=100_000)] = 1000,
):
    series = service.metric_series(session=session, job_id=job_id, keys=key, max_points=max_points)
    return MetricsRead(job_id=job_id, series=series)


@router.get("/{job_id}/config", response_class=PlainTextResponse)
def get_config(job_id: RowId, session: SessionDep):
    job = service.get(session=session, job_id=job_id)
    if not job.config_text:
        raise NotFound(
            f"job {job_id} has no generated config yet; it is written when a worker starts the job"
        )
    return PlainTextResponse(job.config_text, media_type="text/x-python")

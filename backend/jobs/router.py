"""Job routes."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse

from backend.audit.service import record_request
from backend.deps import MAX_ID, Offset, RowId, SessionDep, SettingsDep
from backend.errors import Invalid, NotFound, error_responses
from backend.jobs import service
from backend.jobs.dispatch import send
from backend.jobs.estimate import estimate
from backend.jobs.models import Job, JobKind, JobStatus
from backend.jobs.quota import Quota
from backend.jobs.schemas import JobPage, JobRead, MetricsRead
from backend.jobs.spec import JobSpec, accepted_values
from backend.users import service as user_service
from backend.users.access import AdminDep, Caller, MemberDep, ViewerDep, check_owner

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=error_responses(401, 422, 503))
log = logging.getLogger(__name__)


@router.post(
    "", response_model=JobRead, status_code=201, responses=error_responses(400, 403, 413, 415, 429)
)
def submit_job(
    spec: JobSpec, request: Request, session: SessionDep, settings: SettingsDep, user: MemberDep
):
    """Queue a job; with "repeats": n, n replicates (seeds seed..seed+n-1) in one group: the
    first is returned with every member's id in group_job_ids (also GET /jobs?group=).

    The job is stored first: if the broker cannot take its message now, it stays queued and
    the workers' reconciler sends the message later."""
    jobs = service.create(
        session=session,
        spec=spec,
        roots=settings.data_roots,
        queue=settings.queue,
        artifact_root=settings.artifact_root,
        owner_id=user.id,
        quota=Quota.of(settings),
    )
    detail = {"kind": jobs[0].kind.value, "name": jobs[0].name, "jobs": [j.id for j in jobs]}
    record_request(
        request,
        session=session,
        user=user,
        action="job.submit",
        object_id=jobs[0].id,
        detail=detail,
    )
    send(session, [job.id for job in jobs])
    found = estimate(session, job=jobs[0])
    warnings = []
    if found is not None and found.seconds > settings.long_job_warning_s:
        warnings.append(
            f"this job is expected to run about {_duration(found.seconds)} on the workers of "
            f"queue {jobs[0].queue!r} (from the {found.based_on} {jobs[0].kind.value} job(s) "
            f"they finished); cancel it if you meant a smaller run, e.g. fewer "
            "iterations or epochs, a smaller batch or image size"
            + (f"; {len(jobs)} replicates take that each" if len(jobs) > 1 else "")
        )
    return _read(session, jobs[0]).model_copy(
        update={
            "group_job_ids": [job.id for job in jobs],
            "estimated_seconds": found.seconds if found else None,
            "warnings": warnings,
        }
    )


def _duration(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} hours"


def _read(session: SessionDep, job: Job) -> JobRead:
    return _read_all(session, [job])[0]


def _read_all(session: SessionDep, jobs: list[Job]) -> list[JobRead]:
    positions = service.queue_positions(session=session, jobs=jobs)
    return [
        JobRead.model_validate(job).model_copy(update={"queue_position": positions.get(job.id)})
        for job in jobs
    ]


@router.post(
    "/{job_id}/requeue", response_model=JobRead, responses=error_responses(403, 404, 409, 415)
)
def requeue_job(
    job_id: RowId, request: Request, session: SessionDep, settings: SettingsDep, user: AdminDep
):
    """Put a job back at the end of its queue: a queued job whose message was lost, a failed or
    cancelled one (it resumes from its last checkpoint), or a running one whose worker stopped
    beating more than DETLAB_HEARTBEAT_STALE_S ago. 409 for a live or a succeeded job."""
    job = service.requeue(session=session, job_id=job_id, stale_s=settings.heartbeat_stale_s)
    record_request(request, session=session, user=user, action="job.requeue", object_id=job.id)
    send(session, [job.id])
    return _read(session, job)


@router.post(
    "/{job_id}/rerun",
    response_model=JobRead,
    status_code=201,
    responses=error_responses(403, 404, 409, 415, 429),
)
def rerun_job(
    job_id: RowId, request: Request, session: SessionDep, settings: SettingsDep, user: MemberDep
):
    """Queue a job of yours (an admin: anyone's) again with the same spec and seed; GET
    /jobs/{new id}/reproduction then says whether its score falls inside the original's
    interval, and whether the config and the record are the same."""
    check_owner(
        user=user, owner=service.get(session=session, job_id=job_id).owner, what=f"job {job_id}"
    )
    job = service.rerun(
        session=session,
        job_id=job_id,
        roots=settings.data_roots,
        queue=settings.queue,
        artifact_root=settings.artifact_root,
        owner_id=user.id,
        quota=Quota.of(settings),
    )
    record_request(
        request,
        session=session,
        user=user,
        action="job.rerun",
        object_id=job.id,
        detail={"rerun_of": job_id},
    )
    send(session, [job.id])
    return _read(session, job)


@router.get("/options")
def job_options(_: ViewerDep) -> dict[str, Any]:
    """Accepted values for each spec field, for forms."""
    return accepted_values()


@router.get("", response_model=JobPage)
def list_jobs(
    session: SessionDep,
    user: ViewerDep,
    status: JobStatus | None = None,
    kind: JobKind | None = None,
    dataset_id: Annotated[int | None, Query(alias="dataset", ge=1, le=MAX_ID)] = None,
    group_id: Annotated[int | None, Query(alias="group", ge=1, le=MAX_ID)] = None,
    owner: Annotated[
        str | None, Query(max_length=100, description="'me', or a user's name")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
):
    items, total = service.list_jobs(
        session=session,
        status=status,
        kind=kind,
        dataset_id=dataset_id,
        group_id=group_id,
        owner_id=_owner_id(session, user, owner),
        limit=limit,
        offset=offset,
    )
    # the page's JSON made here, in the route's thread: FastAPI would dump the page again and
    # validate it once more in a thread of its own (the API's most requested answer)
    page = JobPage.model_validate({"items": items, "total": total})
    return Response(page.model_dump_json(), media_type="application/json")


def _owner_id(session: SessionDep, user: Caller, owner: str | None) -> int | None:
    if owner is None:
        return None
    if owner == "me":
        return user.id
    try:
        return user_service.get_user_by_name(session=session, name=owner).id
    except NotFound:
        raise Invalid(f"owner: no user named {owner!r}; give 'me' or a user's name") from None


@router.get("/{job_id}", response_model=JobRead, responses=error_responses(404))
def get_job(job_id: RowId, session: SessionDep, _: ViewerDep):
    return _read(session, service.get(session=session, job_id=job_id))


@router.post(
    "/{job_id}/cancel", response_model=JobRead, responses=error_responses(403, 404, 409, 415)
)
def cancel_job(job_id: RowId, request: Request, session: SessionDep, user: MemberDep):
    """Cancel a job of yours (an admin: anyone's): a queued one at once, a running one at its
    next iteration."""
    check_owner(
        user=user, owner=service.get(session=session, job_id=job_id).owner, what=f"job {job_id}"
    )
    job = service.cancel(session=session, job_id=job_id)
    record_request(request, session=session, user=user, action="job.cancel", object_id=job_id)
    return _read(session, job)


@router.get("/{job_id}/metrics", response_model=MetricsRead, responses=error_responses(404))
def get_metrics(
    job_id: RowId,
    session: SessionDep,
    _: ViewerDep,
    key: Annotated[list[str] | None, Query()] = None,
    max_points: Annotated[int, Query(ge=10, le=100_000)] = 1000,
):
    series = service.metric_series(session=session, job_id=job_id, keys=key, max_points=max_points)
    # dumped here, in the route's thread: FastAPI would validate the answer again in a thread
    # of its own (dashboards poll this for every run they show)
    answer = MetricsRead(job_id=job_id, series=series)
    return Response(answer.model_dump_json(), media_type="application/json")


@router.get(
    "/{job_id}/config",
    response_class=Response,
    responses={
        200: {
            "content": {"text/x-python": {"schema": {"type": "string"}}},
            "description": "The mmdet config the worker generated, a Python file",
        },
        **error_responses(404),
    },
)
def get_config(job_id: RowId, session: SessionDep, _: ViewerDep):
    job = service.get(session=session, job_id=job_id)
    if not job.config_text:
        raise NotFound(
            f"job {job_id} has no generated config yet; it is written when a worker starts the job"
        )
    return PlainTextResponse(job.config_text, media_type="text/x-python")

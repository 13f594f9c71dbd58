"""Experiment routes: a grid of jobs as one request, its result matrix and its report."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse

from backend.analysis.tables import METRIC_KEYS
from backend.audit.service import record_request
from backend.deps import Offset, RowId, SessionDep, SettingsDep
from backend.errors import error_responses
from backend.experiments import report, service, templates
from backend.experiments.models import Experiment
from backend.experiments.schemas import (
    ExperimentCreate,
    ExperimentDetail,
    ExperimentPage,
    ExperimentRead,
    Template,
)
from backend.jobs.dispatch import send
from backend.jobs.quota import Quota
from backend.users.access import MemberDep, ViewerDep, check_owner

router = APIRouter(
    prefix="/experiments", tags=["experiments"], responses=error_responses(401, 422, 503)
)
Metric = Annotated[str, Query(description=f"one of {', '.join(METRIC_KEYS)}")]
Axis = Annotated[str | None, Query(max_length=100, description="an axis of the experiment")]


def _read(session: SessionDep, experiment: Experiment) -> ExperimentRead:
    counts = service.status_counts(session, [experiment.id])[experiment.id]
    return ExperimentRead.model_validate(experiment).model_copy(
        update={"status_counts": counts, "jobs": sum(counts.values())}
    )


@router.get("/templates", response_model=list[Template])
def list_templates(session: SessionDep, _: ViewerDep):
    """Studies to start from (init, backbone, low-data): each fills the form with a base spec
    and axes; add a dataset_id and POST it to /experiments."""
    return templates.templates(session=session)


@router.post(
    "",
    response_model=ExperimentDetail,
    status_code=201,
    responses=error_responses(400, 403, 413, 415, 429),
)
def submit_experiment(
    experiment_in: ExperimentCreate,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: MemberDep,
):
    """Queue a grid: every combination of the axes' values is a cell, the base spec with those
    values (and `repeats` seeds for fine-tunes). Every cell is checked first: one refused cell
    queues nothing (422 listing each refused cell)."""
    experiment, jobs = service.create(
        session=session,
        experiment_in=experiment_in,
        roots=settings.data_roots,
        queue=settings.queue,
        artifact_root=settings.artifact_root,
        owner_id=user.id,
        quota=Quota.of(settings),
        max_jobs=settings.max_jobs_per_experiment,
    )
    record_request(
        request,
        session=session,
        user=user,
        action="experiment.submit",
        object_id=experiment.id,
        detail={"name": experiment.name, "jobs": len(jobs), "axes": list(experiment.grid)},
    )
    send(session, [job.id for job in jobs])
    return _detail(session, experiment, metric="bbox_mAP", rows=None, cols=None)


def _detail(
    session: SessionDep, experiment: Experiment, *, metric: str, rows: str | None, cols: str | None
) -> ExperimentDetail:
    cells = service.cells(session=session, experiment=experiment, metric=metric)
    matrix = service.matrix(experiment=experiment, metric=metric, rows=rows, cols=cols)
    return ExperimentDetail(**_read(session, experiment).model_dump(), cells=cells, matrix=matrix)


@router.get("", response_model=ExperimentPage)
def list_experiments(
    session: SessionDep,
    _: ViewerDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
):
    items, total = service.list_experiments(session=session, limit=limit, offset=offset)
    counts = service.status_counts(session, [e.id for e in items])
    return ExperimentPage(
        items=[
            ExperimentRead.model_validate(e).model_copy(
                update={"status_counts": counts[e.id], "jobs": sum(counts[e.id].values())}
            )
            for e in items
        ],
        total=total,
    )


@router.get("/{experiment_id}", response_model=ExperimentDetail, responses=error_responses(404))
def get_experiment(
    experiment_id: RowId,
    session: SessionDep,
    _: ViewerDep,
    metric: Metric = "bbox_mAP",
    rows: Axis = None,
    cols: Axis = None,
):
    """Progress (jobs by status) and the result matrix: each cell's mean of `metric`, its 95%
    interval and n, laid out by `rows` and `cols` (two axes; default the first two)."""
    experiment = service.get(session=session, experiment_id=experiment_id)
    return _detail(session, experiment, metric=metric, rows=rows, cols=cols)


@router.post(
    "/{experiment_id}/cancel",
    response_model=ExperimentRead,
    responses=error_responses(403, 404, 409, 415),
)
def cancel_experiment(experiment_id: RowId, request: Request, session: SessionDep, user: MemberDep):
    """Cancel every queued or running job of an experiment of yours (an admin: anyone's);
    finished runs stay."""
    experiment = service.get(session=session, experiment_id=experiment_id)
    check_owner(user=user, owner=experiment.owner, what=f"experiment {experiment_id}")
    cancelled = service.cancel(session=session, experiment_id=experiment_id)
    record_request(
        request,
        session=session,
        user=user,
        action="experiment.cancel",
        object_id=experiment_id,
        detail={"jobs": cancelled},
    )
    return _read(session, experiment)


@router.get(
    "/{experiment_id}/report",
    response_class=Response,
    responses={
        200: {
            "content": {
                "text/markdown": {"schema": {"type": "string"}},
                "text/csv": {"schema": {"type": "string"}},
            },
            "description": "The experiment's table: every cell with n, mean and interval",
        },
        **error_responses(404),
    },
)
def experiment_report(
    experiment_id: RowId,
    session: SessionDep,
    _: ViewerDep,
    format: Literal["md", "csv"] = "md",
    metric: Metric = "bbox_mAP",
    rows: Axis = None,
    cols: Axis = None,
):
    """The table to paste into a paper or a lab note: Markdown (cells, the matrix and the
    reproducibility record's summary) or CSV (one row per cell)."""
    experiment = service.get(session=session, experiment_id=experiment_id)
    cells = service.cells(session=session, experiment=experiment, metric=metric)
    name = f"experiment{experiment_id}"
    if format == "csv":
        return PlainTextResponse(
            report.csv_report(experiment, cells, metric),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
        )
    matrix = service.matrix(experiment=experiment, metric=metric, rows=rows, cols=cols)
    records = service.records(session=session, experiment_id=experiment_id)
    return PlainTextResponse(
        report.markdown_report(experiment, cells, matrix, records),
        media_type="text/markdown",
        headers={"Content-Disposition": f'attachment; filename="{name}.md"'},
    )

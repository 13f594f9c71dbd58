"""Experiments: a grid of specs checked as a whole, queued as one group, read as a matrix."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.analysis.replicates import summarize_group
from backend.analysis.tables import DEFAULTS, METRIC_KEYS
from backend.db import utcnow
from backend.errors import Conflict, Invalid, NotFound
from backend.evaluations.models import Evaluation
from backend.experiments.models import Experiment
from backend.experiments.schemas import Cell, ExperimentCreate, Matrix
from backend.jobs import quota as job_quota
from backend.jobs import records as job_records
from backend.jobs import service as job_service
from backend.jobs.models import FINISHED_STATUSES, Job, JobStatus
from backend.jobs.quota import Quota
from backend.jobs.spec import FinetuneSpec, JobSpec, PretrainSpec

__all__ = [
    "cancel",
    "cell_label",
    "cells",
    "create",
    "get",
    "list_experiments",
    "matrix",
    "records",
    "status_counts",
]

SPEC = TypeAdapter(JobSpec)
KIND_SPECS: dict[str, type[FinetuneSpec] | type[PretrainSpec]] = {
    "finetune": FinetuneSpec,
    "pretrain": PretrainSpec,
}
# fields that are not axes: what names a job, and what repeats sets (seeds)
NOT_AXES = {"kind", "name", "repeats", "seed"}
MAX_VALUES_PER_AXIS = 50


def _key(value: Any) -> str:
    """A value as a comparable text (an init may be an object)."""
    return json.dumps(value, sort_keys=True)


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k} {v}" for k, v in value.items())
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    return str(value)


def cell_label(values: dict[str, Any]) -> str:
    """`init=imagenet, data_fraction=0.1`: how a cell is named in job names and reports."""
    return ", ".join(f"{axis}={_short(value)}" for axis, value in values.items())


def _check_axes(kind: str, base: dict[str, Any], axes: dict[str, list[Any]]) -> None:
    fields = set(KIND_SPECS[kind].model_fields) - NOT_AXES
    problems = []
    for axis, values in axes.items():
        if axis not in fields:
            problems.append(
                f"axis {axis!r} is not a field a {kind} experiment can vary; accepted: "
                f"{', '.join(sorted(fields))}"
            )
        elif not values or len(values) > MAX_VALUES_PER_AXIS:
            problems.append(f"axis {axis!r} needs 1 to {MAX_VALUES_PER_AXIS} values")
        elif len({_key(v) for v in values}) != len(values):
            problems.append(f"axis {axis!r} lists a value twice")
        elif axis in base:
            problems.append(f"{axis!r} is both in base and an axis; leave it out of base")
    if problems:
        raise Invalid("the experiment's axes are not accepted", problems=problems)


def create(
    *,
    session: Session,
    experiment_in: ExperimentCreate,
    roots: list[Path],
    queue: str,
    artifact_root: Path | None,
    owner_id: int | None,
    quota: Quota | None,
    max_jobs: int,
) -> tuple[Experiment, list[Job]]:
    """Check every cell's spec, then queue them all (nothing is queued when any is refused):
    one job per cell, or a replicate group per cell with repeats."""
    base = dict(experiment_in.base)
    kind = str(base.get("kind", "finetune"))
    if kind not in KIND_SPECS:
        raise Invalid(
            f"base.kind {kind!r} is not accepted; an experiment varies 'finetune' or "
            "'pretrain' jobs"
        )
    if experiment_in.repeats > 1 and kind != "finetune":
        raise Invalid("repeats: only fine-tune experiments have seeds per cell; give 1")
    axes = experiment_in.axes
    _check_axes(kind, base, axes)
    grid = [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]
    total = len(grid) * experiment_in.repeats
    if total > max_jobs:
        raise Invalid(
            f"this experiment makes {total} jobs ({len(grid)} cells x {experiment_in.repeats} "
            f"repeats), over the limit of {max_jobs} per experiment "
            "(DETLAB_MAX_JOBS_PER_EXPERIMENT); give fewer values or repeats"
        )
    prepared: list[list[Job]] = []
    problems: list[dict[str, Any]] = []
    for values in grid:
        spec_in = {**base, **values, "name": f"{experiment_in.name} [{cell_label(values)}]"}
        if kind == "finetune":
            spec_in["repeats"] = experiment_in.repeats
        try:
            spec = SPEC.validate_python(spec_in)
            prepared.append(
                job_service.prepare(
                    session=session,
                    spec=spec,
                    roots=roots,
                    queue=queue,
                    artifact_root=artifact_root,
                    owner_id=owner_id,
                    quota=quota,
                )
            )
        except ValidationError as exc:
            reasons = [
                f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: "
                f"{str(e['msg']).removeprefix('Value error, ')}"
                for e in exc.errors()
            ]
            problems.append({"cell": values, "problem": "; ".join(reasons)})
        except Invalid as exc:
            problems.append({"cell": values, "problem": exc.message})
    if problems:
        raise Invalid(
            f"{len(problems)} of {len(grid)} cells are refused; nothing was queued",
            problems=problems,
        )
    if quota is not None and owner_id is not None:
        job_quota.check_active(session=session, owner_id=owner_id, new_jobs=total, quota=quota)
    # the values as the jobs' specs hold them (a checkpoint path resolved, a number as JSON
    # has it), so that each job finds its cell again
    stored_axes: dict[str, list[Any]] = {}
    for axis, given in axes.items():
        firsts = [next(i for i, cell in enumerate(grid) if cell[axis] is v) for v in given]
        stored_axes[axis] = [prepared[i][0].spec[axis] for i in firsts]
        if len({_key(v) for v in stored_axes[axis]}) != len(given):
            raise Invalid(f"axis {axis!r} lists one value twice under two spellings")
    experiment = Experiment(
        name=experiment_in.name,
        kind=kind,
        base_spec=base,
        axes=[[axis, values] for axis, values in stored_axes.items()],
        repeats=experiment_in.repeats,
        template=experiment_in.template,
        owner_id=owner_id,
    )
    session.add(experiment)
    session.flush()
    job_service.add_queued(session=session, groups=prepared, experiment_id=experiment.id)
    session.commit()
    return experiment, [job for jobs in prepared for job in jobs]


def get(*, session: Session, experiment_id: int) -> Experiment:
    experiment = session.get(Experiment, experiment_id)
    if experiment is None:
        raise NotFound(f"experiment {experiment_id} not found; see GET /experiments")
    return experiment


def status_counts(session: Session, experiment_ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """Jobs by status, per experiment."""
    counts: dict[int, dict[str, int]] = {i: {} for i in experiment_ids}
    rows = session.execute(
        select(Job.experiment_id, Job.status, func.count())
        .where(Job.experiment_id.in_(list(counts)))
        .group_by(Job.experiment_id, Job.status)
    )
    for experiment_id, status, count in rows:
        counts[experiment_id][status.value] = count
    return counts


def list_experiments(*, session: Session, limit: int, offset: int) -> tuple[list[Experiment], int]:
    """One page of experiments, newest first, and how many there are."""
    total = session.scalar(select(func.count(Experiment.id))) or 0
    items = session.scalars(
        select(Experiment).order_by(Experiment.id.desc()).limit(limit).offset(offset)
    ).all()
    return list(items), total


def cancel(*, session: Session, experiment_id: int) -> list[int]:
    """Cancel the experiment's queued and running jobs; the ids cancelled."""
    experiment = get(session=session, experiment_id=experiment_id)
    if experiment.cancelled_at is not None:
        raise Conflict(f"experiment {experiment_id} was cancelled already")
    open_jobs = session.scalars(
        select(Job.id).where(
            Job.experiment_id == experiment_id, Job.status.not_in(FINISHED_STATUSES)
        )
    ).all()
    for job_id in open_jobs:
        job_service.cancel(session=session, job_id=job_id)
    experiment.cancelled_at = utcnow()
    session.commit()
    return list(open_jobs)


def records(*, session: Session, experiment_id: int) -> list[dict[str, Any] | None]:
    """The reproducibility records of the experiment's jobs."""
    return list(session.scalars(select(Job.record).where(Job.experiment_id == experiment_id)))


def _value(evaluation: Evaluation, metric: str) -> float | None:
    """The run's figure; COCO's -1 (no objects of that size in the val split) is no figure."""
    value = getattr(evaluation, metric)
    return None if value is None or value < 0 else float(value)


def _interval(evaluation: Evaluation, metric: str) -> tuple[float, float] | None:
    entry = ((evaluation.intervals or {}).get("metrics") or {}).get(metric) or {}
    low, high = entry.get("low"), entry.get("high")
    return None if low is None or high is None else (low, high)


def cells(*, session: Session, experiment: Experiment, metric: str) -> list[Cell]:
    """Every cell of the grid, in grid order, with its jobs and the metric over its runs."""
    if metric not in METRIC_KEYS:
        raise Invalid(f"metric {metric!r} is not accepted; accepted: {', '.join(METRIC_KEYS)}")
    found = session.execute(
        select(Job, Evaluation)
        .outerjoin(Evaluation, Evaluation.job_id == Job.id)
        .where(Job.experiment_id == experiment.id)
        .order_by(Job.id)
    ).all()
    differs = job_records.differences([job.record for job, _ in found])
    by_cell: dict[str, list[tuple[Job, Evaluation | None, list[str]]]] = {}
    for (job, evaluation), fields in zip(found, differs, strict=True):
        values = {axis: job.spec.get(axis) for axis in experiment.grid}
        by_cell.setdefault(_key(values), []).append((job, evaluation, fields))
    result = []
    axes = experiment.grid
    for combo in itertools.product(*axes.values()):
        values = dict(zip(axes, combo, strict=True))
        members = by_cell.get(_key(values), [])
        scored = [
            (job, ev)
            for job, ev, _ in members
            if ev is not None and job.status == JobStatus.succeeded
        ]
        summary = summarize_group(
            [_value(ev, metric) for _, ev in scored],
            [_interval(ev, metric) for _, ev in scored],
            level=DEFAULTS.level,
        )
        low, high, over = summary.low, summary.high, "seeds" if summary.n >= 2 else None
        if summary.n == 1:
            (only,) = (ev for _, ev in scored if _value(ev, metric) is not None)
            single = _interval(only, metric)
            low, high = single if single else (None, None)
            over = "val images" if single else None
        result.append(
            Cell(
                values=values,
                label=cell_label(values),
                job_ids=[job.id for job, _, _ in members],
                group_id=members[0][0].group_id if members else None,
                status_counts=dict(Counter(job.status.value for job, _, _ in members)),
                n=summary.n,
                mean=summary.mean,
                low=low,
                high=high,
                std=summary.std,
                interval=over,
                record_differs=sorted({f for _, _, fields in members for f in fields}),
            )
        )
    return result


def matrix(*, experiment: Experiment, metric: str, rows: str | None, cols: str | None) -> Matrix:
    """The cells' layout: rows by one axis, columns by another (defaults: the first two), one
    slice per combination of the other axes."""
    names = list(experiment.grid)
    for given, what in ((rows, "rows"), (cols, "cols")):
        if given is not None and given not in names:
            raise Invalid(
                f"{what}: {given!r} is not an axis of this experiment; axes: {', '.join(names)}"
            )
    rows = rows or names[0]
    cols = cols or next((n for n in names if n != rows), None)
    if cols == rows:
        raise Invalid("rows and cols must be two different axes")
    others = [n for n in names if n not in (rows, cols)]
    index = {
        _key(dict(zip(names, combo, strict=True))): i
        for i, combo in enumerate(itertools.product(*experiment.grid.values()))
    }
    row_values = experiment.grid[rows]
    col_values = experiment.grid[cols] if cols else [None]
    slices = []
    for fixed_combo in itertools.product(*(experiment.grid[o] for o in others)):
        fixed = dict(zip(others, fixed_combo, strict=True))
        table = []
        for row_value in row_values:
            line = []
            for col_value in col_values:
                values = {**fixed, rows: row_value}
                if cols:
                    values[cols] = col_value
                ordered = {n: values[n] for n in names}
                line.append(index.get(_key(ordered)))
            table.append(line)
        slices.append({"fixed": fixed, "cells": table})
    return Matrix(
        metric=metric,
        rows=rows,
        cols=cols,
        row_values=row_values,
        col_values=col_values if cols else [],
        slices=slices,
    )

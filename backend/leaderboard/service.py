"""The leaderboard: one row per succeeded fine-tune job with its spec's axes and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer

from backend.errors import Invalid
from backend.evaluations.models import Evaluation
from backend.jobs.models import Job, JobKind, JobStatus
from backend.leaderboard.schemas import METRICS, LeaderboardRow
from backend.weights.models import Weights

__all__ = ["rows", "init_label", "AXES"]

AXES = ("detector", "backbone", "neck", "init")


def init_label(init: Any, weights: Weights | None = None) -> str:
    """A short name for a spec's backbone init, as the leaderboard shows and filters it."""
    if isinstance(init, str):
        return init
    if "weights_id" in init:
        if weights is None:
            return f"weights:{init['weights_id']}"
        return f"weights:{weights.name} ({weights.method})"
    return f"checkpoint:{Path(init['checkpoint']).name}"


def rows(
    *,
    session: Session,
    dataset_id: int | None,
    metric: str = "bbox_mAP",
    descending: bool = True,
    filters: dict[str, str] | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[LeaderboardRow], int]:
    """Finished fine-tune jobs sorted by a metric, filtered on spec axes."""
    if metric not in METRICS:
        raise Invalid(f"metric {metric!r} is not accepted; use one of {', '.join(METRICS)}")
    unknown = sorted(set(filters or {}) - set(AXES))
    if unknown:
        raise Invalid(f"cannot filter on {', '.join(unknown)}; filters: {', '.join(AXES)}")
    column = getattr(Evaluation, metric)
    query = (
        select(Job, Evaluation, Weights)
        .options(defer(Job.config_text), defer(Evaluation.analysis))
        .join(Evaluation, Evaluation.job_id == Job.id)
        .outerjoin(Weights, Weights.id == Job.weights_id)
        .where(Job.kind == JobKind.finetune, Job.status == JobStatus.succeeded)
    )
    if dataset_id is not None:
        query = query.where(Job.dataset_id == dataset_id)
    for axis, value in (filters or {}).items():
        if axis != "init":  # init is matched on its label below
            query = query.where(Job.spec[axis].as_string() == value)
    order = column.desc().nulls_last() if descending else column.asc().nulls_last()
    query = query.order_by(order, Job.id)
    init_filter = (filters or {}).get("init")
    if init_filter is None:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        found = session.execute(query.limit(limit).offset(offset)).all()
    else:
        matching = [
            r
            for r in session.execute(query).all()
            if _matches_init(r[0].spec["init"], r[2], init_filter)
        ]
        total, found = len(matching), matching[offset : offset + limit]
    return [_row(job, evaluation, weights) for job, evaluation, weights in found], total


def _matches_init(init: Any, weights: Weights | None, wanted: str) -> bool:
    label = init_label(init, weights)
    return (
        label == wanted
        or label.startswith(wanted + ":")
        or (weights is not None and wanted in (weights.name, weights.method))
    )


def _row(job: Job, evaluation: Evaluation, weights: Weights | None) -> LeaderboardRow:
    spec = job.spec
    return LeaderboardRow(
        job_id=job.id,
        name=job.name,
        dataset_id=job.dataset_id or 0,
        detector=spec["detector"],
        backbone=spec["backbone"],
        neck=spec["neck"],
        init=init_label(spec["init"], weights),
        norm=spec.get("norm"),
        image_scale=list(spec["image_scale"]),
        epochs=spec.get("epochs"),
        iterations=spec.get("iterations"),
        batch_size=spec["batch_size"],
        lr=spec["lr"],
        seed=spec["seed"],
        data_fraction=spec["data_fraction"],
        amp=spec["amp"],
        finished_at=job.finished_at,
        **{metric: getattr(evaluation, metric) for metric in METRICS},
    )

"""The leaderboard: one row per succeeded fine-tune job with its spec's axes and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session, aliased

from backend.analysis.replicates import summarize_group
from backend.analysis.tables import METRIC_KEYS
from backend.errors import Invalid
from backend.evaluations import significance_service
from backend.evaluations.models import Evaluation
from backend.jobs import records
from backend.jobs.models import Job, JobKind, JobStatus
from backend.weights.models import Weights

__all__ = ["AXES", "MAX_TESTED_ROWS", "init_label", "mark_ties_with_leader", "rows"]

AXES = ("detector", "backbone", "neck", "init")
# a paired test costs about a second per row at 5,000 val images (more on larger splits)
MAX_TESTED_ROWS = 50


def init_label(init: Any, weights_name: str | None = None, method: str | None = None) -> str:
    """A short name for a spec's backbone init, as the leaderboard shows and filters it;
    ``weights_name``/``method`` are those of the registered weights a ``weights_id`` names
    (the method in brackets unless the name says it, as a pretrain job's weights' names do:
    "weights:mocov2-resnet18-job3", "weights:moco-800ep (mocov2)")."""
    if isinstance(init, str):
        return init
    if "weights_id" in init:
        if weights_name is None:
            return f"weights:{init['weights_id']}"
        if method is None or method.lower() in weights_name.lower():
            return f"weights:{weights_name}"
        return f"weights:{weights_name} ({method})"
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
    grouped: bool = False,
) -> tuple[list[dict[str, Any]], int]:
    """Finished fine-tune jobs sorted by a metric, filtered on spec axes; ``grouped``: one row
    per replicate group (mean over its runs, see ``_group_rows``).

    Rows are plain dicts in the shape of ``LeaderboardRow`` (the route validates them once):
    only the columns the table shows are read, no ORM objects are built, since a dashboard
    asks for up to 10,000 rows at a time. Each row's ``record_differs`` compares its runs'
    reproducibility records with those of the other rows returned of the same dataset."""
    if metric not in METRIC_KEYS:
        raise Invalid(f"metric {metric!r} is not accepted; use one of {', '.join(METRIC_KEYS)}")
    unknown = sorted(set(filters or {}) - set(AXES))
    if unknown:
        raise Invalid(f"cannot filter on {', '.join(unknown)}; filters: {', '.join(AXES)}")
    column = getattr(Evaluation, metric)
    query = (
        select(
            Job.id,
            Job.name,
            Job.dataset_id,
            Job.spec,
            Job.finished_at,
            Job.group_id,
            Job.record,
            *(getattr(Evaluation, m) for m in METRIC_KEYS),
            Evaluation.intervals["metrics"].label("metric_intervals"),
            Weights.name.label("weights_name"),
            Weights.method.label("weights_method"),
            SOURCE.spec.label("source_spec"),
        )
        .join(Evaluation, Evaluation.job_id == Job.id)
        .outerjoin(Weights, Weights.id == Job.weights_id)
        # an evaluate job of a DetLab run scores that run's model: its architecture is the run's
        .outerjoin(SOURCE, (SOURCE.id == Job.parent_id) & (Job.kind == JobKind.evaluate))
        .where(Job.kind.in_(RANKED_KINDS), Job.status == JobStatus.succeeded)
    )
    if dataset_id is not None:
        query = query.where(Job.dataset_id == dataset_id)
    for axis, value in (filters or {}).items():
        if axis != "init":  # init is matched on its label below
            query = query.where(Job.spec[axis].as_string() == value)
    order = column.desc().nulls_last() if descending else column.asc().nulls_last()
    query = query.order_by(order, Job.id)
    init_filter = (filters or {}).get("init")
    if grouped:
        every = session.execute(query).all()
        if init_filter is not None:
            every = [r for r in every if _matches_init(r, init_filter)]
        ranked = _group_rows([_row(r, metric) for r in every], metric, descending)
        return _mark_records(ranked[offset : offset + limit]), len(ranked)
    if init_filter is None:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        found = session.execute(query.limit(limit).offset(offset)).all()
    else:
        matching = [r for r in session.execute(query).all() if _matches_init(r, init_filter)]
        total, found = len(matching), matching[offset : offset + limit]
    return _mark_records([_row(r, metric) for r in found]), total


def _init(row: Row[Any]) -> str:
    """How the model began: an init for runs trained here; imported or evaluated otherwise."""
    if row.spec.get("kind") == JobKind.imported.value:
        return "imported"
    if row.spec.get("kind") == JobKind.evaluate.value:
        return "evaluated"
    return init_label(row.spec["init"], row.weights_name, row.weights_method)


def _matches_init(row: Row[Any], wanted: str) -> bool:
    label = _init(row)
    return (
        label == wanted
        or label.startswith(wanted + ":")
        or wanted in (row.weights_name, row.weights_method)
    )


# the kinds that are scored on a val split and ranked: trained here, a checkpoint scored, or
# predictions imported
RANKED_KINDS = (JobKind.finetune, JobKind.evaluate, JobKind.imported)
SOURCE = aliased(Job)  # the run an evaluate job scores again
ARCHITECTURE = ("detector", "backbone", "neck", "norm")
SPEC_COLUMNS = (
    "detector",
    "backbone",
    "neck",
    "norm",
    "epochs",
    "iterations",
    "batch_size",
    "lr",
    "seed",
    "data_fraction",
    "amp",
)


def _row(row: Row[Any], metric: str) -> dict[str, Any]:
    spec = row.spec
    intervals = {
        key: {"low": entry["low"], "high": entry["high"]}
        for key, entry in (row.metric_intervals or {}).items()
        if entry and entry.get("low") is not None and entry.get("high") is not None
    }
    chosen = intervals.get(metric)
    scale = spec.get("image_scale")
    return {
        "job_id": row.id,
        "name": row.name,
        "dataset_id": row.dataset_id or 0,
        "kind": spec.get("kind", JobKind.finetune.value),
        "source": spec.get("source"),
        # an imported run's training is unknown: these are null for it
        **{field: spec.get(field) for field in SPEC_COLUMNS},
        **{field: (row.source_spec or {}).get(field) for field in ARCHITECTURE if row.source_spec},
        "init": _init(row),
        "image_scale": list(scale) if scale else None,
        "finished_at": row.finished_at,
        "group_id": row.group_id,
        **{key: getattr(row, key) for key in METRIC_KEYS},
        "interval": {"metric": metric, **chosen} if chosen else None,
        "intervals": intervals,
        # the records of the row's runs, compared by _mark_records, which drops them
        "records": [row.record],
    }


def _mark_records(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set each row's ``record_differs``: the record fields in which its runs (a group's, or
    the one run) differ from the rest of the runs of the same dataset among ``items``."""
    by_dataset: dict[int, list[dict[str, Any]]] = {}
    for item in items:
        by_dataset.setdefault(item["dataset_id"], []).append(item)
    for rows in by_dataset.values():
        found = iter(records.differences([r for row in rows for r in row["records"]]))
        for row in rows:
            fields = {field for _ in row["records"] for field in next(found)}
            row["record_differs"] = [f for f in records.COMPARED if f in fields]
    for item in items:
        del item["records"]
    return items


def _group_rows(items: list[dict[str, Any]], metric: str, descending: bool) -> list[dict[str, Any]]:
    """One row per replicate group (a job outside any group is its own): the metrics are the
    means over its runs; ``replicates`` gives n, mean, std, the 95% t-interval over seeds and
    the seed's share of a single run's variance; ``interval`` is that t-interval (n >= 2) or
    the lone run's bootstrap interval."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for item in items:
        groups.setdefault(item["group_id"] or item["job_id"], []).append(item)
    rows = []
    for members in groups.values():
        members.sort(key=lambda item: item["job_id"])
        summaries = {
            key: summarize_group(
                [m[key] for m in members],
                [
                    (m["intervals"][key]["low"], m["intervals"][key]["high"])
                    if key in m["intervals"]
                    else None
                    for m in members
                ],
            )
            for key in METRIC_KEYS
        }
        row = dict(members[0])
        row["records"] = [record for m in members for record in m["records"]]
        for key, summary in summaries.items():
            row[key] = summary.mean
            if summary.n >= 2 and summary.low is not None and summary.high is not None:
                row["intervals"] = {
                    **row["intervals"],
                    key: {"low": summary.low, "high": summary.high},
                }
        if metric in row["intervals"]:
            row["interval"] = {"metric": metric, **row["intervals"][metric]}
        found = summaries[metric]
        row["replicates"] = {
            "n": found.n,
            "mean": found.mean,
            "std": found.std,
            "seed_share": found.seed_share,
            "job_ids": [m["job_id"] for m in members],
            "seeds": [m["seed"] for m in members],
        }
        rows.append(row)
    rows.sort(key=lambda row: row["job_id"])
    scored = [row for row in rows if row[metric] is not None]
    scored.sort(key=lambda row: row[metric], reverse=descending)
    return scored + [row for row in rows if row[metric] is None]


def mark_ties_with_leader(
    *,
    session: Session,
    dataset_id: int | None,
    metric: str,
    descending: bool,
    filters: dict[str, str] | None,
    items: list[dict[str, Any]],
) -> None:
    """Add ``vs_leader`` to each row: a paired bootstrap test of it against the top row of
    the whole ranking on ``metric``, Holm-corrected over the rows given."""
    if dataset_id is None:
        raise Invalid(
            "significance needs a dataset: rows are tested against the leader on the same "
            "val images; add dataset=<id>"
        )
    if len(items) > MAX_TESTED_ROWS:
        raise Invalid(
            f"significance tests at most {MAX_TESTED_ROWS} rows at a time; got {len(items)}, "
            f"lower limit to {MAX_TESTED_ROWS} or less"
        )
    top, _ = rows(
        session=session,
        dataset_id=dataset_id,
        metric=metric,
        descending=descending,
        filters=filters,
        limit=1,
    )
    if not top:
        return
    leader = top[0]["job_id"]
    others = [row["job_id"] for row in items if row["job_id"] != leader]
    tests = significance_service.versus_leader(
        session=session, leader=leader, others=others, metric=metric
    )
    for row in items:
        if row["job_id"] == leader:
            row["vs_leader"] = {"leader": True}
        else:
            row["vs_leader"] = {"leader": False, "job_id": leader, **tests[row["job_id"]]}

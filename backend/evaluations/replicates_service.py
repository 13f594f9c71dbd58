"""Replicate groups as users read them: every run's figures, their mean, spread and interval
over seeds, the split between seed and val-image variance, and group-to-group comparisons."""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.analysis.replicates import compare_groups, summarize_group
from backend.analysis.tables import DEFAULTS, METRIC_KEYS, is_mask_metric
from backend.errors import Conflict, Invalid, NotFound
from backend.evaluations import significance_service
from backend.evaluations.models import Evaluation
from backend.jobs.models import Job, JobStatus

__all__ = ["compare", "summary"]


def _members(session: Session, group_id: int) -> list[tuple[Job, Evaluation | None]]:
    found = session.execute(
        select(Job, Evaluation)
        .outerjoin(Evaluation, Evaluation.job_id == Job.id)
        .where(Job.group_id == group_id)
        .order_by(Job.id)
    ).all()
    if not found:
        raise NotFound(
            f"replicate group {group_id} not found; a group is made by submitting a fine-tune "
            'spec with "repeats": n, and is named by its first job\'s id'
        )
    return [(job, evaluation) for job, evaluation in found]


def _interval(evaluation: Evaluation, key: str) -> tuple[float, float] | None:
    entry = ((evaluation.intervals or {}).get("metrics") or {}).get(key) or {}
    low, high = entry.get("low"), entry.get("high")
    return None if low is None or high is None else (low, high)


def summary(*, session: Session, group_id: int) -> dict[str, Any]:
    """The runs of a group and, per metric over its scored runs: n, mean, std between seeds,
    a 95% t-interval of the mean, the val-image standard error and the seed's share."""
    members = _members(session, group_id)
    scored = [
        (job, evaluation)
        for job, evaluation in members
        if evaluation is not None and job.status == JobStatus.succeeded
    ]
    metrics = {
        key: dataclasses.asdict(
            summarize_group(
                [getattr(evaluation, key) for _, evaluation in scored],
                [_interval(evaluation, key) for _, evaluation in scored],
                level=DEFAULTS.level,
            )
        )
        for key in METRIC_KEYS
    }
    spec = {k: v for k, v in members[0][0].spec.items() if k != "seed"}
    return {
        "group_id": group_id,
        "spec": spec,
        "runs": [
            {
                "job_id": job.id,
                "seed": job.spec.get("seed"),
                "status": job.status.value,
                **{key: getattr(evaluation, key) if evaluation else None for key in METRIC_KEYS},
            }
            for job, evaluation in members
        ],
        "metrics": metrics,
        "level": DEFAULTS.level,
        "method": "mean and sample std over seeds; 95% t-interval of the mean; val_se from each "
        "run's bootstrap interval (width / 3.92); seed_share = std^2 / (std^2 + val_se^2)",
    }


def compare(
    *,
    session: Session,
    group_a: int,
    group_b: int,
    metric: str = "bbox_mAP",
    resamples: int = DEFAULTS.resamples,
    seed: int = DEFAULTS.bootstrap_seed,
) -> dict[str, Any]:
    """Mean of B's runs - mean of A's, with intervals and p-values over val images and seeds."""
    significance_service.check_metric(metric)
    masks = is_mask_metric(metric)
    groups = []
    for group_id in (group_a, group_b):
        runs = [
            job.id
            for job, evaluation in _members(session, group_id)
            if evaluation is not None and job.status == JobStatus.succeeded
        ]
        if not runs:
            raise Conflict(f"replicate group {group_id} has no scored run yet")
        groups.append(
            [significance_service.scored_matches(session, job_id, masks=masks) for job_id in runs]
        )
    val_hashes = {scored.val_sha256 for group in groups for scored in group}
    if len(val_hashes) > 1:
        raise Invalid(
            f"groups {group_a} and {group_b} were scored on different val splits; compare "
            "groups evaluated on the same val images"
        )
    try:
        comparison = compare_groups(
            [s.matches for s in groups[0]],
            [s.matches for s in groups[1]],
            resamples=resamples,
            seed=seed,
        )
    except ValueError as exc:
        raise Invalid(f"groups {group_a} and {group_b} cannot be compared: {exc}") from None
    if masks:
        comparison = significance_service.as_mask_comparison(comparison)
    return significance_service.answer(
        comparison,
        labels=groups[0][0].labels,
        metric=metric,
        a={"group_id": group_a, "runs": len(groups[0])},
        b={"group_id": group_b, "runs": len(groups[1])},
        name_a=f"group {group_a}",
        name_b=f"group {group_b}",
    )

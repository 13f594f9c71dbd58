"""Is one run really better than another? Paired bootstrap comparisons of scored jobs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from backend.analysis.bootstrap import Comparison, describe_difference, holm, paired_comparison
from backend.analysis.engine import CocoMatches, evaluate_arrays
from backend.analysis.metrics import class_labels
from backend.analysis.tables import DEFAULTS, METRIC_KEYS, is_mask_metric, mask_key
from backend.datasets import service as dataset_service
from backend.errors import Invalid, NotFound
from backend.evaluations import service as evaluation_service
from backend.evaluations.inputs import parse_predictions, score_mask_predictions, sha256_of
from backend.jobs import service as job_service
from backend.jobs.paths import mask_predictions_of

__all__ = [
    "Scored",
    "answer",
    "as_mask_comparison",
    "check_metric",
    "compare_jobs",
    "scored_matches",
    "versus_leader",
]


@dataclass(frozen=True, eq=False)
class Scored:
    """A job's predictions matched by the engine, its class labels and its val file's hash."""

    matches: CocoMatches
    labels: dict[int, str]
    val_sha256: str


@lru_cache(maxsize=8)
def _score_files(
    job_id: int,
    val_ann: str,
    val_mtime: int,
    predictions: str,
    predictions_mtime: int,
    masks: str | None = None,
    masks_mtime: int = 0,
) -> Scored:
    """The engine's matches of one predictions file (of its mask predictions file, when
    ``masks`` names it), kept while no file changes (a page comparing several runs with one
    leader asks for the leader's again and again)."""
    parsed = parse_predictions(job_id=job_id, val_ann=val_ann, predictions=predictions)
    if masks is None:
        matches = evaluate_arrays(parsed.ground_truth, parsed.detections)
    else:
        matches = score_mask_predictions(
            job_id=job_id, gt=parsed.gt, ground_truth=parsed.ground_truth, predictions=masks
        ).matches
    return Scored(
        matches=matches,
        labels=class_labels(parsed.ground_truth),
        val_sha256=sha256_of(val_ann),
    )


def _scored(session: Session, job_id: int, *, masks: bool = False) -> tuple[Scored, str]:
    """A job's matches (on boxes, or on masks) and a name to show for it; NotFound/Invalid
    saying why not."""
    path = evaluation_service.predictions_file(session=session, job_id=job_id)
    job_row = job_service.get(session=session, job_id=job_id)
    dataset = dataset_service.get(session=session, dataset_id=job_row.dataset_id or 0)
    mask_path = mask_predictions_of(path) if masks else None
    if masks and (mask_path is None or not mask_path.is_file()):
        raise Invalid(
            f"job {job_id} has no mask predictions (a box-only model, or scored on a box-only "
            "dataset); compare it on a bbox_ metric"
        )
    try:
        scored = _score_files(
            job_id,
            dataset.val_ann,
            Path(dataset.val_ann).stat().st_mtime_ns,
            str(path),
            path.stat().st_mtime_ns,
            str(mask_path) if mask_path else None,
            mask_path.stat().st_mtime_ns if mask_path else 0,
        )
    except FileNotFoundError as exc:  # gone before it could be read
        raise NotFound(f"a file of job {job_id}'s evaluation is gone: {exc.filename}") from None
    return scored, job_row.name or f"job {job_id}"


def scored_matches(session: Session, job_id: int, *, masks: bool = False) -> Scored:
    """The engine's matches of a job's stored predictions, on boxes or on masks (kept while
    the files are unchanged)."""
    return _scored(session, job_id, masks=masks)[0]


def as_mask_comparison(comparison: Comparison) -> Comparison:
    """A comparison computed on mask matches, its figures under their segm_ keys."""
    return dataclasses.replace(
        comparison, metrics={mask_key(k): v for k, v in comparison.metrics.items()}
    )


def _compare(
    session: Session, job_a: int, job_b: int, *, resamples: int, seed: int, masks: bool = False
) -> tuple[Comparison, Scored, str, str]:
    """B - A on boxes, or on masks (the comparison's figures then under their segm_ keys)."""
    a, name_a = _scored(session, job_a, masks=masks)
    b, name_b = _scored(session, job_b, masks=masks)
    if a.val_sha256 != b.val_sha256:
        raise Invalid(
            f"jobs {job_a} and {job_b} were scored on different val splits (annotation files "
            f"{a.val_sha256[:12]}... and {b.val_sha256[:12]}...); a paired comparison needs "
            "two jobs evaluated on the same val images"
        )
    try:
        comparison = paired_comparison(a.matches, b.matches, resamples=resamples, seed=seed)
    except ValueError as exc:
        raise Invalid(f"jobs {job_a} and {job_b} cannot be paired: {exc}") from None
    if masks:
        comparison = as_mask_comparison(comparison)
    return comparison, a, name_a, name_b


def check_metric(metric: str) -> None:
    """Invalid unless metric is one of the stored COCO metrics."""
    if metric not in METRIC_KEYS:
        raise Invalid(f"metric {metric!r} is not accepted; use one of {', '.join(METRIC_KEYS)}")


def answer(
    comparison: Comparison,
    *,
    labels: dict[int, str],
    metric: str,
    a: dict[str, Any],
    b: dict[str, Any],
    name_a: str,
    name_b: str,
) -> dict[str, Any]:
    """A comparison as the API serves it: both sides, the sentence, every difference (per-class
    entries under the class labels) and what reproduces it."""
    found = comparison.as_dict()
    found["per_class"] = {labels[int(cat)]: value for cat, value in found["per_class"].items()}
    return {
        "a": a,
        "b": b,
        "metric": metric,
        "alpha": DEFAULTS.alpha,
        "sentence": describe_difference(
            comparison, name_a=name_a, name_b=name_b, metric=metric, alpha=DEFAULTS.alpha
        ),
        **found,
    }


def compare_jobs(
    *,
    session: Session,
    job_a: int,
    job_b: int,
    metric: str = "bbox_mAP",
    resamples: int = DEFAULTS.resamples,
    seed: int = DEFAULTS.bootstrap_seed,
) -> dict[str, Any]:
    """B - A on every metric and per-class AP with 95% intervals and p-values, both jobs
    scored on the same resampled val images, and one sentence on ``metric``."""
    check_metric(metric)
    comparison, scored, name_a, name_b = _compare(
        session, job_a, job_b, resamples=resamples, seed=seed, masks=is_mask_metric(metric)
    )
    return answer(
        comparison,
        labels=scored.labels,
        metric=metric,
        a={"job_id": job_a, "name": name_a},
        b={"job_id": job_b, "name": name_b},
        name_a=name_a,
        name_b=name_b,
    )


def versus_leader(
    *,
    session: Session,
    leader: int,
    others: list[int],
    metric: str,
    resamples: int = DEFAULTS.resamples,
    seed: int = DEFAULTS.bootstrap_seed,
) -> dict[int, dict[str, Any]]:
    """Each job against the leader on ``metric``: the difference (job - leader), its p-value,
    Holm's adjusted p over the jobs given, and whether the two are tied at alpha."""
    found: dict[int, dict[str, Any]] = {}
    for job_id in others:
        comparison, _, _, _ = _compare(
            session, leader, job_id, resamples=resamples, seed=seed, masks=is_mask_metric(metric)
        )
        difference = comparison.metrics[metric]
        found[job_id] = {"difference": difference.estimate, "p_value": difference.p_value}
    tested = [job_id for job_id, row in found.items() if row["p_value"] is not None]
    adjusted = holm([found[job_id]["p_value"] for job_id in tested]) if tested else []
    for job_id, p_holm in zip(tested, adjusted, strict=True):
        found[job_id]["p_holm"] = p_holm
        found[job_id]["tied_with_leader"] = p_holm >= DEFAULTS.alpha
    return found

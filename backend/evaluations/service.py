"""Storing and reading job evaluations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session

from backend.analysis.tables import METRIC_KEYS
from backend.errors import NotFound
from backend.evaluations.models import Evaluation
from backend.jobs import service as job_service

__all__ = ["get_for_job", "predictions_file", "store"]


def get_for_job(*, session: Session, job_id: int) -> Evaluation:
    """The evaluation of a job, or NotFound saying why there is none."""
    job = job_service.get(session=session, job_id=job_id)
    evaluation = session.query(Evaluation).filter_by(job_id=job_id).one_or_none()
    if evaluation is None:
        raise NotFound(
            f"job {job_id} has no evaluation (status {job.status.value}); one is "
            "stored when a fine-tune or evaluate job succeeds, or predictions are imported"
        )
    return evaluation


def predictions_file(*, session: Session, job_id: int) -> Path:
    """The COCO results file of a job's val predictions, or NotFound saying why."""
    evaluation = get_for_job(session=session, job_id=job_id)
    path = Path(evaluation.predictions_path or "")
    if not evaluation.predictions_path or not path.is_file():
        raise NotFound(f"the predictions file of job {job_id} is gone ({path})")
    return path


def store(
    *,
    session: Session,
    job_id: int,
    metrics: dict[str, Any],
    per_class_ap: dict[str, Any],
    predictions_path: str,
    per_class_mask_ap: dict[str, Any] | None = None,
    analysis: dict[str, Any] | None = None,
    record: dict[str, Any] | None = None,
    intervals: dict[str, Any] | None = None,
    commit: bool = True,
) -> Evaluation:
    """Replace a job's evaluation with new figures (commit=False: within the caller's
    transaction, so it can store more beside it atomically)."""
    session.execute(delete(Evaluation).where(Evaluation.job_id == job_id))
    evaluation = Evaluation(
        job_id=job_id,
        per_class_ap=per_class_ap,
        per_class_mask_ap=per_class_mask_ap,
        predictions_path=predictions_path,
        analysis=analysis,
        record=record,
        intervals=intervals,
        **{metric: metrics.get(metric) for metric in METRIC_KEYS},
    )
    session.add(evaluation)
    if commit:
        session.commit()
    return evaluation

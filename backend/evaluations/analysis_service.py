"""Per-job error analysis: computed from the stored predictions, kept per image for queries."""

from __future__ import annotations

from sqlalchemy import delete, insert
from sqlalchemy.orm import Session

from backend.analysis import AnalysisInputError, analyze, confusion_matrix
from backend.analysis.tables import COUNTED, DEFAULTS
from backend.errors import Invalid
from backend.evaluations.inputs import load_inputs
from backend.evaluations.models import Evaluation, ImageError, ImageResult

__all__ = ["analyze_job"]


def analyze_job(
    *,
    session: Session,
    job_id: int,
    score_thr: float = DEFAULTS.count_score_thr,
    confusion_score_thr: float = DEFAULTS.draw_score_thr,
    iou_thr: float = DEFAULTS.confusion_iou_thr,
) -> Evaluation:
    """TIDE breakdown, confusion matrix and per-image rows of a job's val predictions."""
    inputs = load_inputs(session=session, job_id=job_id)
    gt, results = inputs.gt, inputs.results
    try:
        found = analyze(gt, results, score_thr=score_thr)
        labels, matrix = confusion_matrix(
            gt, results, score_thr=confusion_score_thr, iou_thr=iou_thr
        )
    except AnalysisInputError as exc:
        raise Invalid(f"the predictions of job {job_id} cannot be analysed: {exc}") from None
    names = inputs.category_names
    evaluation = inputs.evaluation
    evaluation.analysis = {
        "score_thr": score_thr,
        "counts": found.counts,
        "per_class": {names[cat]: counts for cat, counts in found.class_counts.items()},
        "ap50": found.ap50,
        "dAP": found.dap,
        "confusion": {
            "labels": labels,
            "matrix": matrix,
            "score_thr": confusion_score_thr,
            "iou_thr": iou_thr,
        },
    }
    file_names = {image["id"]: image["file_name"] for image in gt["images"]}
    session.execute(delete(ImageResult).where(ImageResult.job_id == job_id))
    session.execute(delete(ImageError).where(ImageError.job_id == job_id))
    rows = [
        dict(
            job_id=job_id,
            image_id=s.image_id,
            file_name=file_names[s.image_id],
            n_gt=s.n_gt,
            n_pred=s.n_pred,
            badness=s.badness,
            **{name: getattr(s, name) for name in COUNTED},
        )
        for s in found.images
    ]
    errors = [
        dict(
            job_id=job_id,
            image_id=s.image_id,
            error_type=error_type,
            category_id=category_id,
            badness=s.badness,
        )
        for s in found.images
        for error_type, category_id in s.error_pairs
    ]
    if rows:
        session.execute(insert(ImageResult), rows)
    if errors:
        session.execute(insert(ImageError), errors)
    session.commit()
    return evaluation

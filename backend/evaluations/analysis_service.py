"""Scoring a job's val predictions: COCO metrics from the engine, the error analysis, and the
per-image rows the explorer queries, from one read of the files and one parse."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, delete, insert, select
from sqlalchemy.orm import Session

from backend.analysis.bootstrap import Intervals, bootstrap_intervals
from backend.analysis.confusion import confusion_of
from backend.analysis.inputs import Detections, GroundTruth
from backend.analysis.metrics import class_labels, score
from backend.analysis.summary import analyze_arrays
from backend.analysis.tables import COUNTED, DEFAULTS, mask_key
from backend.datasets import service as dataset_service
from backend.evaluations import service as evaluation_service
from backend.evaluations.inputs import parse_predictions, score_mask_predictions, sha256_of
from backend.evaluations.models import Evaluation, ImageError, ImageResult
from backend.jobs import service as job_service
from backend.jobs.paths import mask_predictions_of

__all__ = ["evaluate_job", "intervals_json"]


def intervals_json(
    intervals: Intervals, labels: dict[int, str], masks: Intervals | None = None
) -> dict[str, Any]:
    """Intervals as stored and served: per-class entries under the class labels; a mask
    model's mask figures join 'metrics' under their segm_ keys, its classes 'per_class_mask'."""
    stored = intervals.as_dict()
    stored["per_class"] = {
        labels[int(cat)]: interval for cat, interval in stored["per_class"].items()
    }
    if masks is not None:
        found = masks.as_dict()
        stored["metrics"].update({mask_key(key): value for key, value in found["metrics"].items()})
        stored["per_class_mask"] = {
            labels[int(cat)]: interval for cat, interval in found["per_class"].items()
        }
    return stored


def evaluate_job(
    *,
    session: Session,
    job_id: int,
    predictions_path: str | Path | None = None,
    score_thr: float = DEFAULTS.count_score_thr,
    confusion_score_thr: float = DEFAULTS.draw_score_thr,
    iou_thr: float = DEFAULTS.confusion_iou_thr,
    resamples: int | None = DEFAULTS.resamples,
    seed: int = DEFAULTS.bootstrap_seed,
    record_extra: dict[str, Any] | None = None,
) -> Evaluation:
    """Score a job's val predictions (those at predictions_path, else the stored ones) and
    store metrics, record, analysis and per-image rows in place of any earlier evaluation,
    then add bootstrap intervals (``resamples`` draws of the val images fixed by ``seed``;
    None: no intervals).

    Nothing stored is replaced until the figures are computed; they are committed before the
    intervals, which take longer, so the evaluation is readable meanwhile. The COCO metrics
    use every prediction; ``score_thr`` applies to the error analysis only and is stored.
    ``record_extra`` joins the record (an evaluate job's class mapping, for one); scoring
    again keeps what an earlier ``record_extra`` put there."""
    job = job_service.get(session=session, job_id=job_id)
    earlier = session.scalar(select(Evaluation.record).where(Evaluation.job_id == job_id)) or {}
    if predictions_path is None:
        path = evaluation_service.predictions_file(session=session, job_id=job_id)
    else:
        path = Path(predictions_path)
    dataset = dataset_service.get(session=session, dataset_id=job.dataset_id or 0)
    parsed = parse_predictions(job_id=job_id, val_ann=dataset.val_ann, predictions=path)
    gt, ground_truth, detections = parsed.gt, parsed.ground_truth, parsed.detections
    coco = score(ground_truth, detections)
    computed = {
        **coco.record,
        "predictions_sha256": sha256_of(path),
        "val_sha256": sha256_of(dataset.val_ann),
    }
    # a model with a mask head wrote its masks beside the boxes: scored as COCO segm too
    mask_path = mask_predictions_of(path)
    masks = None
    if mask_path is not None and mask_path.is_file():
        masks = score_mask_predictions(
            job_id=job_id, gt=gt, ground_truth=ground_truth, predictions=mask_path
        )
        computed["masks"] = {
            "iou_type": "segm",
            "predictions_path": str(mask_path),
            "predictions_sha256": sha256_of(mask_path),
            "predictions": masks.record["predictions"],
            "size_ranges": "by each prediction's mask area, as mmdet's CocoMetric scores masks",
        }
    kept = {k: v for k, v in earlier.items() if k not in computed and k != "masks"}
    record = {**kept, **computed, **(record_extra or {})}
    analysis = _analysis(
        ground_truth,
        detections,
        score_thr=score_thr,
        confusion_score_thr=confusion_score_thr,
        iou_thr=iou_thr,
    )
    evaluation = evaluation_service.store(
        session=session,
        job_id=job_id,
        metrics={**coco.metrics, **(masks.metrics if masks else {})},
        per_class_ap=coco.per_class_ap,
        per_class_mask_ap=masks.per_class_ap if masks else None,
        predictions_path=str(path),
        analysis=analysis.pop("summary"),
        record=record,
        commit=False,
    )
    _store_rows(session, job_id, gt, analysis["images"])
    session.commit()
    if resamples is not None:
        evaluation.intervals = intervals_json(
            bootstrap_intervals(coco.matches, resamples=resamples, seed=seed),
            class_labels(ground_truth),
            bootstrap_intervals(masks.matches, resamples=resamples, seed=seed) if masks else None,
        )
        session.commit()
    return evaluation


def _analysis(
    ground_truth: GroundTruth,
    detections: Detections,
    *,
    score_thr: float,
    confusion_score_thr: float,
    iou_thr: float,
) -> dict[str, Any]:
    """The error breakdown (summary for the evaluation row) and the per-image summaries."""
    found = analyze_arrays(ground_truth, detections.at_least(score_thr), score_thr)
    labels, matrix = confusion_of(
        ground_truth, detections.at_least(confusion_score_thr), iou_thr=iou_thr
    )
    names = class_labels(ground_truth)
    summary = {
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
    return {"summary": summary, "images": found.images}


def _store_rows(session: Session, job_id: int, gt: dict[str, Any], images: list[Any]) -> None:
    """Replace the job's per-image rows (counts, badness) and its (error type, class) index."""
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
        for s in images
    ]
    errors = [
        dict(
            job_id=job_id,
            image_id=s.image_id,
            error_type=error_type,
            category_id=category_id,
            badness=s.badness,
        )
        for s in images
        for error_type, category_id in s.error_pairs
    ]
    # Core inserts: the ORM's bulk path costs seconds at 200k rows and adds nothing here
    if rows:
        session.execute(insert(cast(Table, ImageResult.__table__)), rows)
    if errors:
        session.execute(insert(cast(Table, ImageError.__table__)), errors)

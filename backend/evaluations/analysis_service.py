"""Per-job error analysis: computed from the stored predictions, kept per image for queries."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from backend.analysis import (
    ERROR_TYPES,
    AnalysisInputError,
    analyze,
    confusion_matrix,
    render_overlay,
)
from backend.datasets import service as dataset_service
from backend.datasets.models import Dataset
from backend.errors import Conflict, Invalid, NotFound
from backend.evaluations.models import Evaluation, ImageError, ImageResult
from backend.jobs import service as job_service
from backend.jobs.models import Job

__all__ = [
    "analyze_job",
    "compare_images",
    "image_detections",
    "list_images",
    "overlay_png",
    "FILTERABLE_ERRORS",
    "SORTS",
]

FILTERABLE_ERRORS = (*ERROR_TYPES, "missed")
SORTS = ("worst", "best", "image_id")
# an image is "right" for a job when none of its objects is misclassified, mislocated or lost
MAJOR_ERRORS = ("classification", "localization", "both", "missed")


@lru_cache(maxsize=16)
def _read_json(path: str, mtime_ns: int) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _load(path: str | Path) -> Any:
    return _read_json(str(path), Path(path).stat().st_mtime_ns)


def _inputs(session: Session, job_id: int) -> tuple[Job, Dataset, Evaluation, dict, list]:
    job = job_service.get(session=session, job_id=job_id)
    evaluation = session.scalar(select(Evaluation).where(Evaluation.job_id == job_id))
    if evaluation is None or not evaluation.predictions_path:
        raise Conflict(
            f"job {job_id} has no predictions yet (status {job.status.value}); "
            "they are stored when a fine-tune job finishes its evaluation"
        )
    dataset = dataset_service.get(session=session, dataset_id=job.dataset_id or 0)
    try:
        gt, results = _load(dataset.val_ann), _load(evaluation.predictions_path)
    except FileNotFoundError as exc:
        raise NotFound(f"a file of job {job_id}'s evaluation is gone: {exc.filename}") from None
    return job, dataset, evaluation, gt, results


def analyze_job(
    *,
    session: Session,
    job_id: int,
    score_thr: float = 0.05,
    confusion_score_thr: float = 0.3,
    iou_thr: float = 0.5,
) -> Evaluation:
    """TIDE breakdown, confusion matrix and per-image rows of a job's val predictions."""
    _, _, evaluation, gt, results = _inputs(session, job_id)
    try:
        found = analyze(gt, results, score_thr=score_thr)
        labels, matrix = confusion_matrix(
            gt, results, score_thr=confusion_score_thr, iou_thr=iou_thr
        )
    except AnalysisInputError as exc:
        raise Invalid(f"the predictions of job {job_id} cannot be analysed: {exc}") from None
    names = {c["id"]: c["name"] for c in gt["categories"]}
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
            tp=s.tp,
            classification=s.classification,
            localization=s.localization,
            both=s.both,
            duplicate=s.duplicate,
            background=s.background,
            missed=s.missed,
            badness=s.badness,
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


def _category_id(dataset: Dataset, name: str) -> int:
    for category in dataset.stats["categories"]:
        if category["name"] == name:
            return int(category["id"])
    accepted = ", ".join(c["name"] for c in dataset.stats["categories"])
    raise Invalid(f"class {name!r} is not in dataset {dataset.name!r}; classes: {accepted}")


def list_images(
    *,
    session: Session,
    job_id: int,
    error_type: str | None = None,
    class_name: str | None = None,
    sort: str = "worst",
    limit: int = 24,
    offset: int = 0,
) -> tuple[list[ImageResult], int]:
    """A page of a job's analysed images, filtered by error type and class, worst first."""
    job = job_service.get(session=session, job_id=job_id)
    if error_type is not None and error_type not in FILTERABLE_ERRORS:
        raise Invalid(
            f"error_type {error_type!r} is not accepted; use one of {', '.join(FILTERABLE_ERRORS)}"
        )
    if sort not in SORTS:
        raise Invalid(f"sort {sort!r} is not accepted; use one of {', '.join(SORTS)}")
    query = select(ImageResult).where(ImageResult.job_id == job_id)
    if error_type is not None or class_name is not None:
        matching = select(ImageError.image_id).where(ImageError.job_id == job_id)
        if error_type is not None:
            matching = matching.where(ImageError.error_type == error_type)
        if class_name is not None:
            dataset = dataset_service.get(session=session, dataset_id=job.dataset_id or 0)
            matching = matching.where(ImageError.category_id == _category_id(dataset, class_name))
        query = query.where(ImageResult.image_id.in_(matching))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    order = {
        "worst": (ImageResult.badness.desc(), ImageResult.image_id),
        "best": (ImageResult.badness.asc(), ImageResult.image_id),
        "image_id": (ImageResult.image_id,),
    }[sort]
    items = session.scalars(query.order_by(*order).limit(limit).offset(offset)).all()
    return list(items), total


def _image_analysis(
    session: Session, job_id: int, image_id: int, score_thr: float
) -> tuple[dict[str, Any], Any, dict[int, str]]:
    """The val image record, the analysis of its predictions alone, and category names."""
    _, _, _, gt, results = _inputs(session, job_id)
    image = next((im for im in gt["images"] if im["id"] == image_id), None)
    if image is None:
        raise NotFound(f"image {image_id} is not in the val split of job {job_id}'s dataset")
    one_image = {
        "images": [image],
        "categories": gt["categories"],
        "annotations": [a for a in gt["annotations"] if a["image_id"] == image_id],
    }
    mine = [r for r in results if r.get("image_id") == image_id]
    try:
        found = analyze(one_image, mine, score_thr=score_thr)
    except AnalysisInputError as exc:
        raise Invalid(f"the predictions of job {job_id} cannot be analysed: {exc}") from None
    return image, found, {c["id"]: c["name"] for c in gt["categories"]}


def image_detections(
    *, session: Session, job_id: int, image_id: int, score_thr: float = 0.05
) -> dict[str, Any]:
    """Every prediction of one image with its outcome, IoU and ground truth, and every GT box."""
    image, found, names = _image_analysis(session, job_id, image_id, score_thr)
    detections = [
        {
            "bbox": list(m.bbox),
            "score": m.score,
            "category": names[m.category_id],
            "category_id": m.category_id,
            "error_type": m.error_type,
            "iou": m.iou,
            "gt_id": m.gt_id,
            "gt_category": names.get(m.gt_category_id) if m.gt_category_id is not None else None,
        }
        for m in sorted(found.predictions, key=lambda m: -m.score)
    ]
    ground_truth = [
        {
            "id": g.annotation_id,
            "bbox": list(g.bbox),
            "category": names[g.category_id],
            "category_id": g.category_id,
            "missed": g.missed,
            "crowd": g.ignored,
        }
        for g in found.ground_truth
    ]
    return {
        "image_id": image_id,
        "file_name": image["file_name"],
        "width": image["width"],
        "height": image["height"],
        "score_thr": score_thr,
        "detections": detections,
        "ground_truth": ground_truth,
    }


# how much overlay.png's min_width may enlarge an image
MAX_ENLARGE = 8


def _scaled(items: list[Any], factor: float) -> list[dict[str, Any]]:
    """Boxes as dicts with coordinates multiplied by factor, for a resized rendering."""
    fields = ("category_id", "score", "error_type", "gt_category_id", "missed", "ignored")
    out = []
    for item in items:
        entry = {f: getattr(item, f) for f in fields if hasattr(item, f)}
        entry["bbox"] = [v * factor for v in item.bbox]
        out.append(entry)
    return out


def overlay_png(
    *,
    session: Session,
    job_id: int,
    image_id: int,
    score_thr: float = 0.3,
    show: list[str] | None = None,
    max_width: int | None = None,
    min_width: int | None = None,
    legend: str = "auto",
) -> bytes:
    """The image with ground truth and predictions drawn, coloured by outcome.

    ``max_width`` shrinks larger images before drawing (cheaper to render and send);
    ``min_width`` enlarges smaller ones (nearest neighbour, so pixels stay honest, at most
    MAX_ENLARGE times), so that box labels stay small next to a small picture."""
    from PIL import Image

    if max_width and min_width and min_width > max_width:
        raise Invalid(f"min_width ({min_width}) must not exceed max_width ({max_width})")

    _, found, names = _image_analysis(session, job_id, image_id, score_thr=0.05)
    job = job_service.get(session=session, job_id=job_id)
    dataset = dataset_service.get(session=session, dataset_id=job.dataset_id or 0)
    path = dataset_service.image_file(dataset=dataset, image_id=image_id, split="val")
    with Image.open(path) as image:
        gt_boxes: list[Any] = found.ground_truth
        predictions: list[Any] = found.predictions
        factor, resample = 1.0, Image.Resampling.BILINEAR
        if max_width and image.width > max_width:
            factor = max_width / image.width
        elif min_width and image.width < min_width:
            factor, resample = min(min_width / image.width, MAX_ENLARGE), Image.Resampling.NEAREST
        if factor != 1.0:
            size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
            image = image.convert("RGB").resize(size, resample)
            gt_boxes, predictions = _scaled(gt_boxes, factor), _scaled(predictions, factor)
        try:
            return render_overlay(
                image,
                gt_boxes,
                predictions,
                categories=names,
                score_thr=score_thr,
                show=show or ["gt", "tp", "errors"],
                legend=legend,
            )
        except ValueError as exc:  # its message names the parameter and the accepted values
            raise Invalid(str(exc)) from None


def compare_images(
    *, session: Session, job_a: int, job_b: int, limit: int = 24, offset: int = 0
) -> tuple[list[dict[str, Any]], int]:
    """Images one job gets right (no misclassified, mislocated or missed object) and the other
    does not, the most lopsided first."""
    first = job_service.get(session=session, job_id=job_a)
    second = job_service.get(session=session, job_id=job_b)
    if first.dataset_id != second.dataset_id:
        raise Invalid(
            f"jobs {job_a} and {job_b} ran on different datasets ({first.dataset_id} "
            f"and {second.dataset_id}); compare jobs of the same dataset"
        )
    rows_a = {
        r.image_id: r
        for r in session.scalars(select(ImageResult).where(ImageResult.job_id == job_a))
    }
    rows_b = {
        r.image_id: r
        for r in session.scalars(select(ImageResult).where(ImageResult.job_id == job_b))
    }
    for job_id, rows in ((job_a, rows_a), (job_b, rows_b)):
        if not rows:
            raise Conflict(f"job {job_id} has no per-image analysis yet")
    differing: list[dict[str, Any]] = []
    for image_id in sorted(rows_a.keys() & rows_b.keys()):
        a, b = rows_a[image_id], rows_b[image_id]
        errors_a = sum(getattr(a, k) for k in MAJOR_ERRORS)
        errors_b = sum(getattr(b, k) for k in MAJOR_ERRORS)
        if (errors_a == 0) != (errors_b == 0):
            differing.append(
                {
                    "image_id": image_id,
                    "file_name": a.file_name,
                    "a": {
                        "job_id": job_a,
                        "tp": a.tp,
                        "errors": errors_a,
                        "missed": a.missed,
                        "badness": a.badness,
                    },
                    "b": {
                        "job_id": job_b,
                        "tp": b.tp,
                        "errors": errors_b,
                        "missed": b.missed,
                        "badness": b.badness,
                    },
                    "better": "a" if errors_a == 0 else "b",
                }
            )
    differing.sort(key=lambda d: -abs(d["a"]["badness"] - d["b"]["badness"]))
    return differing[offset : offset + limit], len(differing)

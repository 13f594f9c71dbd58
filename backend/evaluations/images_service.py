"""A job's analysed val images: worst-first pages, one image's boxes, and overlays."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.analysis import AnalysisInputError, analyze
from backend.analysis.overlay import render_overlay, scaled_boxes
from backend.analysis.tables import DEFAULTS, FILTERABLE_ERRORS
from backend.datasets import service as dataset_service
from backend.datasets.models import Dataset
from backend.errors import Invalid, NotFound
from backend.evaluations.inputs import load_inputs
from backend.evaluations.models import ImageError, ImageResult
from backend.jobs import service as job_service

__all__ = ["SORTS", "image_detections", "list_images", "overlay_png"]

SORTS = ("worst", "best", "image_id")


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
    inputs = load_inputs(session=session, job_id=job_id)
    gt, results = inputs.gt, inputs.results
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
    return image, found, inputs.category_names


def image_detections(
    *, session: Session, job_id: int, image_id: int, score_thr: float = DEFAULTS.count_score_thr
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


def overlay_png(
    *,
    session: Session,
    job_id: int,
    image_id: int,
    score_thr: float = DEFAULTS.draw_score_thr,
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

    _, found, names = _image_analysis(session, job_id, image_id, score_thr=DEFAULTS.count_score_thr)
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
            gt_boxes = scaled_boxes(gt_boxes, factor)
            predictions = scaled_boxes(predictions, factor)
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

"""A job's analysed val images: pages filtered and sorted by what they are asked about, one
image's boxes, and overlays that draw exactly those boxes.

A page can be about an error type (the per-image counts stored with the analysis), about the
errors involving one class, or about one cell of the confusion matrix. The last two are
counted over the job's predictions again (a few hundred milliseconds at 500k predictions,
then kept for the next pages), by the same rules that pick the boxes an overlay draws and the
box list shows, so a count, a tile and its box list always agree.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.analysis import AnalysisInputError, analyze
from backend.analysis.confusion import (
    BACKGROUND_LABEL,
    ConfusionCells,
    cell_label,
    confusion_cells,
)
from backend.analysis.inputs import parse_ground_truth, parse_results
from backend.analysis.matching import MatchTable, match_table
from backend.analysis.overlay import decode_mask, render_overlay, scaled_boxes, shown_outcomes
from backend.analysis.summary import BoxSelection
from backend.analysis.tables import (
    BOX_COLOURS,
    DEFAULTS,
    FILTERABLE_ERRORS,
    OUTCOMES,
    PREDICTION_OUTCOMES,
)
from backend.datasets import service as dataset_service
from backend.datasets.models import Dataset
from backend.errors import Conflict, Invalid, NotFound
from backend.evaluations.inputs import NotJson, load_inputs, parse_predictions, read_json
from backend.evaluations.models import Evaluation, ImageResult
from backend.jobs import service as job_service
from backend.jobs.paths import mask_predictions_of

__all__ = [
    "SORTS",
    "ImageFilter",
    "ImageListing",
    "counting_thresholds",
    "image_detections",
    "list_images",
    "overlay_png",
]

SORTS = ("worst", "best", "image_id")
_SIDES = {o.name: o.side for o in OUTCOMES}


@dataclass(frozen=True)
class ImageFilter:
    """What a page of images, an overlay or a box list is about: an error type and/or a class,
    or one cell of the confusion matrix (a ground-truth label and a predicted label, either of
    them "background")."""

    error_type: str | None = None
    class_name: str | None = None
    gt_class: str | None = None
    predicted_class: str | None = None

    @property
    def cell(self) -> tuple[str, str] | None:
        if self.gt_class is None or self.predicted_class is None:
            return None
        return self.gt_class, self.predicted_class

    def check(self, dataset: Dataset) -> None:
        """Invalid, naming what is accepted, for an unknown name or a mix of filters that
        have no common meaning."""
        if self.error_type is not None and self.error_type not in FILTERABLE_ERRORS:
            raise Invalid(
                f"error_type {self.error_type!r} is not accepted; use one of "
                f"{', '.join(FILTERABLE_ERRORS)}"
            )
        if self.class_name is not None:
            _category_id(dataset, self.class_name)
        if (self.gt_class is None) != (self.predicted_class is None):
            raise Invalid(
                "gt_class and predicted_class name one cell of the confusion matrix: give both "
                "(a class name or 'background') or neither"
            )
        if self.cell is not None:
            if self.error_type is not None or self.class_name is not None:
                raise Invalid(
                    "a confusion cell (gt_class, predicted_class) is a filter of its own; "
                    "leave out error_type and class"
                )
            labels = [*_class_names(dataset), BACKGROUND_LABEL]
            for name in self.cell:
                if name not in labels:
                    raise Invalid(
                        f"{name!r} is not a label of the confusion matrix of dataset "
                        f"{dataset.name!r}; labels: {', '.join(labels)}"
                    )

    def label(self) -> str | None:
        """What the filter selects, in words ("classification errors involving ellipse")."""
        if self.cell is not None:
            return cell_label(*self.cell)
        if self.error_type is None:
            return f"errors involving {self.class_name}" if self.class_name else None
        kind = (
            f"{self.error_type} errors"
            if _SIDES[self.error_type] == "prediction"
            else f"{self.error_type} ground-truth boxes"
        )
        return f"{kind} involving {self.class_name}" if self.class_name else kind


def _class_names(dataset: Dataset) -> list[str]:
    return [c["name"] for c in dataset.stats["categories"]]


def _category_id(dataset: Dataset, name: str) -> int:
    for category in dataset.stats["categories"]:
        if category["name"] == name:
            return int(category["id"])
    accepted = ", ".join(_class_names(dataset))
    raise Invalid(f"class {name!r} is not in dataset {dataset.name!r}; classes: {accepted}")


def counting_thresholds(evaluation: Evaluation) -> tuple[float, float, float]:
    """(score_thr, confusion score_thr, confusion IoU) of a stored analysis: the scores from
    which its per-image counts and its confusion matrix counted predictions."""
    analysis = evaluation.analysis or {}
    confusion = analysis.get("confusion") or {}
    return (
        float(analysis.get("score_thr", DEFAULTS.count_score_thr)),
        float(confusion.get("score_thr", DEFAULTS.draw_score_thr)),
        float(confusion.get("iou_thr", DEFAULTS.confusion_iou_thr)),
    )


def _evaluation(session: Session, job_id: int) -> Evaluation:
    job = job_service.get(session=session, job_id=job_id)
    evaluation = session.scalar(select(Evaluation).where(Evaluation.job_id == job_id))
    if evaluation is None or not evaluation.analysis or "score_thr" not in evaluation.analysis:
        raise Conflict(
            f"job {job_id} has no per-image analysis yet (status {job.status.value}); it is "
            f"computed when a fine-tune job succeeds, or by POST /jobs/{job_id}/analysis"
        )
    return evaluation


# -- the whole job, counted again ----------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _JobTables:
    """A job's predictions matched at its analysis' threshold, and its confusion entries."""

    table: MatchTable
    cells: ConfusionCells


_TABLES_LOCK = threading.Lock()


@lru_cache(maxsize=4)
def _tables(
    job_id: int, val_ann: str, val_stamp: int, predictions: str, stamp: int, thresholds: tuple
) -> _JobTables:
    score_thr, confusion_thr, iou_thr = thresholds
    parsed = parse_predictions(job_id=job_id, val_ann=val_ann, predictions=predictions)
    detections = parsed.detections
    return _JobTables(
        table=match_table(parsed.ground_truth, detections.at_least(score_thr)),
        cells=confusion_cells(
            parsed.ground_truth, detections.at_least(confusion_thr), iou_thr=iou_thr
        ),
    )


def _job_tables(evaluation: Evaluation, dataset: Dataset) -> _JobTables:
    """The job's tables, computed once per predictions file and thresholds (one at a time:
    concurrent pages of one job wait for the first instead of each computing them)."""
    predictions = evaluation.predictions_path or ""
    try:
        stamps = (Path(dataset.val_ann).stat().st_mtime_ns, Path(predictions).stat().st_mtime_ns)
    except FileNotFoundError as exc:
        raise NotFound(
            f"a file of job {evaluation.job_id}'s evaluation is gone: {exc.filename}"
        ) from None
    with _TABLES_LOCK:
        return _tables(
            evaluation.job_id,
            dataset.val_ann,
            stamps[0],
            predictions,
            stamps[1],
            counting_thresholds(evaluation),
        )


def _selected_per_image(
    tables: _JobTables, image_filter: ImageFilter, dataset: Dataset
) -> np.ndarray:
    """(n_images,) boxes each image has of what the filter selects (gt order of images)."""
    n_images = tables.table.ground_truth.n_images
    if image_filter.cell is not None:
        return tables.cells.per_image(tables.cells.index(*image_filter.cell), n_images)
    outcomes = [image_filter.error_type] if image_filter.error_type else FILTERABLE_ERRORS
    category = _category_id(dataset, image_filter.class_name) if image_filter.class_name else None
    return BoxSelection.of(outcomes, category_id=category).per_image(tables.table)


# -- pages of images ---------------------------------------------------------------------


@dataclass
class ImageListing:
    """A page of images with, per image, how many boxes it has of what the page is about."""

    items: list[ImageResult]
    total: int
    score_thr: float  # the analysis' threshold: its per-image counts
    selected: dict[int, int] = field(default_factory=dict)  # image id -> boxes selected
    selected_label: str | None = None
    selected_score_thr: float | None = None  # the threshold the selected boxes are counted at


def list_images(
    *,
    session: Session,
    job_id: int,
    error_type: str | None = None,
    class_name: str | None = None,
    gt_class: str | None = None,
    predicted_class: str | None = None,
    sort: str = "worst",
    limit: int = 24,
    offset: int = 0,
) -> ImageListing:
    """A page of a job's analysed images that have what the filter selects (an error type
    and/or errors involving a class, or a confusion cell); "worst" puts the images with the
    most of it first (then the most errors overall), "best" the fewest."""
    image_filter = ImageFilter(error_type, class_name, gt_class, predicted_class)
    job = job_service.get(session=session, job_id=job_id)
    dataset = dataset_service.get(session=session, dataset_id=job.dataset_id or 0)
    image_filter.check(dataset)
    if sort not in SORTS:
        raise Invalid(f"sort {sort!r} is not accepted; use one of {', '.join(SORTS)}")
    if image_filter.cell is None and image_filter.class_name is None:
        # no filter, or an error type alone: the stored per-image counts answer it
        return _stored_page(session, job_id, image_filter, sort=sort, limit=limit, offset=offset)
    return _counted_page(
        session, job_id, dataset, image_filter, sort=sort, limit=limit, offset=offset
    )


def _stored_page(
    session: Session, job_id: int, image_filter: ImageFilter, *, sort: str, limit: int, offset: int
) -> ImageListing:
    """list_images by the per-image counts stored with the analysis (an error type or none)."""
    rows = select(ImageResult).where(ImageResult.job_id == job_id)
    stored = session.scalar(select(Evaluation.analysis).where(Evaluation.job_id == job_id))
    score_thr = float((stored or {}).get("score_thr", DEFAULTS.count_score_thr))
    column = getattr(ImageResult, image_filter.error_type) if image_filter.error_type else None
    if column is not None:
        rows = rows.where(column > 0)
    total = session.scalar(select(func.count()).select_from(rows.subquery())) or 0
    first = [] if column is None else [column]
    order = {
        "worst": [*(c.desc() for c in first), ImageResult.badness.desc()],
        "best": [*(c.asc() for c in first), ImageResult.badness.asc()],
        "image_id": [],
    }[sort]
    page = session.scalars(
        rows.order_by(*order, ImageResult.image_id).limit(limit).offset(offset)
    ).all()
    return ImageListing(
        items=list(page),
        total=total,
        score_thr=score_thr,
        selected={r.image_id: getattr(r, image_filter.error_type) for r in page}
        if image_filter.error_type
        else {},
        selected_label=image_filter.label(),
        selected_score_thr=score_thr if image_filter.error_type else None,
    )


def _counted_page(
    session: Session,
    job_id: int,
    dataset: Dataset,
    image_filter: ImageFilter,
    *,
    sort: str,
    limit: int,
    offset: int,
) -> ImageListing:
    """list_images by counting the job's predictions again (a class, or a confusion cell)."""
    evaluation = _evaluation(session, job_id)
    score_thr, confusion_thr, _ = counting_thresholds(evaluation)
    tables = _job_tables(evaluation, dataset)
    counts = _selected_per_image(tables, image_filter, dataset)
    image_ids = tables.table.ground_truth.image_ids
    selected = {image_ids[i]: int(counts[i]) for i in np.flatnonzero(counts)}
    badness: dict[int, float] = {
        image_id: value
        for image_id, value in session.execute(
            select(ImageResult.image_id, ImageResult.badness).where(ImageResult.job_id == job_id)
        )
    }
    chosen = [image_id for image_id in selected if image_id in badness]
    if sort == "worst":
        chosen.sort(key=lambda i: (-selected[i], -badness[i], i))
    elif sort == "best":
        chosen.sort(key=lambda i: (selected[i], badness[i], i))
    else:
        chosen.sort()
    wanted = chosen[offset : offset + limit]
    rows = select(ImageResult).where(ImageResult.job_id == job_id, ImageResult.image_id.in_(wanted))
    found = {r.image_id: r for r in session.scalars(rows)}
    return ImageListing(
        items=[found[i] for i in wanted],
        total=len(chosen),
        score_thr=score_thr,
        selected={i: selected[i] for i in wanted},
        selected_label=image_filter.label(),
        selected_score_thr=confusion_thr if image_filter.cell is not None else score_thr,
    )


# -- one image ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _ImageBoxes:
    """One image's boxes that a view draws, in the order it lists them (predictions by
    falling score, then ground truth)."""

    image: dict[str, Any]
    names: dict[int, str]
    score_thr: float  # the lowest score of the predictions listed
    predictions: list[dict[str, Any]]
    ground_truth: list[dict[str, Any]]
    # each box's segmentation (None: it has none), in the order of the boxes
    prediction_masks: list[Any]
    truth_masks: list[Any]


def _outcomes(show: Collection[str] | None) -> set[str]:
    """The outcome names (and "gt") that ``show`` asks for; every one when None."""
    if show is None:
        return {*PREDICTION_OUTCOMES, *BOX_COLOURS}
    try:
        return set(shown_outcomes(show))
    except ValueError as exc:  # its message names the accepted values
        raise Invalid(str(exc)) from None


def _has_segmentation(segmentation: Any) -> bool:
    """Whether a GT annotation's or a mask result's segmentation holds a mask (polygons or an
    RLE); box-only annotations have none, or an empty list."""
    if isinstance(segmentation, Mapping):
        return "counts" in segmentation
    return isinstance(segmentation, list) and bool(segmentation)


def _mask_results(evaluation: Evaluation, results: Sequence[Any]) -> Sequence[Any] | None:
    """The job's mask predictions (mmdet's segm file beside its bbox file), position for
    position the same detections as ``results``; None for a box-only model (no such file)."""
    path = mask_predictions_of(evaluation.predictions_path or "")
    if path is None:
        return None
    try:
        masks = read_json(path)
    except FileNotFoundError:
        return None
    except NotJson as exc:
        raise Invalid(
            f"the mask predictions of job {evaluation.job_id} cannot be read: {exc}"
        ) from None
    if not isinstance(masks, list) or len(masks) != len(results):
        found = f"{len(masks)} entries" if isinstance(masks, list) else type(masks).__name__
        raise Invalid(
            f"the mask predictions of job {evaluation.job_id} ({path}) do not pair with its box "
            f"predictions: {found} for {len(results)} boxes; the segm file must list the bbox "
            "file's detections in the same order, each with its 'segmentation'"
        )
    return masks


def _prediction_mask(job_id: int, position: int, result: Any, masks: Sequence[Any]) -> Any:
    """The segmentation of the bbox result at ``position`` (None: it has none), checked to be
    of the same detection."""
    entry = masks[position]
    if not isinstance(entry, Mapping) or any(
        entry.get(key) != result.get(key) for key in ("image_id", "category_id")
    ):
        raise Invalid(
            f"the mask predictions of job {job_id} do not pair with its box predictions: entry "
            f"{position} of the segm file is not the bbox file's detection {position} (image "
            f"{result.get('image_id')!r}, category {result.get('category_id')!r}); the segm "
            "file must list the same detections in the same order"
        )
    segmentation = entry.get("segmentation")
    return segmentation if _has_segmentation(segmentation) else None


def _image_boxes(
    session: Session,
    job_id: int,
    image_id: int,
    *,
    score_thr: float | None,
    show: Collection[str] | None,
    image_filter: ImageFilter,
    masks: bool,
) -> _ImageBoxes:
    """The boxes of one image that ``show``, the filter and ``score_thr`` (None: the
    analysis' own) select, with their outcomes as the job's analysis finds them; with
    ``masks``, each with its segmentation where it has one (else None everywhere)."""
    inputs = load_inputs(session=session, job_id=job_id)
    image_filter.check(inputs.dataset)
    outcomes = _outcomes(show)
    counted_from, confusion_thr, iou_thr = counting_thresholds(inputs.evaluation)
    score_thr = counted_from if score_thr is None else score_thr
    gt = inputs.gt
    image = next((im for im in gt["images"] if im["id"] == image_id), None)
    if image is None:
        raise NotFound(f"image {image_id} is not in the val split of job {job_id}'s dataset")
    one_image = {
        "images": [image],
        "categories": gt["categories"],
        "annotations": [a for a in gt["annotations"] if a["image_id"] == image_id],
    }
    # the positions of the image's results in the file: mask predictions pair by position
    positions = [i for i, r in enumerate(inputs.results) if r.get("image_id") == image_id]
    mine = [inputs.results[i] for i in positions]
    cell = image_filter.cell
    # A prediction's outcome depends only on the predictions that score higher, so matching
    # from the lower of the two thresholds gives the analysis' outcomes to those it counted.
    try:
        table = analyze(one_image, mine, score_thr=min(score_thr, counted_from)).table
        if cell is not None:
            ground_truth = parse_ground_truth(one_image)
            in_matrix = parse_results(mine, ground_truth, score_thr=confusion_thr)
            cells = confusion_cells(ground_truth, in_matrix, iou_thr=iou_thr)
    except AnalysisInputError as exc:
        raise Invalid(f"the predictions of job {job_id} cannot be analysed: {exc}") from None
    category = (
        _category_id(inputs.dataset, image_filter.class_name) if image_filter.class_name else None
    )
    if image_filter.error_type is not None:
        # the type stands alone among the errors; ground truth stays whole when it is shown
        # (a box nothing found as "missed"), so that each error's object is in the picture
        outcomes -= set(FILTERABLE_ERRORS) - {image_filter.error_type}
        if "gt" in outcomes:
            outcomes.add("missed")
    predictions, truth = BoxSelection.of(outcomes, category_id=category, min_score=score_thr).masks(
        table
    )
    if cell is not None:
        in_cell = cells.cell == cells.index(*cell)
        rows = cells.detection[in_cell & (cells.detection >= 0)]
        predictions &= np.isin(table.detections.index, in_matrix.index[rows])
        truth &= np.isin(np.arange(len(truth)), cells.annotation[in_cell])

    names = inputs.category_names
    det, truths = table.detections, table.ground_truth
    relevant_ids = np.append(truths.ann_ids, -1)[table.gt]
    relevant_cats = np.append(truths.category, -1)[table.gt]
    chosen = np.flatnonzero(predictions)
    chosen = chosen[np.lexsort((det.index[chosen], -det.score[chosen]))]
    drawn_predictions = []
    for i in chosen.tolist():
        gt_cat = int(relevant_cats[i]) if table.gt[i] >= 0 else None
        drawn_predictions.append(
            {
                "bbox": det.xywh[i].tolist(),
                "score": float(det.score[i]),
                "category": names[int(det.category[i])],
                "category_id": int(det.category[i]),
                "error_type": PREDICTION_OUTCOMES[table.outcome[i]],
                "iou": float(table.iou[i]),
                "gt_id": int(relevant_ids[i]) if gt_cat is not None else None,
                "gt_category": names.get(gt_cat) if gt_cat is not None else None,
                "gt_category_id": gt_cat,
            }
        )
    drawn_truth = [
        {
            "id": int(truths.ann_ids[i]),
            "bbox": truths.xywh[i].tolist(),
            "category": names[int(truths.category[i])],
            "category_id": int(truths.category[i]),
            "missed": bool(table.gt_missed[i]),
            "crowd": bool(truths.crowd[i]),
        }
        for i in np.flatnonzero(truth).tolist()
    ]
    prediction_masks: list[Any] = [None] * len(drawn_predictions)
    truth_masks: list[Any] = [None] * len(drawn_truth)
    if masks:
        mask_results = _mask_results(inputs.evaluation, inputs.results)
        if mask_results is not None:
            prediction_masks = [
                _prediction_mask(job_id, positions[p], mine[p], mask_results)
                for p in det.index[chosen].tolist()
            ]
        segmentations = {a["id"]: a.get("segmentation") for a in one_image["annotations"]}
        truth_masks = [
            s if _has_segmentation(s := segmentations.get(g["id"])) else None for g in drawn_truth
        ]
    return _ImageBoxes(
        image=image,
        names=names,
        score_thr=score_thr,
        predictions=drawn_predictions,
        ground_truth=drawn_truth,
        prediction_masks=prediction_masks,
        truth_masks=truth_masks,
    )


def image_detections(
    *,
    session: Session,
    job_id: int,
    image_id: int,
    score_thr: float | None = None,
    show: Collection[str] | None = None,
    image_filter: ImageFilter | None = None,
) -> dict[str, Any]:
    """The boxes of one image with their outcome, IoU and ground truth: every one from
    ``score_thr`` (None: the analysis' threshold), or those ``show`` and the filter select,
    which are the ones the overlay with the same parameters draws; ``has_mask`` says which of
    them its ``masks=true`` overlay draws a mask for."""
    boxes = _image_boxes(
        session,
        job_id,
        image_id,
        score_thr=score_thr,
        show=show,
        image_filter=image_filter or ImageFilter(),
        masks=True,
    )
    image = boxes.image
    return {
        "image_id": image_id,
        "file_name": image["file_name"],
        "width": image["width"],
        "height": image["height"],
        "score_thr": boxes.score_thr,
        "detections": [
            {**{k: v for k, v in d.items() if k != "gt_category_id"}, "has_mask": m is not None}
            for d, m in zip(boxes.predictions, boxes.prediction_masks, strict=True)
        ],
        "ground_truth": [
            {**g, "has_mask": m is not None}
            for g, m in zip(boxes.ground_truth, boxes.truth_masks, strict=True)
        ],
    }


# how much overlay.png's min_width may enlarge an image
MAX_ENLARGE = 8


def _with_masks(
    boxes: list[dict[str, Any]], segmentations: list[Any], image: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The boxes, those with a segmentation given its decoded "mask" at the image's size."""
    height, width = image.get("height"), image.get("width")
    out = []
    for box, segmentation in zip(boxes, segmentations, strict=True):
        if segmentation is None:
            out.append(box)
            continue
        where = f"the mask of box {box.get('id', box['bbox'])} in image {image['id']}"
        if not isinstance(height, int) or not isinstance(width, int):
            raise Invalid(
                f"{where} needs the image's int height and width; got {height!r}, {width!r}"
            )
        try:
            mask = decode_mask(segmentation, height, width)
        except ValueError as exc:
            raise Invalid(f"{where} cannot be drawn: {exc}") from None
        if mask is not None and mask.shape != (height, width):
            raise Invalid(
                f"{where} is {mask.shape[1]}x{mask.shape[0]} px; its image is {width}x{height}"
            )
        out.append({**box, "mask": mask})
    return out


def overlay_png(
    *,
    session: Session,
    job_id: int,
    image_id: int,
    score_thr: float = DEFAULTS.draw_score_thr,
    show: list[str] | None = None,
    image_filter: ImageFilter | None = None,
    max_width: int | None = None,
    min_width: int | None = None,
    legend: str = "auto",
    masks: bool = False,
) -> bytes:
    """The image with the boxes ``show`` and the filter select drawn, coloured by outcome.

    ``max_width`` shrinks larger images before drawing (cheaper to render and send);
    ``min_width`` enlarges smaller ones (nearest neighbour, so pixels stay honest, at most
    MAX_ENLARGE times). Labels are drawn at a size that reads at the PNG's own width.
    ``masks``: the drawn boxes that have a mask (GT segmentations, a mask model's
    predictions) get it drawn under them; those that have none are drawn as boxes alone."""
    from PIL import Image

    if max_width and min_width and min_width > max_width:
        raise Invalid(f"min_width ({min_width}) must not exceed max_width ({max_width})")
    show = show or ["gt", "tp", "errors"]
    boxes = _image_boxes(
        session,
        job_id,
        image_id,
        score_thr=score_thr,
        show=show,
        image_filter=image_filter or ImageFilter(),
        masks=masks,
    )
    job = job_service.get(session=session, job_id=job_id)
    dataset = dataset_service.get(session=session, dataset_id=job.dataset_id or 0)
    path = dataset_service.image_file(dataset=dataset, image_id=image_id, split="val")
    with Image.open(path) as image:
        gt_boxes: list[Any] = _with_masks(boxes.ground_truth, boxes.truth_masks, boxes.image)
        predictions: list[Any] = _with_masks(boxes.predictions, boxes.prediction_masks, boxes.image)
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
                categories=boxes.names,
                score_thr=score_thr,
                show=show,
                legend=legend,
            )
        except ValueError as exc:  # its message names the parameter and the accepted values
            raise Invalid(str(exc)) from None

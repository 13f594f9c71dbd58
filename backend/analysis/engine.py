"""COCO bbox evaluation in numpy: COCOeval's statistics to the last bit, with per-detection
match arrays that can be re-weighted by image (for bootstrap intervals) without re-matching.

``evaluate`` reproduces COCOeval.evaluate (iouType "bbox", default parameters) and keeps, for
every detection COCOeval keeps, the GT it matched and whether it is a true positive or ignored
at each area range and IoU threshold. ``summarize`` reproduces accumulate and summarize from
those arrays, optionally with a weight per image: a detection counts weight[image] times, a GT
box weight[image] times; all-ones weights give exactly the unweighted result.

Rules kept from pycocotools, on purpose: images in sorted id order, categories ascending; GT
``iscrowd`` (truthy) makes a box ignored and ``ignore`` is not read; GT area is the "area"
field; a GT with annotation id 0 counts its match as a false positive (COCOeval stores matches
by id and reads 0 as "unmatched"); annotations sharing an id all become copies of the last one.
What COCOeval would drop silently (results or GT of categories or images the ground truth does
not list) is refused by validation instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend.analysis.engine_matching import (
    candidate_pairs,
    detection_orders,
    greedy_match,
    gt_rows,
    outcomes,
)
from backend.analysis.inputs import (
    Detections,
    GroundTruth,
    parse_ground_truth,
    parse_results,
)
from backend.analysis.masks import Masks, mask_pairs, parse_masks, result_boxes

__all__ = [
    "AREA_LABELS",
    "AREA_RANGES",
    "IOU_THRESHOLDS",
    "MAX_DETS",
    "RECALL_THRESHOLDS",
    "STAT_NAMES",
    "CocoMatches",
    "CocoStats",
    "evaluate",
    "evaluate_arrays",
    "summarize",
]

# COCOeval's Params for bbox: the same linspace calls, so the same floats.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
AREA_LABELS = ("all", "small", "medium", "large")
AREA_RANGES = np.array([[0, 1e5**2], [0, 32**2], [32**2, 96**2], [96**2, 1e5**2]], dtype=float)
MAX_DETS = (1, 10, 100)
STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
_RESULT_FIELDS = "image_id, category_id, bbox [x, y, width, height] and score"
# COCOeval starts each match search at min(t, 1 - 1e-10).
_MATCH_THRESHOLDS = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)


@dataclass(frozen=True, eq=False)
class CocoMatches:
    """COCOeval's outcome for each detection it keeps, per area range (A) and IoU threshold (T).

    Kept detections are the 100 best-scored per image and category, grouped by category and,
    within one, in accumulate's order: score descending, then image, then results order.
    A detection that is neither a true positive nor ignored is a false positive.
    """

    image_ids: list[Any]  # (I,) sorted, as COCOeval's imgIds; image weights follow this order
    category_ids: np.ndarray  # (K,) ascending
    category_start: np.ndarray  # (K + 1,) detections of category k: [start[k], start[k + 1])
    det_result: np.ndarray  # (N,) position in the results list
    det_image: np.ndarray  # (N,) position in image_ids
    det_score: np.ndarray  # (N,)
    det_rank: np.ndarray  # (N,) rank by score within its image and category, 0 the best
    matched: np.ndarray  # (A, T, N) int32 position in gt["annotations"] of the GT taken, or -1
    tp: np.ndarray  # (A, T, N) bool: matched a GT that is not ignored in the area range
    ignored: np.ndarray  # (A, T, N) bool: matched an ignored GT, or unmatched and out of range
    gt_image: np.ndarray  # (P,) image position of each (image, category) pair with GT
    gt_category: np.ndarray  # (P,) category position of that pair
    gt_count: np.ndarray  # (A, P) its GT boxes not ignored in area range a

    @property
    def n_images(self) -> int:
        """Number of images evaluated."""
        return len(self.image_ids)


@dataclass(frozen=True, eq=False)
class CocoStats:
    """COCOeval's summary: the 12 stats (-1 where undefined), per-class AP, the raw curves."""

    stats: np.ndarray  # (12,) in STAT_NAMES order
    per_class_ap: dict[int, float | None]  # category id -> AP .50:.95, all areas, 100 dets
    precision: np.ndarray  # (T, R, K, A, M) as COCOeval.eval["precision"]
    recall: np.ndarray  # (T, K, A, M) as COCOeval.eval["recall"]

    def as_dict(self) -> dict[str, float | None]:
        """The 12 stats by name, None where COCOeval says -1."""
        return {
            name: (None if value < 0 else float(value))
            for name, value in zip(STAT_NAMES, self.stats.tolist(), strict=True)
        }


def evaluate(
    gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], *, iou_type: str = "bbox"
) -> CocoMatches:
    """Validate a COCO ground-truth dict and results list, then match them as COCOeval does
    with ``iou_type`` "bbox" or "segm" (masks: see ``backend.analysis.masks``)."""
    ground_truth = parse_ground_truth(gt)
    if iou_type == "bbox":
        return evaluate_arrays(ground_truth, parse_results(results, ground_truth))
    if iou_type != "segm":
        raise ValueError(f"iou_type is {iou_type!r}; expected 'bbox' or 'segm'")
    results = result_boxes(results)
    detections = parse_results(results, ground_truth)
    masks = parse_masks(gt, ground_truth, results, detections)
    return evaluate_arrays(ground_truth, detections, masks=masks)


def evaluate_arrays(
    ground_truth: GroundTruth, detections: Detections, *, masks: Masks | None = None
) -> CocoMatches:
    """Match parsed detections (every score: COCO uses no cut) to parsed ground truth as
    COCOeval does: by box IoU, or by mask IoU when ``masks`` are given (iouType "segm")."""
    iscrowd = ground_truth.iscrowd
    n_images = ground_truth.n_images
    order = sorted(range(n_images), key=ground_truth.image_ids.__getitem__)
    image_pos = np.empty(n_images, dtype=np.int64)
    image_pos[order] = np.arange(n_images)
    category_ids = ground_truth.category_ids
    gt = gt_rows(ground_truth, iscrowd, image_pos, AREA_RANGES)

    det_image = image_pos[detections.image]
    det_category = np.searchsorted(category_ids, detections.category)
    grouped, rank, final = detection_orders(
        det_image, det_category, detections.score, max_det=MAX_DETS[-1]
    )
    group = det_category[grouped] * n_images + det_image[grouped]
    gt_start = np.searchsorted(gt.group, group, side="left")
    gt_count_of = np.searchsorted(gt.group, group, side="right") - gt_start
    min_iou = float(_MATCH_THRESHOLDS.min())
    if masks is None:
        pairs = candidate_pairs(
            detections.xywh[grouped], gt_start, gt_count_of, gt.xywh, gt.crowd, min_iou=min_iou
        )
        det_area = detections.xywh[:, 2] * detections.xywh[:, 3]
    else:
        pairs = mask_pairs(
            masks, grouped, group, gt_start, gt_count_of, gt.annotation, gt.crowd, min_iou=min_iou
        )
        det_area = masks.det_area
    candidates, taken = greedy_match(*pairs, group, gt.regular, gt.crowd, _MATCH_THRESHOLDS)

    position = np.empty(len(detections), dtype=np.int64)
    position[final] = np.arange(len(final))
    det_rank = np.empty(len(detections), dtype=np.int64)
    det_rank[grouped] = rank
    tp, ignored, matched = outcomes(
        gt,
        det_area[final],
        position[grouped[candidates]],
        taken,
        area_ranges=AREA_RANGES,
        n_thresholds=len(IOU_THRESHOLDS),
    )
    first_rows = np.flatnonzero(np.r_[True, gt.group[1:] != gt.group[:-1]])[: len(gt.group)]
    gt_pairs = gt.group[first_rows]
    gt_count = np.zeros((len(AREA_RANGES), len(first_rows)), dtype=np.int64)
    if len(first_rows):
        gt_count[:] = np.add.reduceat(gt.regular.astype(np.int64), first_rows, axis=0).T
    category = det_category[final]
    return CocoMatches(
        image_ids=[ground_truth.image_ids[i] for i in order],
        category_ids=category_ids,
        category_start=np.searchsorted(category, np.arange(len(category_ids) + 1)),
        det_result=detections.index[final],
        det_image=det_image[final],
        det_score=detections.score[final],
        det_rank=det_rank[final],
        matched=matched,
        tp=tp,
        ignored=ignored,
        gt_image=gt_pairs % max(n_images, 1),
        gt_category=gt_pairs // max(n_images, 1),
        gt_count=gt_count,
    )


def summarize(matches: CocoMatches, image_weights: np.ndarray | None = None) -> CocoStats:
    """COCOeval's accumulate and summarize over the matches, each image counted weight times.

    ``image_weights`` (I,) follows ``matches.image_ids``; finite and >= 0; None means ones.
    """
    weights = _image_weights(image_weights, matches.n_images)
    n_thr, n_rec, n_cat = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(matches.category_ids)
    n_areas, n_max = len(AREA_RANGES), len(MAX_DETS)
    precision = -np.ones((n_thr, n_rec, n_cat, n_areas, n_max))
    recall = -np.ones((n_thr, n_cat, n_areas, n_max))
    gt_weight = weights[matches.gt_image]
    npig = np.stack(
        [
            np.bincount(matches.gt_category, gt_weight * count, minlength=n_cat)
            for count in matches.gt_count
        ]
    )
    for k in range(n_cat):
        lo, hi = int(matches.category_start[k]), int(matches.category_start[k + 1])
        det_weight = weights[matches.det_image[lo:hi]]
        rank = matches.det_rank[lo:hi]
        for a in range(n_areas):
            if not npig[a, k] > 0:
                continue  # COCOeval leaves -1 where a category has no GT to find
            tp, ignored = matches.tp[a, :, lo:hi], matches.ignored[a, :, lo:hi]
            # Only detections that are a true positive at some threshold, or ignored at some
            # but not all, need a column per threshold. The others are ignored at every
            # threshold (they add nothing) or false positives at every one: those only raise
            # later columns' false-positive counts, which one cumsum carries, and their own
            # precision is at most that of the true positive before them (0 if none), so
            # leaving their columns out moves neither the envelope nor where a recall
            # threshold lands (the first column reaching it is a true positive).
            always_ignored = ignored.all(axis=0)
            varies = tp.any(axis=0) | (ignored.any(axis=0) & ~always_ignored)
            always_fp = ~(varies | always_ignored)
            for m, max_det in enumerate(MAX_DETS):
                within = rank < max_det
                fp_elsewhere = np.cumsum(det_weight * (always_fp & within))
                columns = np.flatnonzero(varies & within)
                column_weight = det_weight[columns]
                column_tp = tp[:, columns]
                column_fp = ~(column_tp | ignored[:, columns])
                _fill_curve(
                    np.cumsum(column_tp * column_weight, axis=1),
                    np.cumsum(column_fp * column_weight, axis=1) + fp_elsewhere[columns],
                    npig[a, k],
                    precision[:, :, k, a, m],
                    recall[:, k, a, m],
                )
    per_class_ap = {
        int(cat): _defined_mean(precision[:, :, k, 0, -1])
        for k, cat in enumerate(matches.category_ids.tolist())
    }
    return CocoStats(
        stats=_summary_stats(precision, recall),
        per_class_ap={cat: (None if ap < 0 else ap) for cat, ap in per_class_ap.items()},
        precision=precision,
        recall=recall,
    )


def _fill_curve(
    tp_sum: np.ndarray,
    fp_sum: np.ndarray,
    npig: float,
    precision: np.ndarray,
    recall: np.ndarray,
) -> None:
    """Write one (category, area, maxDets) cell of precision (T, R) and recall (T,)."""
    n = tp_sum.shape[1]
    precision[:] = 0.0
    if not n:
        recall[:] = 0.0
        return
    rc = tp_sum / npig
    pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    # Precision envelope: the best precision at this recall or any higher one.
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
    recall[:] = rc[:, -1]
    for t in range(len(rc)):
        at = np.searchsorted(rc[t], RECALL_THRESHOLDS, side="left")
        reached = at < n  # recall thresholds beyond the last detection keep precision 0
        precision[t, reached] = pr[t, at[reached]]


def _defined_mean(values: np.ndarray) -> float:
    """Mean of the entries > -1, or -1 when there are none (COCOeval's _summarize)."""
    defined = values[values > -1]
    return float(np.mean(defined)) if defined.size else -1.0


def _summary_stats(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """COCOeval.summarize's 12 numbers, with its slicing (an IoU missing from the grid: -1)."""

    def select(values: np.ndarray, iou: float | None) -> np.ndarray:
        return values if iou is None else values[np.flatnonzero(iou == IOU_THRESHOLDS)]

    def ap(iou: float | None = None, area: str = "all") -> float:
        values = select(precision, iou)[:, :, :, AREA_LABELS.index(area), -1]
        return _defined_mean(values)

    def ar(max_det: int = 100, area: str = "all") -> float:
        values = recall[:, :, AREA_LABELS.index(area), MAX_DETS.index(max_det)]
        return _defined_mean(values)

    return np.array(
        [
            ap(),
            ap(iou=0.5),
            ap(iou=0.75),
            ap(area="small"),
            ap(area="medium"),
            ap(area="large"),
            ar(1),
            ar(10),
            ar(100),
            ar(area="small"),
            ar(area="medium"),
            ar(area="large"),
        ]
    )


def _image_weights(weights: np.ndarray | None, n_images: int) -> np.ndarray:
    """The weights as float64 (I,), ones for None; anything else is refused."""
    if weights is None:
        return np.ones(n_images)
    array = np.asarray(weights, dtype=np.float64)
    if array.shape != (n_images,) or not np.isfinite(array).all() or (array < 0).any():
        raise ValueError(
            f"image_weights must be {n_images} finite numbers >= 0, one per image in "
            f"CocoMatches.image_ids order; got shape {array.shape}"
        )
    return array

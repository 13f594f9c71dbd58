"""Assign every prediction one outcome, TIDE-style (Bolya et al., ECCV 2020).

Thresholds: foreground IoU ``t_f = 0.5`` and background IoU ``t_b = 0.1``. "Regular" GT are
annotations with neither ``iscrowd=1`` nor ``ignore=1``; the others are *regions*.

Predictions with score >= ``score_thr`` are processed per image in descending score order,
ties broken by their position in the results list. The first rule that applies decides:

1. ``tp`` -- an unmatched regular GT of the prediction's class has IoU >= t_f; the
   prediction takes the one with the highest IoU (ties: earlier annotation) and marks it
   matched. This is COCOeval's greedy matching at IoU 0.5.
2. ``ignored`` -- a region of the prediction's class covers it: intersection / prediction
   area >= t_f (COCO's crowd IoU). Not an error; left out of AP, as COCOeval does.
3. ``localization`` -- the best IoU with a regular GT of its class (matched or not) is in
   [t_b, t_f). Relevant GT: that box.
4. ``classification`` -- IoU >= t_f with a regular GT of another class. Relevant GT: the
   other-class box with the highest IoU.
5. ``duplicate`` -- IoU >= t_f with a GT of its class; by rule 1 every such box was already
   matched by a higher-scoring prediction. Relevant GT: the best-overlapping one.
6. ``both`` -- the best IoU with any regular GT is in [t_b, t_f); by rule 3 that box is of
   another class. Relevant GT: that box.
7. ``background`` -- IoU < t_b with every regular GT (or the image has none).

Rules 3 to 7 are the order of the reference implementation of TIDE (localization is tested
before classification, classification before duplicate). Afterwards every regular GT left
unmatched is ``missed``; regions are never missed. A missed GT that is the relevant GT of a
classification or localization error is also flagged ``covered``: TIDE's missed-GT error
excludes it because fixing that prediction would recover it (see ``tide.py``).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend.analysis.geometry import iter_pair_blocks
from backend.analysis.inputs import Detections, GroundTruth, parse_ground_truth, parse_results
from backend.analysis.tables import DEFAULTS, PREDICTION_OUTCOMES, code

__all__ = [
    "BACKGROUND_IOU",
    "FOREGROUND_IOU",
    "GtMatch",
    "MatchTable",
    "PredictionMatch",
    "match_predictions",
    "match_table",
]

FOREGROUND_IOU = 0.5
BACKGROUND_IOU = 0.1

# MatchTable.outcome holds the codes of the outcomes table (positions in PREDICTION_OUTCOMES)
TP, CLASSIFICATION, LOCALIZATION = code("tp"), code("classification"), code("localization")
BOTH, DUPLICATE, BACKGROUND, IGNORED = (
    code("both"),
    code("duplicate"),
    code("background"),
    code("ignored"),
)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building many small acyclic objects.

    Each collection would walk every live object, including the caller's results dicts;
    at 500k predictions that is most of the construction time. Restores the prior state.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# Not frozen: frozen dataclasses construct ~4x slower, which counts at 500k predictions.
@dataclass(slots=True)
class PredictionMatch:
    """Outcome of one prediction; ``gt_id`` / ``gt_category_id`` name the relevant GT."""

    image_id: Any
    pred_index: int  # position in the input results list
    category_id: int
    score: float
    bbox: tuple[float, ...]  # [x, y, w, h]
    error_type: str  # one of tables.PREDICTION_OUTCOMES
    iou: float  # IoU with the relevant GT (IoA with the region for "ignored")
    gt_id: int | None
    gt_category_id: int | None


@dataclass(slots=True)
class GtMatch:
    """Outcome of one GT annotation."""

    annotation_id: int
    image_id: Any
    category_id: int
    bbox: tuple[float, ...]  # [x, y, w, h]
    ignored: bool  # iscrowd=1 or ignore=1: a region, never missed
    missed: bool
    covered: bool  # missed, but the relevant GT of a classification/localization error
    matched_pred_index: int | None  # results-list position of the tp that matched it


@dataclass(frozen=True, eq=False)
class MatchTable:
    """Columnar matching result; prediction arrays follow ``detections`` order."""

    ground_truth: GroundTruth
    detections: Detections
    outcome: np.ndarray  # (n,) int8 outcome code (tables.code)
    gt: np.ndarray  # (n,) relevant GT position, -1 for none
    iou: np.ndarray  # (n,) IoU with the relevant GT; best IoU with any GT for background
    gt_matched_by: np.ndarray  # (n_gt,) detection position of the matching tp, -1 for none
    gt_missed: np.ndarray  # (n_gt,) bool
    gt_covered: np.ndarray  # (n_gt,) bool

    def predictions(self) -> list[PredictionMatch]:
        """One PredictionMatch per kept detection, in results-list order."""
        gt_truth, det = self.ground_truth, self.detections
        has_gt = self.gt >= 0
        # Padding keeps the gathers valid for detections without a relevant GT.
        gt_ids = np.append(gt_truth.ann_ids, 0)[self.gt]
        gt_cats = np.append(gt_truth.category, 0)[self.gt]
        image_ids = gt_truth.image_ids
        # Positional arguments: measurably faster than keywords at this volume.
        with _gc_paused():
            return [
                PredictionMatch(
                    image_ids[img],
                    idx,
                    cat,
                    score,
                    tuple(box),
                    PREDICTION_OUTCOMES[out],
                    iou,
                    gid if has else None,
                    gcat if has else None,
                )
                for img, idx, cat, score, box, out, iou, has, gid, gcat in zip(
                    det.image.tolist(),
                    det.index.tolist(),
                    det.category.tolist(),
                    det.score.tolist(),
                    det.xywh.tolist(),
                    self.outcome.tolist(),
                    self.iou.tolist(),
                    has_gt.tolist(),
                    gt_ids.tolist(),
                    gt_cats.tolist(),
                    strict=True,
                )
            ]

    def ground_truth_matches(self) -> list[GtMatch]:
        """One GtMatch per GT annotation, in ``gt["annotations"]`` order."""
        gt_truth, det_index = self.ground_truth, self.detections.index
        matched = np.append(det_index, -1)[self.gt_matched_by]  # -1 stays -1
        image_ids = gt_truth.image_ids
        with _gc_paused():
            return [
                GtMatch(
                    annotation_id=ann_id,
                    image_id=image_ids[img],
                    category_id=cat,
                    bbox=tuple(box),
                    ignored=crowd,
                    missed=missed,
                    covered=covered,
                    matched_pred_index=pred if pred >= 0 else None,
                )
                for ann_id, img, cat, box, crowd, missed, covered, pred in zip(
                    gt_truth.ann_ids.tolist(),
                    gt_truth.image.tolist(),
                    gt_truth.category.tolist(),
                    gt_truth.xywh.tolist(),
                    gt_truth.crowd.tolist(),
                    self.gt_missed.tolist(),
                    self.gt_covered.tolist(),
                    matched.tolist(),
                    strict=True,
                )
            ]


def _greedy_tp(
    rank: np.ndarray, cand_pred: np.ndarray, cand_gt: np.ndarray, cand_iou: np.ndarray, n_gt: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match candidates (same class, regular GT, IoU >= t_f) in rank order, best IoU first.

    Returns the positions of the matched predictions and GT, and the pairs' IoU. Only
    predictions with at least one candidate enter this Python loop, which keeps it cheap.
    """
    order = np.lexsort((cand_gt, -cand_iou, rank[cand_pred]))
    used = bytearray(n_gt)
    taken: list[int] = []
    last = -1
    for i, p, g in zip(
        order.tolist(), cand_pred[order].tolist(), cand_gt[order].tolist(), strict=True
    ):
        if p == last or used[g]:
            continue
        used[g] = 1
        last = p
        taken.append(i)
    chosen = np.array(taken, dtype=np.int64)
    return cand_pred[chosen], cand_gt[chosen], cand_iou[chosen]


def match_table(ground_truth: GroundTruth, detections: Detections) -> MatchTable:
    """Classify every detection and GT (rules in the module docstring), vectorised per block."""
    n, n_gt = len(detections), len(ground_truth.ann_ids)
    regular = ~ground_truth.crowd
    best_same = np.full(n, -1.0)  # best IoU with a regular GT of the same class
    best_same_gt = np.full(n, -1, dtype=np.int64)
    best_other = np.full(n, -1.0)  # best IoU with a regular GT of another class
    best_other_gt = np.full(n, -1, dtype=np.int64)
    best_region = np.full(n, -1.0)  # best IoA with a region of the same class
    best_region_gt = np.full(n, -1, dtype=np.int64)
    # Pairs that could become tp: same class, regular GT, IoU >= t_f.
    cand_pred: list[np.ndarray] = []
    cand_gt: list[np.ndarray] = []
    cand_iou: list[np.ndarray] = []

    for block in iter_pair_blocks(
        detections.xywh,
        detections.image,
        ground_truth.xywh,
        ground_truth.image,
        ground_truth.n_images,
    ):
        rows, gt = block.rows, block.gt
        same = detections.category[rows][:, None] == ground_truth.category[gt]
        reg = regular[gt]
        for mask, values, best, best_gt in (
            (same & reg, block.iou, best_same, best_same_gt),
            (~same & reg, block.iou, best_other, best_other_gt),
            (same & ~reg, block.ioa, best_region, best_region_gt),
        ):
            masked = np.where(mask, values, -1.0)
            col = masked.argmax(axis=1)
            best[rows] = masked[np.arange(len(rows)), col]
            best_gt[rows] = np.where(best[rows] >= 0, gt[np.arange(len(rows)), col], -1)
        r, c = np.nonzero(same & reg & (block.iou >= FOREGROUND_IOU))
        cand_pred.append(rows[r])
        cand_gt.append(gt[r, c])
        cand_iou.append(block.iou[r, c])

    # Global processing order: image, descending score, then results-list position.
    order = np.lexsort((detections.index, -detections.score, detections.image))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    empty_i, empty_f = np.zeros(0, dtype=np.int64), np.zeros(0)
    tp_pred, tp_gt, tp_iou = _greedy_tp(
        rank,
        np.concatenate(cand_pred) if cand_pred else empty_i,
        np.concatenate(cand_gt) if cand_gt else empty_i,
        np.concatenate(cand_iou) if cand_iou else empty_f,
        n_gt,
    )

    outcome = np.full(n, BACKGROUND, dtype=np.int8)
    rel_gt = np.full(n, -1, dtype=np.int64)
    iou = np.maximum(np.maximum(best_same, best_other), 0.0)
    undecided = np.ones(n, dtype=bool)

    def assign(mask: np.ndarray, code: int, gt_pos: np.ndarray, values: np.ndarray) -> None:
        mask = mask & undecided
        outcome[mask] = code
        rel_gt[mask] = gt_pos[mask]
        iou[mask] = values[mask]
        undecided[mask] = False

    is_tp = np.zeros(n, dtype=bool)
    is_tp[tp_pred] = True
    matched_gt = np.full(n, -1, dtype=np.int64)
    matched_gt[tp_pred] = tp_gt
    matched_iou = np.zeros(n)
    matched_iou[tp_pred] = tp_iou
    assign(is_tp, TP, matched_gt, matched_iou)
    assign(best_region >= FOREGROUND_IOU, IGNORED, best_region_gt, best_region)
    assign(
        (best_same >= BACKGROUND_IOU) & (best_same < FOREGROUND_IOU),
        LOCALIZATION,
        best_same_gt,
        best_same,
    )
    assign(best_other >= FOREGROUND_IOU, CLASSIFICATION, best_other_gt, best_other)
    assign(best_same >= FOREGROUND_IOU, DUPLICATE, best_same_gt, best_same)
    assign(best_other >= BACKGROUND_IOU, BOTH, best_other_gt, best_other)

    gt_matched_by = np.full(n_gt, -1, dtype=np.int64)
    gt_matched_by[tp_gt] = tp_pred
    gt_missed = regular & (gt_matched_by < 0)
    gt_covered = np.zeros(n_gt, dtype=bool)
    fixers = (outcome == CLASSIFICATION) | (outcome == LOCALIZATION)
    gt_covered[rel_gt[fixers]] = True
    gt_covered &= gt_missed
    return MatchTable(
        ground_truth=ground_truth,
        detections=detections,
        outcome=outcome,
        gt=rel_gt,
        iou=iou,
        gt_matched_by=gt_matched_by,
        gt_missed=gt_missed,
        gt_covered=gt_covered,
    )


def match_predictions(
    gt: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    *,
    score_thr: float = DEFAULTS.count_score_thr,
) -> tuple[list[PredictionMatch], list[GtMatch]]:
    """Validate, then match results to GT (rules in the module docstring)."""
    ground_truth = parse_ground_truth(gt)
    table = match_table(ground_truth, parse_results(results, ground_truth, score_thr=score_thr))
    return table.predictions(), table.ground_truth_matches()

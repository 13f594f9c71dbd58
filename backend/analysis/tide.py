"""AP50 and TIDE's dAP per error type (Bolya et al., ECCV 2020), with error counts.

AP50 is COCO's: per class, predictions sorted by descending score (ties: image id, then
results-list position, as COCOeval orders them), precision made monotone from the right,
sampled at the 101 recall points 0, 0.01, ..., 1 and averaged; the mean runs over the
classes that have regular GT. ``ignored`` predictions are left out, as COCOeval does. Unlike
COCOeval there is no cap of 100 detections per image. All AP values are in points (0..100).

dAP of an error type = AP50 after applying only that type's oracle fix - original AP50:

- classification: the prediction takes its relevant GT's class and becomes a tp for that GT,
  unless the GT is already matched by a tp or claimed by a higher-scoring classification
  error being fixed; then it is suppressed (it would be a duplicate).
- localization: the box becomes its relevant GT's box; same rule (tp or suppressed).
- both, duplicate, background: the prediction is suppressed.
- missed: TIDE's fix -- the GT count of each class is reduced by its missed GT, except those
  ``covered`` by a classification or localization error (that fix recovers them instead).
  A class whose GT count drops to 0 scores 100 if it has no predictions, else 0; it stays
  in the mean, so the set of averaged classes never changes.

Only errors of the type being fixed compete for a GT. No fix can lower AP, so every dAP is
>= 0 (up to rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backend.analysis.matching import (
    BACKGROUND,
    BOTH,
    CLASSIFICATION,
    DUPLICATE,
    IGNORED,
    LOCALIZATION,
    TP,
    MatchTable,
)
from backend.analysis.tables import FILTERABLE_ERRORS, PREDICTION_OUTCOMES

__all__ = [
    "RECALL_THRESHOLDS",
    "ap50",
    "class_error_counts",
    "delta_ap",
    "error_counts",
]

RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True, eq=False)
class _Entries:
    """Predictions that take part in AP: category id, score, tp flag and tie-break keys."""

    category: np.ndarray
    score: np.ndarray
    is_tp: np.ndarray
    image_rank: np.ndarray
    index: np.ndarray

    def select(self, keep: np.ndarray) -> _Entries:
        return _Entries(
            self.category[keep],
            self.score[keep],
            self.is_tp[keep],
            self.image_rank[keep],
            self.index[keep],
        )


def _class_ap(is_tp: np.ndarray, n_positive: int) -> float:
    """COCO 101-point AP (0..1) of one class's score-sorted tp flags."""
    if n_positive == 0:
        return 1.0 if len(is_tp) == 0 else 0.0
    if len(is_tp) == 0:
        return 0.0
    tp = np.cumsum(is_tp)
    fp = np.arange(1, len(is_tp) + 1) - tp
    recall = tp / n_positive
    precision = np.maximum.accumulate((tp / (tp + fp))[::-1])[::-1]
    at = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
    sampled = np.zeros(len(RECALL_THRESHOLDS))
    valid = at < len(precision)
    sampled[valid] = precision[at[valid]]
    return float(sampled.mean())


def _mean_ap(
    entries: _Entries, classes: np.ndarray, n_positive: np.ndarray
) -> tuple[float, dict[int, float]]:
    """Mean AP50 in points over ``classes`` (ids, ascending) with per-class GT counts."""
    order = np.lexsort((entries.index, entries.image_rank, -entries.score, entries.category))
    category = entries.category[order]
    is_tp = entries.is_tp[order]
    lo = np.searchsorted(category, classes, side="left")
    hi = np.searchsorted(category, classes, side="right")
    per_class = {
        int(c): 100.0 * _class_ap(is_tp[a:b], int(n))
        for c, a, b, n in zip(classes, lo, hi, n_positive, strict=True)
    }
    mean = float(np.mean(list(per_class.values()))) if per_class else 0.0
    return mean, per_class


def _image_rank(table: MatchTable) -> np.ndarray:
    """Rank of each detection's image id (COCOeval's order); gt["images"] order if unsortable."""
    ids = table.ground_truth.image_ids
    try:
        order = sorted(range(len(ids)), key=ids.__getitem__)
    except TypeError:
        order = list(range(len(ids)))
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids))
    return rank[table.detections.image]


def _setup(table: MatchTable) -> tuple[_Entries, np.ndarray, np.ndarray]:
    """AP entries (non-ignored detections), averaged classes and their regular GT counts."""
    gt = table.ground_truth
    det = table.detections
    regular = ~gt.crowd
    classes, n_positive = np.unique(gt.category[regular], return_counts=True)
    entries = _Entries(
        category=det.category,
        score=det.score,
        is_tp=table.outcome == TP,
        image_rank=_image_rank(table),
        index=det.index,
    )
    keep = table.outcome != IGNORED
    return entries.select(keep), classes, n_positive


def _fix_by_gt(table: MatchTable, entries: _Entries, code: int, take_gt_class: bool) -> _Entries:
    """Classification/localization oracle: the best-scored error per free GT becomes a tp."""
    outcome = table.outcome[table.outcome != IGNORED]
    rel_gt = table.gt[table.outcome != IGNORED]
    errors = np.flatnonzero(outcome == code)
    order = np.lexsort((entries.index[errors], entries.image_rank[errors], -entries.score[errors]))
    errors = errors[order]
    target = rel_gt[errors]
    free = table.gt_matched_by[target] < 0
    _, first = np.unique(target[free], return_index=True)
    winners = errors[free][first]
    winners_gt = target[free][first]

    category = entries.category.copy()
    is_tp = entries.is_tp.copy()
    if take_gt_class:
        category[winners] = table.ground_truth.category[winners_gt]
    is_tp[winners] = True
    keep = outcome != code
    keep[winners] = True
    fixed = _Entries(category, entries.score, is_tp, entries.image_rank, entries.index)
    return fixed.select(keep)


def ap50(table: MatchTable) -> tuple[float, dict[int, float]]:
    """Mean AP50 in points (0..100) and AP50 per category id that has regular GT."""
    entries, classes, n_positive = _setup(table)
    return _mean_ap(entries, classes, n_positive)


def delta_ap(table: MatchTable) -> dict[str, float]:
    """dAP50 in points for each of ERROR_TYPES and "missed" (fixes in the module docstring)."""
    entries, classes, n_positive = _setup(table)
    base, _ = _mean_ap(entries, classes, n_positive)
    outcome = table.outcome[table.outcome != IGNORED]
    fixed: dict[str, float] = {}
    fixed["classification"], _ = _mean_ap(
        _fix_by_gt(table, entries, CLASSIFICATION, take_gt_class=True), classes, n_positive
    )
    fixed["localization"], _ = _mean_ap(
        _fix_by_gt(table, entries, LOCALIZATION, take_gt_class=False), classes, n_positive
    )
    for name, code in (("both", BOTH), ("duplicate", DUPLICATE), ("background", BACKGROUND)):
        fixed[name], _ = _mean_ap(entries.select(outcome != code), classes, n_positive)
    gt = table.ground_truth
    lost = np.searchsorted(classes, gt.category[table.gt_missed & ~table.gt_covered])
    remaining = n_positive - np.bincount(lost, minlength=len(classes))
    fixed["missed"], _ = _mean_ap(entries, classes, remaining)
    return {name: fixed[name] - base for name in FILTERABLE_ERRORS}


def error_counts(table: MatchTable) -> dict[str, int]:
    """Number of predictions per outcome; "missed": every regular GT no prediction matched;
    "missed_not_covered": those of them no classification or localization error points at
    (the ones the "missed" dAP removes, as TIDE defines its missed-GT error)."""
    counts = np.bincount(table.outcome, minlength=len(PREDICTION_OUTCOMES))
    result = {name: int(c) for name, c in zip(PREDICTION_OUTCOMES, counts, strict=True)}
    result["missed"] = int(table.gt_missed.sum())
    result["missed_not_covered"] = int((table.gt_missed & ~table.gt_covered).sum())
    return result


def class_error_counts(table: MatchTable) -> dict[int, dict[str, int]]:
    """error_counts per category id: the prediction's category, the GT's for "missed"."""
    gt = table.ground_truth
    cats = gt.category_ids
    n_cat = len(cats)
    pred_cat = np.searchsorted(cats, table.detections.category)
    grid = np.bincount(
        pred_cat * len(PREDICTION_OUTCOMES) + table.outcome,
        minlength=n_cat * len(PREDICTION_OUTCOMES),
    ).reshape(n_cat, len(PREDICTION_OUTCOMES))

    def per_class(mask: np.ndarray) -> list[int]:
        return np.bincount(np.searchsorted(cats, gt.category[mask]), minlength=n_cat).tolist()

    missed = per_class(table.gt_missed)
    not_covered = per_class(table.gt_missed & ~table.gt_covered)
    return {
        int(c): {
            **{name: int(v) for name, v in zip(PREDICTION_OUTCOMES, row, strict=True)},
            "missed": m,
            "missed_not_covered": u,
        }
        for c, row, m, u in zip(cats, grid, missed, not_covered, strict=True)
    }

"""COCO's AP figures for many image weightings at once: the engine's accumulate and summarize,
restricted to precision at 100 detections, vectorised over a block of weight vectors.

With integer weights every count COCOeval accumulates (true positives, false positives, GT
boxes) is an integer linear in the weights, so each is exact whatever the order of summation,
and the precision and AP computed from them equal ``engine.summarize(matches, weights)`` to the
last bit. Per area range, only three things are read per weighting:

- at each detection that is a true positive at some IoU threshold, the weighted count of the
  detections up to it that are not ignored at every threshold (a sparse matrix of image counts
  between consecutive such detections, times the weights, cumulated);
- at the true positives of threshold t, their own weights cumulated, minus the detections
  ignored at t but not at every threshold (rare: matched to an ignored GT box);
- per category, the weighted count of GT boxes.

As in ``summarize``, detections that are false positives or ignored at every threshold need no
column, and precision is read at true positives only: a later non-true-positive column has no
more precision than the true positive before it and reaches no new recall. Recall thresholds are
found by integer lookups (the least true-positive count whose recall reaches each threshold),
not by a search per weighting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from backend.analysis.engine import (
    AREA_RANGES,
    IOU_THRESHOLDS,
    MAX_DETS,
    RECALL_THRESHOLDS,
    CocoMatches,
)

__all__ = ["N_STATS", "ResamplePlan", "plan_resampling", "weighted_stats"]

N_STATS = 6  # COCOeval.stats[:6]: AP, AP50, AP75, APs, APm, APl (tables.METRICS)
_N_RECALL = len(RECALL_THRESHOLDS)
_EPS = np.spacing(1)  # as accumulate adds to every precision denominator
_AP50 = np.flatnonzero(IOU_THRESHOLDS == 0.5)
_AP75 = np.flatnonzero(IOU_THRESHOLDS == 0.75)
_AREA_STAT = (0, 3, 4, 5)  # the stat each area range's AP is: AP (all), APs, APm, APl
# Weighted counts are exact in int32 while a weighting's total weight times the detections kept
# per image and category stays below this.
_INT32_LIMIT = 2**31 - 1


@dataclass(frozen=True, eq=False)
class _ThresholdRows:
    """The true positives of one area range at one IoU threshold, in accumulate order."""

    column: np.ndarray  # (n,) position among the area's tp-columns
    image: np.ndarray  # (n,) image position
    category: np.ndarray  # (n,) category position
    starts: np.ndarray  # (K + 1,) rows of category k: [starts[k], starts[k + 1])
    ignored: sparse.csr_matrix | None  # (n, I) images of detections ignored at this threshold
    # only, counted at the first true positive after them; None when there are none


@dataclass(frozen=True, eq=False)
class _AreaPlan:
    """What one area range needs: counts before each tp-column, GT counts, threshold rows."""

    counted: sparse.csr_matrix  # (U, I) images of the not-always-ignored detections since the
    # previous tp-column of the category, up to and including this one
    column_starts: np.ndarray  # (K + 1,) tp-columns of category k
    gt: sparse.csr_matrix  # (K, I) GT boxes not ignored in this area, by category and image
    thresholds: tuple[_ThresholdRows, ...]  # one per IoU threshold


@dataclass(frozen=True, eq=False)
class ResamplePlan:
    """A CocoMatches reduced to what precision at 100 detections needs, for any weighting."""

    n_images: int
    n_categories: int
    areas: tuple[_AreaPlan, ...]  # in AREA_RANGES order


def plan_resampling(matches: CocoMatches) -> ResamplePlan:
    """Index the matches once so that ``weighted_stats`` can score many weightings."""
    n_images, n_cats = matches.n_images, len(matches.category_ids)
    category = np.repeat(np.arange(n_cats), np.diff(matches.category_start))
    areas = []
    for a in range(len(AREA_RANGES)):
        tp, ignored = matches.tp[a], matches.ignored[a]
        always_ignored = ignored.all(axis=0)
        columns = np.flatnonzero(tp.any(axis=0))  # tp-columns, ascending
        column_cat = category[columns]
        # Detections after the last tp-column of their category change no precision read.
        counted = _counts_at_next(
            np.flatnonzero(~always_ignored), columns, category, matches.det_image, n_images
        )
        sometimes_ignored = ignored & ~always_ignored
        thresholds = []
        for t in range(len(IOU_THRESHOLDS)):
            column = np.flatnonzero(tp[t, columns])
            position = columns[column]
            ignored_here = np.flatnonzero(sometimes_ignored[t])
            thresholds.append(
                _ThresholdRows(
                    column=column,
                    image=matches.det_image[position],
                    category=column_cat[column],
                    starts=np.searchsorted(column_cat[column], np.arange(n_cats + 1)),
                    ignored=(
                        _counts_at_next(
                            ignored_here, position, category, matches.det_image, n_images
                        )
                        if len(ignored_here)
                        else None
                    ),
                )
            )
        gt = sparse.csr_matrix(
            (matches.gt_count[a].astype(np.int32), (matches.gt_category, matches.gt_image)),
            shape=(n_cats, n_images),
        )
        gt.eliminate_zeros()
        areas.append(
            _AreaPlan(
                counted=counted,
                column_starts=np.searchsorted(column_cat, np.arange(n_cats + 1)),
                gt=gt,
                thresholds=tuple(thresholds),
            )
        )
    return ResamplePlan(n_images=n_images, n_categories=n_cats, areas=tuple(areas))


def weighted_stats(plan: ResamplePlan, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(stats (W, 6), per-class AP (W, K)) of W integer weightings (W, I); NaN where undefined.

    Row w equals ``summarize(matches, weights[w])``: its stats[:6] and per_class_ap, bit for
    bit (-1 and None there are NaN here).
    """
    weights = np.asarray(weights)
    if weights.ndim != 2 or weights.shape[1] != plan.n_images:
        raise ValueError(f"weights must be (W, {plan.n_images}); got shape {weights.shape}")
    if weights.dtype.kind not in "iu" or (weights < 0).any():
        raise ValueError("weights must be integers >= 0 (resampling counts)")
    total = int(weights.sum(axis=1).max(initial=0))
    dtype = np.int32 if total * MAX_DETS[-1] < _INT32_LIMIT else np.int64
    columns_weights = np.ascontiguousarray(weights.T, dtype=dtype)  # (I, W)
    n_rows = len(weights)
    stats = np.full((n_rows, N_STATS), np.nan)
    per_class = np.full((n_rows, plan.n_categories), np.nan)
    for a, area in enumerate(plan.areas):
        precision, defined = _area_precision(area, columns_weights)
        stats[:, _AREA_STAT[a]] = _defined_mean(precision, defined)
        if a == 0:
            stats[:, 1] = _defined_mean(precision[:, _AP50], defined)
            stats[:, 2] = _defined_mean(precision[:, _AP75], defined)
            by_class = np.ascontiguousarray(np.moveaxis(precision, 3, 1))  # (W, K, T, R)
            means = by_class.reshape(n_rows, plan.n_categories, -1).mean(axis=2)
            per_class[defined] = means[defined]
    return stats, per_class


def _area_precision(area: _AreaPlan, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval's precision (W, T, R, K) of one area range at 100 detections, and which
    categories have GT (W, K); ``weights`` is (I, W)."""
    n_rows = weights.shape[1]
    n_cats = area.gt.shape[0]
    npig = np.ascontiguousarray((area.gt @ weights).T)  # (W, K)
    defined = npig > 0
    counted = np.ascontiguousarray((area.counted @ weights).T)  # (W, U)
    _cumsum_by_segment(counted, area.column_starts)
    table, offset = _recall_table(npig)
    precision = np.zeros((n_rows, len(IOU_THRESHOLDS), _N_RECALL, n_cats))
    rows = np.arange(n_rows)[:, None]
    for t, threshold in enumerate(area.thresholds):
        if not len(threshold.column):
            continue  # no true positive: precision stays 0 (and -1 where no GT, masked later)
        tp = np.ascontiguousarray(weights[threshold.image].T)  # (W, n)
        _cumsum_by_segment(tp, threshold.starts)
        seen = counted[:, threshold.column]  # true and false positives up to each row
        if threshold.ignored is not None:
            ignored = np.ascontiguousarray((threshold.ignored @ weights).T)
            _cumsum_by_segment(ignored, threshold.starts)
            seen -= ignored
        # accumulate's tp / (fp + tp + eps), with fp + tp counted at once (exact integers)
        pr = tp / (seen + _EPS)
        _reverse_cummax_by_segment(pr, threshold.starts)
        # Recall thresholds: row q is the first to reach thresholds [reached(q-1), reached(q)).
        reached = table[offset[:, threshold.category] + tp]
        before = np.empty_like(reached)
        before[:, 1:] = reached[:, :-1]
        starts = threshold.starts[:-1][threshold.starts[:-1] < len(threshold.column)]
        before[:, starts] = 0
        w_at, q_at = np.nonzero(reached > before)
        first = np.full((n_rows, n_cats, _N_RECALL), -1, dtype=np.int64)
        first[w_at, threshold.category[q_at], before[w_at, q_at]] = q_at
        np.maximum.accumulate(first, axis=2, out=first)
        ends = threshold.starts[1:]
        nonempty = ends > threshold.starts[:-1]
        last_reached = np.zeros((n_rows, n_cats), dtype=reached.dtype)
        last_reached[:, nonempty] = reached[:, ends[nonempty] - 1]
        # Thresholds past the recall the category reaches keep precision 0.
        found = np.arange(_N_RECALL) < last_reached[:, :, None]
        values = np.where(found, pr[rows[:, :, None], first], 0.0)  # (W, K, R)
        precision[:, t] = values.transpose(0, 2, 1)
    return precision, defined


def _recall_table(npig: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(table, offset): table[offset[w, k] + x] counts the recall thresholds that x true
    positives reach in category k under weighting w (x / npig >= RECALL_THRESHOLDS[r], in
    floating point as accumulate compares), for x in 0..npig[w, k]."""
    n_rows, n_cats = npig.shape
    gt = npig.astype(np.int64)
    total = gt.astype(np.float64)[:, :, None]
    # The least x with x / npig >= threshold: ceil of the product, then a step either way
    # where rounding put it off by one (division is monotone in x, so the set is x >= least).
    least = np.ceil(RECALL_THRESHOLDS * total).astype(np.int64)
    for _ in range(2):
        with np.errstate(divide="ignore", invalid="ignore"):
            lower = (least > 0) & ((least - 1) / total >= RECALL_THRESHOLDS)
            least -= lower
            higher = least / total < RECALL_THRESHOLDS
            least += higher & (gt[:, :, None] > 0)
    least[gt == 0] = 0  # no GT: the category is undefined; one entry keeps the table regular
    sizes = (gt + 1).ravel()
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    hits = np.bincount((starts[:, None] + least.reshape(len(sizes), -1)).ravel(),
                       minlength=int(sizes.sum()))
    table = np.cumsum(hits) - np.repeat(np.arange(len(sizes)) * _N_RECALL, sizes)
    dtype = np.int16 if len(table) else np.int8
    return table.astype(dtype), starts.reshape(n_rows, n_cats)


def _defined_mean(precision: np.ndarray, defined: np.ndarray) -> np.ndarray:
    """Per row, the mean of precision (W, ..., K) over the categories with GT, as COCOeval's
    mean over entries > -1 (same elements, same order, so the same float); NaN where none."""
    n_rows = len(precision)
    out = np.full(n_rows, np.nan)
    every = defined.all(axis=1)
    out[every] = precision[every].reshape(int(every.sum()), -1).mean(axis=1)
    for w in np.flatnonzero(~every & defined.any(axis=1)):
        out[w] = precision[w][..., defined[w]].reshape(-1).mean()
    return out


def _cumsum_by_segment(values: np.ndarray, starts: np.ndarray) -> None:
    """Cumulative sums along axis 1, restarting at each segment [starts[k], starts[k + 1])."""
    for lo, hi in zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True):
        if hi > lo:
            np.cumsum(values[:, lo:hi], axis=1, out=values[:, lo:hi])


def _reverse_cummax_by_segment(values: np.ndarray, starts: np.ndarray) -> None:
    """accumulate's precision envelope: the maximum at or after each entry, per segment."""
    for lo, hi in zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True):
        if hi > lo:
            view = values[:, lo:hi][:, ::-1]
            np.maximum.accumulate(view, axis=1, out=view)


def _counts_at_next(
    detections: np.ndarray,
    columns: np.ndarray,
    category: np.ndarray,
    image: np.ndarray,
    n_images: int,
) -> sparse.csr_matrix:
    """(len(columns), I) counts of ``detections`` by image, each at the first of ``columns``
    at or after it in its category; those after the category's last column are dropped."""
    slot = np.searchsorted(columns, detections, side="left")
    inside = slot < len(columns)
    inside[inside] = category[columns[slot[inside]]] == category[detections[inside]]
    return sparse.csr_matrix(
        (
            np.ones(int(inside.sum()), dtype=np.int32),
            (slot[inside], image[detections[inside]]),
        ),
        shape=(len(columns), n_images),
    )

"""COCO's AP figures for many image weightings at once: the engine's accumulate and summarize,
restricted to precision at 100 detections (all that AP, AP50, AP75, APs/m/l and per-class AP
read), vectorised over a block of integer weightings (resampling counts).

With integer weights every count accumulate makes (true positives, false positives, GT boxes)
is an integer linear in the weights, exact in any order of summation, so the precision and AP
computed from them equal ``engine.summarize(matches, weights)`` to the last bit. Per area range,
a weighting needs:

- per category, its weighted count of GT boxes (a sparse (K, I) matrix times the weights);
- at each tp-column (a detection that is a true positive at some IoU threshold), the weighted
  count of the detections up to it that are not ignored at every threshold: a sparse matrix of
  image counts between consecutive tp-columns, times the weights, cumulated per category;
- at the true positives of threshold t, their own weights cumulated, less the detections
  ignored at t but not at every threshold (matched to an ignored GT box; few).

As in ``summarize``, detections false positive or ignored at every threshold need no column, and
precision is read at true positives only: any other column has no more precision than the true
positive before it and reaches no new recall. Which recall thresholds a row reaches comes from an
integer table (per category and weighting, the least true-positive count that passes each
threshold under accumulate's floating-point test), not from a search per weighting.
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
# Weightings scored together: bounds the (weightings x rows) arrays to about 16 MB each.
_CHUNK_ELEMENTS = 1 << 21
_MAX_CHUNK = 256
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

    @property
    def chunk(self) -> int:
        """How many weightings to score at once to keep memory bounded."""
        width = max(
            [area.counted.shape[0] for area in self.areas]
            + [len(IOU_THRESHOLDS) * _N_RECALL * self.n_categories, self.n_images]
        )
        return int(np.clip(_CHUNK_ELEMENTS // max(width, 1), 1, _MAX_CHUNK))


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
    weights = weights.astype(dtype, copy=False)
    n_rows = len(weights)
    stats = np.full((n_rows, N_STATS), np.nan)
    per_class = np.full((n_rows, plan.n_categories), np.nan)
    for a, area in enumerate(plan.areas):
        precision, defined = _area_precision(area, weights)
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
    categories have GT (W, K); ``weights`` is (W, I)."""
    n_rows, n_cats = len(weights), area.gt.shape[0]
    by_image = np.ascontiguousarray(weights.T)  # (I, W), for the sparse products
    npig = np.ascontiguousarray((area.gt @ by_image).T)  # (W, K)
    counted = np.ascontiguousarray((area.counted @ by_image).T)  # (W, U)
    _cumsum_by_segment(counted, area.column_starts)
    table, offset = _recall_table(npig)
    precision = np.zeros((n_rows, len(IOU_THRESHOLDS), _N_RECALL, n_cats))
    for t, rows in enumerate(area.thresholds):
        n = len(rows.column)
        if not n:
            continue  # no true positive: precision stays 0 (undefined categories are masked)
        tp = np.take(weights, rows.image, axis=1)  # (W, n)
        _cumsum_by_segment(tp, rows.starts)
        seen = counted[:, rows.column]  # true and false positives up to each row
        if rows.ignored is not None:
            ignored = np.ascontiguousarray((rows.ignored @ by_image).T)
            _cumsum_by_segment(ignored, rows.starts)
            seen -= ignored
        # accumulate's tp / (fp + tp + eps), with fp + tp counted at once (exact integers)
        pr = np.add(seen, _EPS)
        np.divide(tp, pr, out=pr)
        # reached: how many recall thresholds each row's recall meets. Rows of a category with
        # the same count form a run. accumulate's precision at threshold r is the best
        # precision of the rows reaching more than r thresholds (its envelope at the first of
        # them): the best of each run, put at its count, then a running maximum from the top
        # count down; 0 past the last count (a recall never reached).
        reached = np.take(table, np.take(offset, rows.category, axis=1) + tp)
        before = np.empty_like(reached)
        before[:, 1:] = reached[:, :-1]
        before[:, rows.starts[:-1][rows.starts[:-1] < n]] = 0
        run = np.flatnonzero(reached > before)  # flat (W, n) index; row 0 of each w is one
        best = np.maximum.reduceat(pr.reshape(-1), run)
        w_at, q_at = np.divmod(run, n)
        by_count = np.zeros((n_rows, n_cats, _N_RECALL + 1))
        by_count[w_at, rows.category[q_at], reached.reshape(-1)[run]] = best
        envelope = by_count[:, :, :0:-1]
        np.maximum.accumulate(envelope, axis=2, out=envelope)
        precision[:, t] = by_count[:, :, 1:].transpose(0, 2, 1)
    return precision, npig > 0


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
    hits = np.bincount(
        (starts[:, None] + least.reshape(len(sizes), -1)).ravel(), minlength=int(sizes.sum())
    )
    table = np.cumsum(hits) - np.repeat(np.arange(len(sizes)) * _N_RECALL, sizes)
    index = np.int32 if len(table) < _INT32_LIMIT else np.int64
    return table.astype(np.int16), starts.reshape(n_rows, n_cats).astype(index)


def _defined_mean(precision: np.ndarray, defined: np.ndarray) -> np.ndarray:
    """Per row, the mean of precision (W, ..., K) over the categories with GT, as COCOeval's
    mean over entries > -1 (same elements, same order, so the same float); NaN where none."""
    n_rows = len(precision)
    out = np.full(n_rows, np.nan)
    every = defined.all(axis=1)
    if every.any():
        out[every] = precision[every].reshape(int(every.sum()), -1).mean(axis=1)
    for w in np.flatnonzero(~every & defined.any(axis=1)):
        out[w] = precision[w][..., defined[w]].reshape(-1).mean()
    return out


def _cumsum_by_segment(values: np.ndarray, starts: np.ndarray) -> None:
    """Cumulative sums along axis 1, restarting at each segment [starts[k], starts[k + 1])."""
    for lo, hi in zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True):
        if hi > lo:
            np.cumsum(values[:, lo:hi], axis=1, out=values[:, lo:hi])


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

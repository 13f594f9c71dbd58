"""COCOeval's evaluate step (bbox) as array operations, for every (image, category) at once.

The orders COCOeval files GT and detections in, its IoU, its greedy matching, and each kept
detection's outcome per area range and IoU threshold.

COCOeval matches each group on its own: detections in score order, each taking the available
GT box of highest IoU >= t (the later box in GT order on ties), regular boxes before ignored
ones, crowd boxes never used up. Groups share no boxes, so step s of every group can run at
once, for all area ranges and IoU thresholds together. Only detections with an IoU >= the
lowest threshold can match anything, so only those take steps: the loop runs as many times as
the largest number of such detections in one group (at most the 100 kept per group).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backend.analysis.inputs import GroundTruth

__all__ = [
    "GtRows",
    "bbox_overlaps",
    "candidate_pairs",
    "detection_orders",
    "greedy_match",
    "gt_rows",
    "outcomes",
]


@dataclass(frozen=True, eq=False)
class GtRows:
    """GT boxes in COCOeval's order: by (category, image), then annotation order."""

    annotation: np.ndarray  # (G,) position in gt["annotations"]
    group: np.ndarray  # (G,) category position * n_images + image position, ascending
    xywh: np.ndarray  # (G, 4)
    crowd: np.ndarray  # (G,) int(iscrowd) != 0: IoU over detection area, never used up
    regular: np.ndarray  # (G, A) not ignored in area range a
    has_id: np.ndarray  # (G,) annotation id != 0 (COCOeval reads a match to id 0 as none)


def gt_rows(
    ground_truth: GroundTruth, iscrowd: np.ndarray, image_pos: np.ndarray, area_ranges: np.ndarray
) -> GtRows:
    """GT boxes as COCOeval files them; ``image_pos`` is each image's rank by id."""
    image = image_pos[ground_truth.image]
    category = np.searchsorted(ground_truth.category_ids, ground_truth.category)
    loaded = _loaded_rows(ground_truth.ann_ids)
    # COCO lists annotations image by image (sorted ids) and files each under the
    # (image, category) of the annotation its id loads.
    rows = loaded[np.lexsort((np.arange(len(loaded)), image, image[loaded], category[loaded]))]
    area = ground_truth.area[rows, None]
    return GtRows(
        annotation=rows,
        group=category[rows] * len(image_pos) + image[rows],
        xywh=ground_truth.xywh[rows],
        crowd=np.trunc(iscrowd[rows]) != 0,
        regular=(
            (iscrowd[rows, None] == 0) & ~(area < area_ranges[:, 0]) & ~(area > area_ranges[:, 1])
        ),
        has_id=ground_truth.ann_ids[rows] != 0,
    )


def detection_orders(
    image: np.ndarray, category: np.ndarray, score: np.ndarray, *, max_det: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(grouped, rank, final) over the detections COCOeval keeps (max_det per image, category).

    ``grouped``: by (category, image), then score descending, then results order, the order
    in which COCOeval matches; ``rank`` the position within that group; ``final``: by
    category, then score descending, image, results order, the order accumulate counts in.
    """
    by_image = _stable_argsort(image)
    ranked = by_image[np.argsort(-score[by_image], kind="stable")]
    grouped = ranked[_stable_argsort(image[ranked])]
    grouped = grouped[_stable_argsort(category[grouped])]
    rank = np.arange(len(grouped)) - _run_starts(
        category[grouped] * (image.max(initial=0) + 1) + image[grouped]
    )
    first = rank < max_det
    grouped, rank = grouped[first], rank[first]
    kept = np.zeros(len(score), dtype=bool)
    kept[grouped] = True
    final = ranked[kept[ranked]]
    return grouped, rank, final[_stable_argsort(category[final])]


def bbox_overlaps(det_xywh: np.ndarray, gt_xywh: np.ndarray, gt_crowd: np.ndarray) -> np.ndarray:
    """COCO's bbox IoU of paired boxes (rows), intersection over detection area for crowds.

    The arithmetic is maskApi.c's bbIou step for step, so thresholds decide as COCOeval does;
    an empty intersection is 0, which also scores zero-width or zero-height boxes.
    """
    dx, dy, dw, dh = det_xywh.T
    gx, gy, gw, gh = gt_xywh.T
    iw = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    ih = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    inter = iw * ih
    det_area = dw * dh
    union = np.where(gt_crowd, det_area, det_area + gw * gh - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((iw > 0) & (ih > 0), inter / union, 0.0)


def candidate_pairs(
    det_xywh: np.ndarray,
    det_gt_start: np.ndarray,
    det_gt_count: np.ndarray,
    gt_xywh: np.ndarray,
    gt_crowd: np.ndarray,
    *,
    min_iou: float,
    max_pairs: int = 1 << 20,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(det, gt, iou) of every detection paired with a GT box of its group with IoU >= min_iou.

    Detection i's group holds GT rows det_gt_start[i] : det_gt_start[i] + det_gt_count[i].
    Overlaps are computed in blocks of at most ``max_pairs`` pairs to bound memory.
    """
    ends = np.cumsum(det_gt_count)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    lo, n = 0, len(det_gt_count)
    while lo < n:
        done = int(ends[lo - 1]) if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, done + max_pairs, side="right")))
        counts = det_gt_count[lo:hi]
        dets = np.repeat(np.arange(lo, hi), counts)
        first = np.repeat(ends[lo:hi] - counts - done, counts)
        gts = np.repeat(det_gt_start[lo:hi], counts) + (np.arange(len(dets)) - first)
        iou = bbox_overlaps(det_xywh[dets], gt_xywh[gts], gt_crowd[gts])
        keep = iou >= min_iou
        found.append((dets[keep], gts[keep], iou[keep]))
        lo = hi
    if not found:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    return tuple(np.concatenate(parts) for parts in zip(*found, strict=True))  # type: ignore[return-value]


def greedy_match(
    pair_det: np.ndarray,
    pair_gt: np.ndarray,
    pair_iou: np.ndarray,
    det_group: np.ndarray,
    gt_regular: np.ndarray,
    gt_crowd: np.ndarray,
    thresholds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Match detections to GT rows as COCOeval does; returns (dets, matched).

    ``dets`` are the detections that appear in some pair, ascending; ``matched`` is
    (len(dets), A, T): the GT row each one took in area range a at threshold t, or -1.
    Detection indices must follow their group's score order (rank ascending within a group),
    GT rows their group's annotation order. ``gt_regular`` is (n_gt, A): not ignored in area
    range a. Pairs must hold every (det, gt) with IoU >= thresholds.min().
    """
    n_areas, n_thr = gt_regular.shape[1], len(thresholds)
    dets, pair_slot = np.unique(pair_det, return_inverse=True)
    matched = np.full((len(dets), n_areas, n_thr), -1, dtype=np.int64)
    if not len(dets):
        return dets, matched
    # Step of each detection: its position among its group's detections that have pairs.
    groups = det_group[dets]
    group_first = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    step = np.arange(len(dets)) - np.repeat(group_first, np.diff(np.r_[group_first, len(dets)]))
    # Within a step, each detection's pairs are contiguous and ascending by (iou, GT row): the
    # last available one is COCOeval's choice (highest IoU, the later GT on ties).
    order = np.lexsort((pair_gt, pair_iou, pair_slot, step[pair_slot]))
    slots, gts, ious = pair_slot[order], pair_gt[order], pair_iou[order]
    bounds = np.searchsorted(step[slots], np.arange(int(step.max()) + 2))
    used = np.zeros((len(gt_crowd), n_areas, n_thr), dtype=bool)
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        slot, gt, iou = slots[lo:hi], gts[lo:hi], ious[lo:hi]
        first = np.flatnonzero(np.r_[True, slot[1:] != slot[:-1]])
        segment = np.cumsum(np.r_[True, slot[1:] != slot[:-1]]) - 1
        ok = (~used[gt] | gt_crowd[gt, None, None]) & (iou[:, None, None] >= thresholds)
        regular = gt_regular[gt][:, :, None]
        ok_regular = ok & regular
        # Ignored boxes are candidates only when no regular box is.
        has_regular = np.logical_or.reduceat(ok_regular, first, axis=0)
        candidate = ok_regular | (ok & ~has_regular[segment])
        position = np.where(candidate, np.arange(len(gt))[:, None, None], -1)
        pick = np.maximum.reduceat(position, first, axis=0)
        seg, area, thr = np.nonzero(pick >= 0)
        taken = gt[pick[seg, area, thr]]
        used[taken, area, thr] = True
        matched[slot[first[seg]], area, thr] = taken
    return dets, matched


def outcomes(
    gt: GtRows,
    area: np.ndarray,
    columns: np.ndarray,
    taken: np.ndarray,
    *,
    area_ranges: np.ndarray,
    n_thresholds: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tp, ignored, matched), each (A, T, N), of detections of ``area`` (box or mask area, by
    which a detection is out of an area range) in accumulate order.

    ``columns`` are the detections that had a GT in reach, ``taken`` (len(columns), A, T)
    the GT row each took or -1; the others are unmatched everywhere.
    """
    n_areas, n_thr = len(area_ranges), n_thresholds
    out_of_range = (area < area_ranges[:, :1]) | (area > area_ranges[:, 1:])
    tp = np.zeros((n_areas, n_thr, len(area)), dtype=bool)
    ignored = np.repeat(out_of_range[:, None, :], n_thr, axis=1)
    matched = np.full((n_areas, n_thr, len(area)), -1, dtype=np.int32)
    if len(columns):
        hit = taken >= 0
        row = np.where(hit, taken, 0)
        regular = gt.regular[row, np.arange(n_areas)[:, None]]
        counted = hit & gt.has_id[row]
        tp[:, :, columns] = (counted & regular).transpose(1, 2, 0)
        ignored[:, :, columns] = (
            (hit & ~regular) | (~counted & out_of_range[:, columns].T[:, :, None])
        ).transpose(1, 2, 0)
        matched[:, :, columns] = np.where(hit, gt.annotation[row], -1).transpose(1, 2, 0)
    return tp, ignored, matched


def _stable_argsort(keys: np.ndarray) -> np.ndarray:
    """Stable argsort of non-negative integers, by radix sort when they fit in 16 bits."""
    if len(keys) and keys.max() < 1 << 16:
        keys = keys.astype(np.uint16)
    return np.argsort(keys, kind="stable")


def _run_starts(values: np.ndarray) -> np.ndarray:
    """For each entry of a grouped array, the index where its run of equal values starts."""
    if not len(values):
        return np.zeros(0, dtype=np.int64)
    first = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    return np.repeat(first, np.diff(np.r_[first, len(values)]))


def _loaded_rows(ann_ids: np.ndarray) -> np.ndarray:
    """The annotation COCO's index returns for each annotation: the last one with its id."""
    order = np.argsort(ann_ids, kind="stable")
    ids = ann_ids[order]
    new_id = np.r_[True, ids[1:] != ids[:-1]] if len(ids) else np.zeros(0, dtype=bool)
    if new_id.all():
        return np.arange(len(ann_ids))
    last = order[np.flatnonzero(np.r_[new_id[1:], True])]
    loaded = np.empty_like(order)
    loaded[order] = last[np.cumsum(new_id) - 1]
    return loaded

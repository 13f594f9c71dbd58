"""Detection confusion matrix with mmdetection's definition.

As ``tools/analysis_tools/confusion_matrix.py`` (mmdet 3.x) computes it: rows are GT classes
then "background", columns predicted classes then "background". There is no one-to-one
matching. Each prediction with score >= ``score_thr`` adds 1 to [gt class, predicted class]
for *every* GT of its image with IoU >= ``iou_thr``, or 1 to [background, predicted class]
when it overlaps none. Each GT that no prediction of its own class overlaps with IoU >=
``iou_thr`` adds 1 to [gt class, background].

The GT are those mmdet's CocoDataset loads: crowd and ``ignore`` annotations count as
ordinary boxes (the tool does not look at ``ignore_flag``); boxes with width or height < 1
or area <= 0 are dropped. Classes are in ascending category id order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from backend.analysis.geometry import iter_pair_blocks
from backend.analysis.inputs import Detections, GroundTruth, parse_ground_truth, parse_results

__all__ = ["BACKGROUND_LABEL", "confusion_matrix", "confusion_of"]

BACKGROUND_LABEL = "background"


def confusion_matrix(
    gt: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    *,
    score_thr: float = 0.3,
    iou_thr: float = 0.5,
) -> tuple[list[str], list[list[int]]]:
    """(labels, counts): labels are category names + "background"; counts[row][col]."""
    ground_truth = parse_ground_truth(gt)
    return confusion_of(
        ground_truth, parse_results(results, ground_truth, score_thr=score_thr), iou_thr=iou_thr
    )


def confusion_of(
    ground_truth: GroundTruth, det: Detections, *, iou_thr: float = 0.5
) -> tuple[list[str], list[list[int]]]:
    """confusion_matrix of parsed inputs (every detection given counts)."""
    cats = ground_truth.category_ids
    n = len(cats) + 1
    bg = n - 1

    w, h = ground_truth.xywh[:, 2], ground_truth.xywh[:, 3]
    kept = np.flatnonzero((w >= 1) & (h >= 1) & (ground_truth.area > 0))
    gt_label = np.searchsorted(cats, ground_truth.category[kept])
    pred_label = np.searchsorted(cats, det.category)

    cells: list[np.ndarray] = []
    pred_hit = np.zeros(len(det), dtype=bool)
    gt_found = np.zeros(len(kept), dtype=bool)
    for block in iter_pair_blocks(
        det.xywh,
        det.image,
        ground_truth.xywh[kept],
        ground_truth.image[kept],
        ground_truth.n_images,
    ):
        r, c = np.nonzero(block.iou >= iou_thr)
        rows, gts = block.rows[r], block.gt[r, c]
        cells.append(gt_label[gts] * n + pred_label[rows])
        pred_hit[rows] = True
        gt_found[gts[gt_label[gts] == pred_label[rows]]] = True
    cells.append(bg * n + pred_label[~pred_hit])
    cells.append(gt_label[~gt_found] * n + bg)
    counts = np.bincount(np.concatenate(cells), minlength=n * n).reshape(n, n)
    labels = [ground_truth.category_names[int(c)] for c in cats] + [BACKGROUND_LABEL]
    return labels, counts.tolist()

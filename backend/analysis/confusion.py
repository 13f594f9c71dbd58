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
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend.analysis.geometry import iter_pair_blocks
from backend.analysis.inputs import Detections, GroundTruth, parse_ground_truth, parse_results

__all__ = [
    "BACKGROUND_LABEL",
    "ConfusionCells",
    "cell_label",
    "confusion_cells",
    "confusion_matrix",
    "confusion_of",
]

BACKGROUND_LABEL = "background"


@dataclass(frozen=True, eq=False)
class ConfusionCells:
    """Every count of a confusion matrix as one entry: its cell, its image and the boxes behind
    it, so that a cell can be traced back to the images and boxes that make it up."""

    labels: list[str]  # category names in ascending id order, then "background"
    cell: np.ndarray  # (m,) row * len(labels) + column
    image: np.ndarray  # (m,) position of the image in GroundTruth.image_ids
    detection: np.ndarray  # (m,) position in the detections given; -1: a GT not found
    annotation: np.ndarray  # (m,) position in the annotations; -1: a prediction over none

    def index(self, gt_label: str, predicted_label: str) -> int:
        """The cell of a (ground-truth label, predicted label) pair; ValueError naming the
        accepted labels when either is unknown."""
        for name in (gt_label, predicted_label):
            if name not in self.labels:
                raise ValueError(
                    f"{name!r} is not a label of the confusion matrix; labels: "
                    f"{', '.join(self.labels)}"
                )
        return self.labels.index(gt_label) * len(self.labels) + self.labels.index(predicted_label)

    def matrix(self) -> list[list[int]]:
        """counts[row][col], rows ground truth, columns predictions."""
        n = len(self.labels)
        return np.bincount(self.cell, minlength=n * n).reshape(n, n).tolist()

    def per_image(self, cell: int, n_images: int) -> np.ndarray:
        """(n_images,) how much each image adds to one cell."""
        return np.bincount(self.image[self.cell == cell], minlength=n_images)


def cell_label(gt_label: str, predicted_label: str) -> str:
    """A cell in words: "circle boxes predicted as ellipse"."""
    if predicted_label == BACKGROUND_LABEL:
        return f"{gt_label} boxes with no {gt_label} prediction on them"
    if gt_label == BACKGROUND_LABEL:
        return f"{predicted_label} predictions on background"
    return f"{gt_label} boxes predicted as {predicted_label}"


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
    cells = confusion_cells(ground_truth, det, iou_thr=iou_thr)
    return cells.labels, cells.matrix()


def confusion_cells(
    ground_truth: GroundTruth, det: Detections, *, iou_thr: float = 0.5
) -> ConfusionCells:
    """The entries of confusion_of's matrix (every detection given counts)."""
    cats = ground_truth.category_ids
    n = len(cats) + 1
    bg = n - 1

    w, h = ground_truth.xywh[:, 2], ground_truth.xywh[:, 3]
    kept = np.flatnonzero((w >= 1) & (h >= 1) & (ground_truth.area > 0))
    gt_label = np.searchsorted(cats, ground_truth.category[kept])
    pred_label = np.searchsorted(cats, det.category)

    cells: list[np.ndarray] = []
    dets: list[np.ndarray] = []
    anns: list[np.ndarray] = []
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
        dets.append(rows)
        anns.append(kept[gts])
        pred_hit[rows] = True
        gt_found[gts[gt_label[gts] == pred_label[rows]]] = True
    unhit = np.flatnonzero(~pred_hit)
    cells.append(bg * n + pred_label[unhit])
    dets.append(unhit)
    anns.append(np.full(len(unhit), -1, dtype=np.int64))
    lost = np.flatnonzero(~gt_found)
    cells.append(gt_label[lost] * n + bg)
    dets.append(np.full(len(lost), -1, dtype=np.int64))
    anns.append(kept[lost])
    detection = np.concatenate(dets).astype(np.int64)
    annotation = np.concatenate(anns).astype(np.int64)
    image = np.where(
        detection >= 0,
        det.image[np.maximum(detection, 0)] if len(det) else 0,
        ground_truth.image[np.maximum(annotation, 0)] if len(ground_truth.image) else 0,
    )
    labels = [ground_truth.category_names[int(c)] for c in cats] + [BACKGROUND_LABEL]
    return ConfusionCells(
        labels=labels,
        cell=np.concatenate(cells).astype(np.int64),
        image=np.asarray(image, dtype=np.int64),
        detection=detection,
        annotation=annotation,
    )

"""Box overlaps between every prediction and the ground truth of its image, in dense blocks.

Predictions are grouped by how many GT boxes their image has (k), so that each group is a
dense (n, k) matrix with no padding; groups are cut into blocks of at most ``max_pairs``
pairs to bound memory. The arithmetic follows pycocotools' bbox IoU (continuous [x, y, w, h]
coordinates, no +1), so thresholds decide exactly as COCOeval does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["PairBlock", "iter_pair_blocks", "pairwise_iou"]


@dataclass(frozen=True, eq=False)
class PairBlock:
    """Overlaps of ``rows`` predictions with all k GT boxes of their images."""

    rows: np.ndarray  # (n,) prediction positions
    gt: np.ndarray  # (n, k) GT positions
    iou: np.ndarray  # (n, k) intersection over union
    ioa: np.ndarray  # (n, k) intersection over prediction area (COCO's crowd IoU)


def _intersection(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Intersection areas of boxes broadcast against each other ([..., 4] xywh)."""
    px, py, pw, ph = (pred[..., i] for i in range(4))
    gx, gy, gw, gh = (gt[..., i] for i in range(4))
    iw = np.minimum(px + pw, gx + gw) - np.maximum(px, gx)
    ih = np.minimum(py + ph, gy + gh) - np.maximum(py, gy)
    np.maximum(iw, 0.0, out=iw)
    np.maximum(ih, 0.0, out=ih)
    return iw * ih


def pairwise_iou(pred_xywh: np.ndarray, gt_xywh: np.ndarray) -> np.ndarray:
    """IoU matrix (n_pred, n_gt) of xywh boxes; 0 where the union is empty."""
    inter = _intersection(pred_xywh[:, None, :], gt_xywh[None, :, :])
    union = (pred_xywh[:, 2] * pred_xywh[:, 3])[:, None] + gt_xywh[:, 2] * gt_xywh[:, 3] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def iter_pair_blocks(
    pred_xywh: np.ndarray,
    pred_image: np.ndarray,
    gt_xywh: np.ndarray,
    gt_image: np.ndarray,
    n_images: int,
    *,
    max_pairs: int = 1 << 19,
) -> Iterator[PairBlock]:
    """Yield overlaps of each prediction with the GT of its own image, in blocks.

    Predictions whose image has no GT appear in no block. Zero-size boxes get IoU and IoA 0.
    """
    if len(pred_image) == 0 or len(gt_image) == 0:
        return
    gt_order = np.argsort(gt_image, kind="stable")
    gt_count = np.bincount(gt_image, minlength=n_images)
    gt_start = np.concatenate(([0], np.cumsum(gt_count)[:-1]))
    gt_area = gt_xywh[:, 2] * gt_xywh[:, 3]
    pred_k = gt_count[pred_image]
    by_k = np.argsort(pred_k, kind="stable")
    sorted_k = pred_k[by_k]
    ks, starts = np.unique(sorted_k, return_index=True)
    ends = np.append(starts[1:], len(sorted_k))
    for k, start, end in zip(ks.tolist(), starts.tolist(), ends.tolist(), strict=True):
        if k == 0:
            continue
        step = max(1, max_pairs // k)
        offsets = np.arange(k)
        for lo in range(start, end, step):
            rows = by_k[lo : min(lo + step, end)]
            gt = gt_order[gt_start[pred_image[rows]][:, None] + offsets]
            pred = pred_xywh[rows]
            inter = _intersection(pred[:, None, :], gt_xywh[gt])
            pred_area = (pred[:, 2] * pred[:, 3])[:, None]
            union = pred_area + gt_area[gt] - inter
            # a zero-size box overlaps nothing (0, as COCO scores it), never 0/0
            iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
            ioa = np.divide(inter, pred_area, out=np.zeros_like(inter), where=pred_area > 0)
            yield PairBlock(rows=rows, gt=gt, iou=iou, ioa=ioa)

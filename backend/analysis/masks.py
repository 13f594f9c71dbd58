"""Instance masks for COCO "segm" scoring: run-length encodings of ground truth and results,
their areas, and mask IoU of the (detection, GT) pairs the engine matches.

The rules are COCOeval's for iouType "segm" as mmdet's CocoMetric runs it: a GT polygon (or
uncompressed RLE) becomes one compressed RLE at its image's height and width (pycocotools'
``annToRLE``); a GT box's size range is still its "area" field; a result's size range is its
mask's pixel area (mmdet drops the results' boxes before ``loadRes`` for exactly this, where
pycocotools would otherwise take the box area); IoU is ``pycocotools.mask.iou`` with crowd
regions scored over the detection's area. Masks are compared by pycocotools itself, so every
IoU, and so every figure, is COCOeval's to the last bit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from backend.analysis.inputs import AnalysisInputError, Detections, GroundTruth

__all__ = ["Masks", "mask_pairs", "parse_masks", "result_boxes"]

_RLE = "a COCO RLE {'size': [height, width], 'counts': ...}"


@dataclass(frozen=True, eq=False)
class Masks:
    """RLEs of every GT annotation (``gt["annotations"]`` order) and detection (Detections
    order), and the detections' mask areas."""

    gt: list[dict[str, Any]]
    det: list[dict[str, Any]]
    det_area: np.ndarray  # (n_det,) float64 pixel count


def _image_sizes(gt: Mapping[str, Any]) -> dict[Any, tuple[int, int]]:
    sizes = {}
    for i, image in enumerate(gt["images"]):
        height, width = image.get("height"), image.get("width")
        if not isinstance(height, int) or not isinstance(width, int) or height < 1 or width < 1:
            raise AnalysisInputError(
                f"gt['images'][{i}]: mask scoring needs int 'height' and 'width' >= 1 to draw "
                f"its polygons; got height {height!r}, width {width!r}"
            )
        sizes[image["id"]] = (height, width)
    return sizes


def _gt_rle(i: int, ann: Mapping[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    """One GT segmentation as a compressed RLE, as pycocotools' annToRLE makes it."""
    segmentation = ann.get("segmentation")
    height, width = size
    where = f"gt['annotations'][{i}] (id {ann.get('id')!r})"
    try:
        if isinstance(segmentation, list) and segmentation:
            return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        if isinstance(segmentation, Mapping) and isinstance(segmentation.get("counts"), list):
            return mask_utils.frPyObjects(segmentation, height, width)
        if isinstance(segmentation, Mapping) and isinstance(
            segmentation.get("counts"), str | bytes
        ):
            return dict(segmentation)
    except (TypeError, ValueError, IndexError) as exc:
        raise AnalysisInputError(f"{where}: its segmentation cannot be read ({exc})") from None
    raise AnalysisInputError(
        f"{where}: mask scoring needs a 'segmentation' on every annotation (polygons "
        f"[[x1, y1, x2, y2, ...]] or {_RLE}); got {type(segmentation).__name__}"
    )


def _result_rle(i: int, result: Mapping[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    segmentation = result.get("segmentation")
    counts = segmentation.get("counts") if isinstance(segmentation, Mapping) else None
    if not isinstance(counts, str | bytes) or list(segmentation.get("size", ())) != list(size):  # type: ignore[union-attr]
        raise AnalysisInputError(
            f"results[{i}]: field 'segmentation' must be {_RLE} with counts compressed (as "
            f"mmdet and pycocotools.mask.encode write them) and size {list(size)}, its image's; "
            f"got {segmentation!r:.80}"
        )
    return {"size": list(size), "counts": counts}


def result_boxes(results: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The results with a "bbox" where they have none: their masks' bounding boxes (as
    pycocotools' loadRes does for mask results). The input is not modified."""
    if isinstance(results, str | bytes | Mapping) or not isinstance(results, Sequence):
        raise AnalysisInputError(f"results must be a list of dicts; got {type(results).__name__}")
    boxed = []
    for i, result in enumerate(results):
        if isinstance(result, Mapping) and "bbox" not in result:
            segmentation = result.get("segmentation")
            if not isinstance(segmentation, Mapping):
                raise AnalysisInputError(f"results[{i}]: needs a 'bbox' or a 'segmentation' RLE")
            try:
                box = mask_utils.toBbox(dict(segmentation)).tolist()
            except (TypeError, ValueError, KeyError) as exc:
                raise AnalysisInputError(f"results[{i}]: bad segmentation ({exc})") from None
            result = {**result, "bbox": box}
        boxed.append(result)
    return boxed


def parse_masks(
    gt: Mapping[str, Any],
    ground_truth: GroundTruth,
    results: Sequence[Mapping[str, Any]],
    detections: Detections,
) -> Masks:
    """The RLEs of every GT annotation and of the parsed detections (validated: a missing or
    malformed mask names its entry)."""
    sizes = _image_sizes(gt)
    gt_rles = [_gt_rle(i, ann, sizes[ann["image_id"]]) for i, ann in enumerate(gt["annotations"])]
    image_ids = ground_truth.image_ids
    det_rles = [
        _result_rle(int(i), results[int(i)], sizes[image_ids[int(image)]])
        for i, image in zip(detections.index, detections.image, strict=True)
    ]
    area = mask_utils.area(det_rles) if det_rles else np.zeros(0)
    return Masks(gt=gt_rles, det=det_rles, det_area=np.asarray(area, dtype=np.float64))


def mask_pairs(
    masks: Masks,
    det: np.ndarray,
    group: np.ndarray,
    det_gt_start: np.ndarray,
    det_gt_count: np.ndarray,
    gt_annotation: np.ndarray,
    gt_crowd: np.ndarray,
    *,
    min_iou: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(det, gt, iou) of every detection paired with a GT row of its group with mask IoU >=
    min_iou, as ``engine_matching.candidate_pairs`` gives them for boxes.

    Detection i (a position in the grouped order) is ``masks.det[det[i]]``; its group holds GT
    rows det_gt_start[i] : det_gt_start[i] + det_gt_count[i]; GT row r is annotation
    ``gt_annotation[r]``. One pycocotools call scores a whole (image, category) group."""
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]]) if len(group) else group
    for lo, hi in zip(starts.tolist(), np.r_[starts[1:], len(group)].tolist(), strict=True):
        count = int(det_gt_count[lo])
        if not count:
            continue
        rows = np.arange(int(det_gt_start[lo]), int(det_gt_start[lo]) + count)
        iou = np.asarray(
            mask_utils.iou(
                [masks.det[d] for d in det[lo:hi].tolist()],
                [masks.gt[a] for a in gt_annotation[rows].tolist()],
                gt_crowd[rows].astype(np.uint8).tolist(),
            ),
            dtype=np.float64,
        ).reshape(hi - lo, count)
        d, g = np.nonzero(iou >= min_iou)
        found.append((d + lo, rows[g], iou[d, g]))
    if not found:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    return tuple(np.concatenate(parts) for parts in zip(*found, strict=True))  # type: ignore[return-value]

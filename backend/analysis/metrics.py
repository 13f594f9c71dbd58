"""COCO bbox and mask metrics of a results list, scored by DetLab's engine (COCOeval's numbers
exactly).

pycocotools stays the reference: the tests compare every figure with its COCOeval. The
record returned with the metrics says what produced them, so a stored number can be traced.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backend.analysis.engine import (
    AREA_LABELS,
    AREA_RANGES,
    IOU_THRESHOLDS,
    MAX_DETS,
    RECALL_THRESHOLDS,
    CocoMatches,
    CocoStats,
    evaluate_arrays,
    summarize,
)
from backend.analysis.inputs import Detections, GroundTruth, parse_ground_truth, parse_results
from backend.analysis.masks import Masks, parse_masks, result_boxes
from backend.analysis.tables import MASK_METRICS, METRICS

__all__ = ["ENGINE", "CocoScore", "class_labels", "coco_metrics", "score", "score_masks"]

# name and version of the scoring code, stored with every evaluation; bump the version when a
# change could move any stored figure
ENGINE = "detlab-coco 1 (numpy; COCOeval bbox rules)"


@dataclass(frozen=True, eq=False)
class CocoScore:
    """The COCO metrics of one results list, with the matches and curves behind them."""

    metrics: dict[str, float | None]  # per tables.METRICS key, 0..1, None where COCO says -1
    per_class_ap: dict[str, float | None]  # class label -> AP .50:.95 (None: no GT)
    matches: CocoMatches  # per-image matches at every IoU threshold (for intervals)
    stats: CocoStats
    record: dict[str, Any]  # what produced the figures


def class_labels(ground_truth: GroundTruth) -> dict[int, str]:
    """Category id -> name; a name two categories share gets its id, so none is lost."""
    names = ground_truth.category_names
    shared = {name for name, count in Counter(names.values()).items() if count > 1}
    return {cid: f"{name} (id {cid})" if name in shared else name for cid, name in names.items()}


def score(
    ground_truth: GroundTruth, detections: Detections, masks: Masks | None = None
) -> CocoScore:
    """COCO metrics of every detection given (COCO applies no score cut): bbox, or segm
    (keys tables.MASK_METRICS) when the detections' and GT's ``masks`` are given."""
    matches = evaluate_arrays(ground_truth, detections, masks=masks)
    stats = summarize(matches)
    values = stats.stats.tolist()
    labels = class_labels(ground_truth)
    table = METRICS if masks is None else MASK_METRICS
    return CocoScore(
        metrics={m.key: (None if values[m.stat] < 0 else values[m.stat]) for m in table},
        per_class_ap={labels[cid]: ap for cid, ap in stats.per_class_ap.items()},
        matches=matches,
        stats=stats,
        record={
            "engine": ENGINE,
            "iou_type": "bbox" if masks is None else "segm",
            "iou_thresholds": [round(t, 2) for t in IOU_THRESHOLDS.tolist()],
            "recall_points": len(RECALL_THRESHOLDS),
            "max_dets": list(MAX_DETS),
            "area_ranges": dict(zip(AREA_LABELS, AREA_RANGES.tolist(), strict=True)),
            "crowd": "iscrowd != 0 marks a region (ignored, IoU over the prediction's area); "
            "the 'ignore' field is not read, as in pycocotools",
            "score_cut": None,
            "images": ground_truth.n_images,
            "ground_truth_boxes": len(ground_truth.ann_ids),
            "predictions": len(detections),
            "degenerate_predictions": detections.degenerate,
        },
    )


def score_masks(
    gt: Mapping[str, Any], ground_truth: GroundTruth, results: Sequence[Mapping[str, Any]]
) -> CocoScore:
    """COCO mask (segm) metrics of a mask results list (each with a compressed RLE
    "segmentation"; "bbox" optional) against the GT's segmentations."""
    boxed = result_boxes(results)
    detections = parse_results(boxed, ground_truth)
    return score(ground_truth, detections, parse_masks(gt, ground_truth, boxed, detections))


def coco_metrics(
    gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], *, iou_type: str = "bbox"
) -> dict[str, Any]:
    """Each of tables.METRICS (tables.MASK_METRICS for ``iou_type`` "segm"; 0..1, None where
    COCO says -1) and ``"classwise"``: {class label: AP at IoU .50:.95, all areas, 100 dets,
    or None}.

    No results is not an error: every ground-truth box is then missed. Inputs are validated
    first and never modified; zero-width or zero-height predictions are scored (as misses).
    """
    ground_truth = parse_ground_truth(gt)
    if iou_type == "segm":
        found = score_masks(gt, ground_truth, results)
    elif iou_type == "bbox":
        found = score(ground_truth, parse_results(results, ground_truth))
    else:
        raise ValueError(f"iou_type is {iou_type!r}; expected 'bbox' or 'segm'")
    return {**found.metrics, "classwise": found.per_class_ap}

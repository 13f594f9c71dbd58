"""COCO bbox metrics from pycocotools' own COCOeval, with per-class AP."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO  # type: ignore[import-untyped]
from pycocotools.cocoeval import COCOeval  # type: ignore[import-untyped]

from backend.analysis.inputs import parse_ground_truth, parse_results
from backend.analysis.tables import METRICS

__all__ = ["coco_metrics"]


def _coco(dataset: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_metrics(gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Run COCOeval (bbox) and return each of tables.METRICS (0..1, None where COCO says -1) and
    ``"classwise"``: {category name: AP at IoU .50:.95, all areas, 100 dets, or None}.

    No results is not an error: COCOeval then scores 0 wherever the ground truth has boxes.
    Inputs are validated first and never modified.
    """
    ground_truth = parse_ground_truth(gt)
    parse_results(results, ground_truth)
    # Copies: COCOeval writes an "ignore" key into GT annotations, loadRes adds keys to
    # results. COCOeval needs "iscrowd" and "area", which COCO files may leave out.
    annotations = [
        {"iscrowd": 0, "area": float(ann["bbox"][2]) * float(ann["bbox"][3]), **ann}
        for ann in gt["annotations"]
    ]
    coco_gt = _coco(
        {
            "images": [dict(image) for image in gt["images"]],
            "categories": [dict(cat) for cat in gt["categories"]],
            "annotations": annotations,
        }
    )
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            coco_dt = coco_gt.loadRes([dict(r) for r in results])
        else:
            # loadRes cannot take an empty list; an empty dataset evaluates the same way.
            coco_dt = _coco(
                {
                    "images": coco_gt.dataset["images"],
                    "categories": coco_gt.dataset["categories"],
                    "annotations": [],
                }
            )
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics: dict[str, Any] = {
        m.key: (None if evaluator.stats[m.stat] < 0 else float(evaluator.stats[m.stat]))
        for m in METRICS
    }
    # precision: [iou thresholds, recall points, categories, area ranges, max dets]
    precision = evaluator.eval["precision"]
    classwise: dict[str, float | None] = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        name = coco_gt.cats[cat_id].get("name", str(cat_id))
        classwise[name] = float(np.mean(values)) if values.size else None
    metrics["classwise"] = classwise
    return metrics

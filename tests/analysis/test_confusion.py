"""Confusion matrix with mmdetection's counting rules."""

from __future__ import annotations

import random
from typing import Any

import pytest

from backend.analysis import AnalysisInputError, confusion_matrix

CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 2, "name": "ellipse"}, {"id": 5, "name": "x"}]
CIRCLE, ELLIPSE, X = 1, 2, 5


def coco(annotations: list[dict[str, Any]], n_images: int = 3) -> dict[str, Any]:
    anns = [{"id": i + 1, "iscrowd": 0, **a} for i, a in enumerate(annotations)]
    images = [{"id": i} for i in range(1, n_images + 1)]
    return {"images": images, "annotations": anns, "categories": CATEGORIES}


def ann(image_id: int, cat: int, bbox: list[float], **extra: Any) -> dict[str, Any]:
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, **extra}


def det(image_id: int, cat: int, bbox: list[float], score: float) -> dict[str, Any]:
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, "score": score}


def test_hand_case() -> None:
    gt = coco(
        [
            ann(1, CIRCLE, [0, 0, 10, 10]),  # A
            ann(1, ELLIPSE, [100, 100, 10, 10]),  # B: only a low-score circle on it
            ann(2, CIRCLE, [0, 0, 10, 10]),  # C: no prediction
            ann(3, CIRCLE, [0, 0, 10, 10]),  # D and E overlap each other exactly
            ann(3, CIRCLE, [0, 0, 10, 10]),
            ann(3, X, [50, 50, 20, 20], iscrowd=1),  # crowd: an ordinary GT here
            ann(3, X, [90, 90, 0.5, 10]),  # narrower than 1 px: dropped, as mmdet does
        ]
    )
    results = [
        det(1, CIRCLE, [0, 0, 10, 10], 0.9),  # [circle, circle]
        det(1, ELLIPSE, [0, 0, 10, 9], 0.8),  # [circle, ellipse]: A is "taken", no matter
        det(1, ELLIPSE, [60, 60, 10, 10], 0.7),  # overlaps nothing: [background, ellipse]
        det(1, CIRCLE, [100, 100, 10, 10], 0.2),  # below score_thr 0.3: not counted
        det(3, CIRCLE, [0, 0, 10, 10], 0.5),  # IoU 1 with D and E: [circle, circle] twice
        det(3, CIRCLE, [50, 50, 20, 20], 0.5),  # on the crowd box: [x, circle]
        det(3, X, [90, 90, 0.5, 10], 0.5),  # the dropped GT is not there: [background, x]
    ]
    labels, matrix = confusion_matrix(gt, results)
    assert labels == ["circle", "ellipse", "x", "background"]
    assert matrix == [
        # circle ellipse x  background   <- predicted
        [3, 1, 0, 1],  # GT circle: A+D+E found, C missed
        [0, 0, 0, 1],  # GT ellipse: B missed
        [1, 0, 0, 1],  # GT x (the crowd): a circle on it; no x prediction -> missed
        [0, 1, 1, 0],  # background
    ]


def test_thresholds() -> None:
    gt = coco([ann(1, CIRCLE, [0, 0, 10, 10])])
    results = [det(1, ELLIPSE, [0, 0, 10, 6], 0.35)]  # IoU 0.6
    assert confusion_matrix(gt, results)[1] == [[0, 1, 0, 1], [0] * 4, [0] * 4, [0] * 4]
    loose = confusion_matrix(gt, results, score_thr=0.4)[1]
    assert loose == [[0, 0, 0, 1], [0] * 4, [0] * 4, [0] * 4]
    strict = confusion_matrix(gt, results, iou_thr=0.7)[1]
    assert strict == [[0, 0, 0, 1], [0] * 4, [0] * 4, [0, 1, 0, 0]]


def test_empty_inputs() -> None:
    labels, matrix = confusion_matrix(coco([]), [])
    assert labels == ["circle", "ellipse", "x", "background"]
    assert matrix == [[0] * 4 for _ in range(4)]
    with pytest.raises(AnalysisInputError, match=r"^results\[0\]: field 'image_id'"):
        confusion_matrix(coco([]), [det(9, CIRCLE, [0, 0, 1, 1], 0.9)])


def _iou(a: list[float], b: list[float]) -> float:
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(iw, 0) * max(ih, 0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def reference(gt: dict[str, Any], results: list[dict[str, Any]]) -> list[list[int]]:
    """mmdet's per-image loops, literally."""
    index = {c["id"]: i for i, c in enumerate(CATEGORIES)}
    n = len(CATEGORIES) + 1
    matrix = [[0] * n for _ in range(n)]
    for image in gt["images"]:
        gts = [
            a
            for a in gt["annotations"]
            if a["image_id"] == image["id"] and a["bbox"][2] >= 1 and a["bbox"][3] >= 1
        ]
        true_positives = [0] * len(gts)
        for r in results:
            if r["image_id"] != image["id"] or r["score"] < 0.3:
                continue
            hits = 0
            for j, g in enumerate(gts):
                if _iou(r["bbox"], g["bbox"]) >= 0.5:
                    hits += 1
                    if g["category_id"] == r["category_id"]:
                        true_positives[j] += 1
                    matrix[index[g["category_id"]]][index[r["category_id"]]] += 1
            if hits == 0:
                matrix[-1][index[r["category_id"]]] += 1
        for found, g in zip(true_positives, gts, strict=True):
            if not found:
                matrix[index[g["category_id"]]][-1] += 1
    return matrix


@pytest.mark.parametrize("seed", range(4))
def test_equals_mmdet_loops_on_random_data(seed: int) -> None:
    rng = random.Random(seed)
    annotations = [
        ann(
            rng.randint(1, 20),
            rng.choice([1, 2, 5]),
            [rng.uniform(0, 50), rng.uniform(0, 50), rng.uniform(0.5, 30), rng.uniform(0.5, 30)],
        )
        for _ in range(80)
    ]
    gt = coco(annotations, n_images=20)
    results = []
    for _ in range(300):
        a = rng.choice(annotations)
        x, y, w, h = a["bbox"]
        box = [x + rng.gauss(0, 2), y + rng.gauss(0, 2), w * rng.uniform(0.7, 1.3), h]
        results.append(det(a["image_id"], rng.choice([1, 2, 5]), box, rng.random()))
    expected = reference(gt, results)
    labels, matrix = confusion_matrix(gt, results)
    assert matrix == expected
    assert sum(map(sum, matrix)) > 100 and all(sum(row) > 0 for row in matrix[:3])

"""The error analysis and the COCO metrics read the same inputs the same way."""

from __future__ import annotations

import numpy as np
import pytest

from backend.analysis import analyze, coco_metrics


def _coco(annotations: list[dict], categories: list[dict] | None = None) -> dict:
    return {
        "images": [{"id": 1, "width": 200, "height": 200}, {"id": 2, "width": 200, "height": 200}],
        "categories": categories or [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [
            {"id": i + 1, "iscrowd": 0, **a, "area": a["bbox"][2] * a["bbox"][3]}
            for i, a in enumerate(annotations)
        ],
    }


def test_an_ignore_flag_is_an_object_for_both_the_metrics_and_the_breakdown():
    # pycocotools overwrites "ignore" with "iscrowd": this box counts, found or not
    gt = _coco(
        [
            {"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "ignore": 1},
            {"image_id": 2, "category_id": 1, "bbox": [10, 10, 50, 50]},
        ]
    )
    results = [{"image_id": 2, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9}]
    found = analyze(gt, results)
    assert found.counts["missed"] == 1 and found.counts["tp"] == 1
    # one of two objects found with no false positive: AP50 reads 1 up to recall 0.5
    assert found.ap50 == pytest.approx(100 * 51 / 101)
    assert coco_metrics(gt, results)["bbox_mAP_50"] == pytest.approx(found.ap50 / 100)


def test_random_cases_give_the_same_ap50_to_the_breakdown_and_coco():
    rng = np.random.default_rng(5)
    for _ in range(20):
        annotations = [
            {
                "image_id": int(rng.integers(1, 3)),
                "category_id": int(rng.integers(1, 3)),
                "bbox": [*rng.uniform(0, 100, 2).tolist(), *rng.uniform(20, 90, 2).tolist()],
                "ignore": int(rng.random() < 0.2),
            }
            for _ in range(8)
        ]
        results = [
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"] if rng.random() < 0.8 else 3 - a["category_id"],
                "bbox": (np.array(a["bbox"]) + rng.normal(0, 4, 4)).clip(0).tolist(),
                "score": float(rng.random()),
            }
            for a in annotations
        ]
        gt = _coco(annotations)
        # no score cut, under 100 boxes per image, every box 'all' area: the two AP50 agree
        found = analyze(gt, results, score_thr=0.0)
        assert coco_metrics(gt, results)["bbox_mAP_50"] == pytest.approx(found.ap50 / 100)


def test_two_classes_with_one_name_keep_their_own_ap():
    gt = _coco(
        [
            {"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50]},
            {"image_id": 1, "category_id": 2, "bbox": [100, 100, 50, 50]},
        ],
        categories=[{"id": 1, "name": "car"}, {"id": 2, "name": "car"}],
    )
    results = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9}]
    per_class = coco_metrics(gt, results)["classwise"]
    assert per_class == {"car (id 1)": pytest.approx(1.0), "car (id 2)": 0.0}

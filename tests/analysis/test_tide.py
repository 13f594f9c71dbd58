"""AP50 / dAP on hand-computed cases, counts, per-image summaries, and COCO metrics."""

from __future__ import annotations

import contextlib
import copy
import io
import random
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from backend.analysis import analyze, coco_metrics

CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 2, "name": "ellipse"}, {"id": 3, "name": "x"}]
CIRCLE, ELLIPSE = 1, 2
BOX = [0.0, 0.0, 10.0, 10.0]


def coco(annotations: list[dict[str, Any]], n_images: int = 2) -> dict[str, Any]:
    anns = [{"id": i + 1, "iscrowd": 0, **a} for i, a in enumerate(annotations)]
    images = [{"id": i, "width": 100, "height": 100} for i in range(1, n_images + 1)]
    return {"images": images, "annotations": anns, "categories": CATEGORIES}


def ann(image_id: int, cat: int, bbox: list[float], **extra: Any) -> dict[str, Any]:
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, "area": 100.0, **extra}


def det(image_id: int, cat: int, bbox: list[float], score: float) -> dict[str, Any]:
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, "score": score}


def no_dap_except(dap: dict[str, float], **expected: float) -> None:
    assert dap == pytest.approx({**dict.fromkeys(dap, 0.0), **expected}, abs=1e-9)


def test_classification_fix_turns_ap_half_into_full() -> None:
    gt = coco([ann(1, CIRCLE, BOX), ann(2, ELLIPSE, BOX)])
    results = [det(1, ELLIPSE, BOX, 0.9), det(2, ELLIPSE, BOX, 0.8)]
    a = analyze(gt, results)
    # ellipse: FP 0.9 then TP 0.8, 1 GT -> precision [0, 1/2] -> envelope 1/2 at every
    # recall point -> AP 50. circle: its only GT has no prediction -> AP 0. Mean 25.
    assert a.ap50 == pytest.approx(25.0)
    assert a.class_ap50 == pytest.approx({CIRCLE: 0.0, ELLIPSE: 50.0})
    # Fixed: the 0.9 box becomes a circle tp (circle AP 100) and ellipse has TP only (100).
    # The circle GT is "covered" by that error, so the missed fix changes nothing.
    no_dap_except(a.dap, classification=75.0)


def test_classification_fix_suppresses_the_second_claim_on_a_gt() -> None:
    gt = coco([ann(1, CIRCLE, BOX), ann(2, CIRCLE, BOX), ann(2, CIRCLE, [50, 50, 10, 10])])
    results = [
        det(1, ELLIPSE, BOX, 0.9),  # classification on circle 1
        det(1, ELLIPSE, BOX, 0.8),  # classification on circle 1 again
        det(1, CIRCLE, [50, 50, 10, 10], 0.75),  # background
        det(2, CIRCLE, BOX, 0.7),  # tp on circle 2; circle 3 is missed
    ]
    a = analyze(gt, results)
    assert [p.error_type for p in a.predictions] == [
        "classification",
        "classification",
        "background",
        "tp",
    ]
    # Only circle has GT (3), so it alone is averaged. FP 0.75, TP 0.7: recall [0, 1/3],
    # envelope [1/2, 1/2]; the 34 recall points 0..0.33 read 1/2 -> AP = 17/101.
    assert a.ap50 == pytest.approx(100 * 17 / 101)
    # classification: 0.9 becomes the tp of circle 1, 0.8 would duplicate it -> suppressed:
    # TP, FP, TP -> recall [1/3, 1/3, 2/3], envelope [1, 2/3, 2/3] -> 34 points read 1,
    # 33 (0.34..0.66) read 2/3 -> 56/101. (Keeping 0.8 as a tp would give 92.5/101.)
    # background: TP 0.7 alone -> 34 points read 1 -> 34/101.
    # missed: circle 3 is not covered (circle 1 is) -> 2 GT: 51 points read 1/2 -> 25.5/101.
    no_dap_except(
        a.dap,
        classification=100 * (56 - 17) / 101,
        background=100 * (34 - 17) / 101,
        missed=100 * (25.5 - 17) / 101,
    )


def test_duplicate_fix() -> None:
    gt = coco([ann(1, CIRCLE, BOX), ann(2, CIRCLE, BOX)])
    results = [
        det(1, CIRCLE, BOX, 0.9),
        det(1, CIRCLE, [0, 0, 10, 9], 0.8),
        det(2, CIRCLE, BOX, 0.7),
    ]
    a = analyze(gt, results)
    assert [p.error_type for p in a.predictions] == ["tp", "duplicate", "tp"]
    # TP, FP, TP with 2 GT: recall [.5, .5, 1], precision [1, .5, 2/3] -> envelope
    # [1, 2/3, 2/3]. Recall points 0..0.50 (51 of 101) read 1, 0.51..1 (50) read 2/3.
    expected = 100 * (51 + 50 * 2 / 3) / 101  # 83.498
    assert a.ap50 == pytest.approx(expected)
    no_dap_except(a.dap, duplicate=100 - expected)


def test_localization_fix() -> None:
    gt = coco([ann(1, CIRCLE, BOX), ann(2, CIRCLE, BOX)])
    results = [det(1, CIRCLE, [0, 0, 10, 2.5], 0.9), det(2, CIRCLE, BOX, 0.8)]
    a = analyze(gt, results)
    assert [p.error_type for p in a.predictions] == ["localization", "tp"]
    # FP, TP with 2 GT: recall [0, .5], envelope [.5, .5]; points 0..0.5 read 0.5, the
    # 50 above 0.5 are never reached and read 0 -> AP = 51 * 0.5 / 101 = 25.25.
    expected = 100 * 51 * 0.5 / 101
    assert a.ap50 == pytest.approx(expected)
    no_dap_except(a.dap, localization=100 - expected)


def test_background_both_and_missed_fixes() -> None:
    gt = coco([ann(1, CIRCLE, BOX), ann(2, ELLIPSE, BOX)])
    results = [
        det(1, CIRCLE, [50, 50, 10, 10], 0.9),  # background
        det(1, CIRCLE, BOX, 0.8),  # tp
        det(2, CIRCLE, [0, 0, 10, 2.5], 0.7),  # both: IoU 0.25 with the ellipse
    ]
    a = analyze(gt, results)
    assert [p.error_type for p in a.predictions] == ["background", "tp", "both"]
    # circle: FP, TP, FP with 1 GT -> envelope 1/2 everywhere -> 50; ellipse 0 -> mean 25.
    assert a.ap50 == pytest.approx(25.0)
    # background fix: circle TP, FP -> 100, mean 50 (+25). both fix: the FP ranked below
    # the only TP costs nothing (+0). missed fix: the ellipse GT is missed and not covered
    # (a "both" error does not recover it): ellipse keeps 0 GT and no predictions -> 100,
    # mean (50 + 100) / 2 = 75 (+50).
    no_dap_except(a.dap, background=25.0, missed=50.0)


def test_missed_fix_reduces_gt_count() -> None:
    gt = coco([ann(1, CIRCLE, BOX), ann(2, CIRCLE, BOX)])
    a = analyze(gt, [det(1, CIRCLE, BOX, 0.9)])
    # TP with 2 GT: recall 0.5 -> points 0..0.5 read 1 -> AP 51/101. Fixed: 1 GT -> 100.
    assert a.ap50 == pytest.approx(100 * 51 / 101)
    no_dap_except(a.dap, missed=100 - 100 * 51 / 101)


def test_counts_per_type_and_per_class() -> None:
    gt = coco([ann(1, CIRCLE, BOX), ann(2, ELLIPSE, BOX), ann(2, CIRCLE, [50, 50, 5, 5])])
    results = [
        det(1, CIRCLE, BOX, 0.9),  # tp circle
        det(1, CIRCLE, BOX, 0.8),  # duplicate circle
        det(2, CIRCLE, BOX, 0.7),  # classification (predicted circle, GT ellipse)
        det(2, ELLIPSE, [80, 80, 5, 5], 0.6),  # background ellipse
    ]
    a = analyze(gt, results)
    assert a.counts == {
        "tp": 1,
        "classification": 1,
        "localization": 0,
        "both": 0,
        "duplicate": 1,
        "background": 1,
        "ignored": 0,
        # both GT on image 2 are unmatched; the ellipse is covered by the classification
        # error (fixing it recovers the box), so only the small circle is TIDE's missed error
        "missed": 2,
        "missed_not_covered": 1,
    }
    assert a.class_counts[CIRCLE] == {
        **dict.fromkeys(a.counts, 0),
        "tp": 1,
        "duplicate": 1,
        "classification": 1,
        "missed": 1,
        "missed_not_covered": 1,
    }
    assert a.class_counts[ELLIPSE] == {**dict.fromkeys(a.counts, 0), "background": 1, "missed": 1}
    assert a.class_counts[3] == dict.fromkeys(a.counts, 0)


def test_image_summaries() -> None:
    gt = coco(
        [
            ann(1, CIRCLE, BOX),
            ann(1, ELLIPSE, [50, 50, 10, 10]),
            ann(1, CIRCLE, [0, 50, 50, 50], iscrowd=1),
            ann(2, CIRCLE, BOX),
        ],
        n_images=3,
    )
    results = [
        det(1, CIRCLE, [50, 50, 10, 10], 0.8),  # classification: circle on the ellipse
        det(1, CIRCLE, [10, 60, 5, 5], 0.5),  # inside the crowd: ignored
        det(1, ELLIPSE, [80, 0, 10, 10], 0.25),  # background
        det(1, ELLIPSE, [80, 0, 10, 10], 0.01),  # below score_thr
        det(2, CIRCLE, BOX, 0.9),  # tp
    ]
    a = analyze(gt, results)
    first, second, third = a.images
    assert (first.image_id, first.n_gt, first.n_pred) == (1, 2, 3)
    assert (first.tp, first.classification, first.background, first.ignored) == (0, 1, 1, 1)
    assert (first.localization, first.both, first.duplicate, first.missed) == (0, 0, 0, 2)
    assert first.error_pairs == {
        ("classification", CIRCLE),
        ("classification", ELLIPSE),
        ("background", ELLIPSE),
        ("missed", CIRCLE),
        ("missed", ELLIPSE),
    }
    # Error scores 0.8 + 0.25, plus 1 per missed GT.
    assert first.badness == pytest.approx(3.05)
    assert (second.tp, second.n_gt, second.missed, second.badness) == (1, 1, 0, 0.0)
    assert second.error_pairs == frozenset()
    assert (third.image_id, third.n_gt, third.n_pred, third.badness) == (3, 0, 0, 0.0)
    assert len(a.predictions) == 4 and len(a.ground_truth) == 4 and a.score_thr == 0.05


def test_no_predictions_at_all() -> None:
    gt = coco([ann(1, CIRCLE, BOX), ann(2, ELLIPSE, BOX)])
    a = analyze(gt, [])
    assert a.ap50 == 0.0 and a.predictions == [] and a.counts["missed"] == 2
    # Every GT missed and uncovered: each class is left with no GT and no predictions.
    no_dap_except(a.dap, missed=100.0)
    assert [i.badness for i in a.images] == [1.0, 1.0]


def random_case(seed: int, n_images: int = 40) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rng = random.Random(seed)
    annotations = []
    for image_id in range(1, n_images + 1):
        for _ in range(rng.randint(0, 6)):
            w, h = rng.uniform(4, 60), rng.uniform(4, 60)
            annotations.append(
                {
                    "image_id": image_id,
                    "category_id": rng.randint(1, 3),
                    "bbox": [rng.uniform(0, 100), rng.uniform(0, 100), w, h],
                    "area": w * h,
                    "iscrowd": int(rng.random() < 0.05),
                }
            )
    gt = coco(annotations, n_images=n_images)
    results = []
    for image_id in range(1, n_images + 1):
        near = [a for a in gt["annotations"] if a["image_id"] == image_id]
        for _ in range(rng.randint(0, 20)):
            if near and rng.random() < 0.7:
                x, y, w, h = rng.choice(near)["bbox"]
                box = [
                    x + rng.gauss(0, w / 8),
                    y + rng.gauss(0, h / 8),
                    w,
                    h * rng.uniform(0.7, 1.3),
                ]
            else:
                box = [rng.uniform(0, 100), rng.uniform(0, 100), rng.uniform(4, 60), 30.0]
            score = round(rng.random(), 2)  # ties across and within images
            results.append(det(image_id, rng.randint(1, 3), box, score))
    return gt, results


def run_cocoeval(gt: dict[str, Any], results: list[dict[str, Any]]) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


@pytest.mark.parametrize("seed", range(4))
def test_ap50_equals_cocoeval(seed: int) -> None:
    gt, results = random_case(seed)
    evaluator = run_cocoeval(gt, results)
    a = analyze(gt, results, score_thr=0.0)
    assert a.ap50 == pytest.approx(100 * evaluator.stats[1], abs=1e-9)
    for k, cat in enumerate(evaluator.params.catIds):
        values = evaluator.eval["precision"][0, :, k, 0, -1]
        if values[0] > -1:
            assert a.class_ap50[cat] == pytest.approx(100 * values.mean(), abs=1e-9)
    assert 0 < a.ap50 < 100


@pytest.mark.parametrize("seed", range(3))
def test_coco_metrics_equal_cocoeval(seed: int) -> None:
    gt, results = random_case(seed)
    before = copy.deepcopy((gt, results))
    evaluator = run_cocoeval(gt, results)
    metrics = coco_metrics(gt, results)
    assert (gt, results) == before  # inputs untouched
    keys = ["bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "bbox_mAP_s", "bbox_mAP_m", "bbox_mAP_l"]
    for key, value in zip(keys, evaluator.stats[:6], strict=True):
        assert metrics[key] == (None if value == -1 else pytest.approx(value, abs=1e-12))
    precision = evaluator.eval["precision"]
    expected = {}
    for k, cat in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        expected[CATEGORIES[cat - 1]["name"]] = float(np.mean(values[values > -1]))
    assert metrics["classwise"] == pytest.approx(expected, abs=1e-12)
    assert np.mean(list(expected.values())) == pytest.approx(metrics["bbox_mAP"])


def test_coco_metrics_without_predictions_or_optional_fields() -> None:
    gt = coco([ann(1, CIRCLE, BOX), ann(2, ELLIPSE, [0, 0, 50, 50])])
    for a in gt["annotations"]:
        del a["iscrowd"], a["area"]  # COCOeval needs both; coco_metrics fills them in
    metrics = coco_metrics(gt, [])
    assert metrics == {
        "bbox_mAP": 0.0,
        "bbox_mAP_50": 0.0,
        "bbox_mAP_75": 0.0,
        "bbox_mAP_s": 0.0,  # a 10x10 box: small
        "bbox_mAP_m": 0.0,  # a 50x50 box: medium
        "bbox_mAP_l": None,  # no large GT: COCOeval's -1
        "classwise": {"circle": 0.0, "ellipse": 0.0, "x": None},
    }
    perfect = coco_metrics(gt, [det(1, CIRCLE, BOX, 0.9), det(2, ELLIPSE, [0, 0, 50, 50], 0.5)])
    assert perfect["bbox_mAP"] == pytest.approx(1.0)
    classwise = perfect["classwise"]
    assert classwise["x"] is None
    assert (classwise["circle"], classwise["ellipse"]) == pytest.approx((1.0, 1.0))

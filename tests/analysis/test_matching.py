"""TIDE matching: each outcome on hand-built cases, precedence, crowds, ties, validation."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from backend.analysis import AnalysisInputError, match_predictions

CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 2, "name": "ellipse"}, {"id": 3, "name": "x"}]
CIRCLE, ELLIPSE = 1, 2


def coco(annotations: list[dict[str, Any]], n_images: int = 2) -> dict[str, Any]:
    anns = [{"id": i + 1, "iscrowd": 0, **a} for i, a in enumerate(annotations)]
    images = [{"id": i, "width": 200, "height": 200} for i in range(1, n_images + 1)]
    return {"images": images, "annotations": anns, "categories": CATEGORIES}


def ann(image_id: int, cat: int, bbox: list[float], **extra: Any) -> dict[str, Any]:
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, **extra}


def det(image_id: int, cat: int, bbox: list[float], score: float) -> dict[str, Any]:
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, "score": score}


def outcomes(gt: dict[str, Any], results: list[dict[str, Any]], **kw: Any) -> dict[int, Any]:
    preds, _ = match_predictions(gt, results, **kw)
    return {p.pred_index: p for p in preds}


def test_each_error_type_on_its_own_image() -> None:
    gt = coco(
        [
            ann(1, CIRCLE, [0, 0, 10, 10]),  # 1: tp target
            ann(1, CIRCLE, [50, 50, 10, 10]),  # 2: classification target
            ann(1, CIRCLE, [100, 0, 10, 10]),  # 3: localization target
            ann(1, CIRCLE, [0, 100, 10, 10]),  # 4: both target
        ]
    )
    results = [
        det(1, CIRCLE, [0, 0, 10, 10], 0.9),  # tp, IoU 1
        det(1, ELLIPSE, [50, 50, 10, 10], 0.8),  # right box, wrong class
        det(1, CIRCLE, [100, 0, 10, 2.5], 0.7),  # IoU 0.25, right class
        det(1, ELLIPSE, [0, 100, 10, 2.5], 0.6),  # IoU 0.25, wrong class
        det(1, CIRCLE, [0, 0, 10, 10], 0.5),  # same box as the tp, lower score
        det(1, CIRCLE, [150, 150, 20, 20], 0.4),  # far from every GT
    ]
    got = outcomes(gt, results)
    assert [got[i].error_type for i in range(6)] == [
        "tp",
        "classification",
        "localization",
        "both",
        "duplicate",
        "background",
    ]
    assert [got[i].gt_id for i in range(6)] == [1, 2, 3, 4, 1, None]
    assert [got[i].gt_category_id for i in range(6)] == [1, 1, 1, 1, 1, None]
    assert [got[i].iou for i in range(6)] == pytest.approx([1.0, 1.0, 0.25, 0.25, 1.0, 0.0])
    assert got[1].category_id == ELLIPSE and got[1].score == 0.8
    assert got[1].bbox == (50.0, 50.0, 10.0, 10.0) and got[1].image_id == 1


def test_missed_gt_and_covered_flag() -> None:
    gt = coco(
        [
            ann(1, CIRCLE, [0, 0, 10, 10]),  # found by a tp
            ann(1, CIRCLE, [50, 50, 10, 10]),  # only a classification error on it: covered
            ann(1, CIRCLE, [100, 100, 10, 10]),  # only a "both" error: missed, not covered
            ann(2, ELLIPSE, [0, 0, 10, 10]),  # nothing near: missed
        ]
    )
    results = [
        det(1, CIRCLE, [0, 0, 10, 10], 0.9),
        det(1, ELLIPSE, [50, 50, 10, 10], 0.9),
        det(1, ELLIPSE, [100, 100, 10, 3], 0.9),
    ]
    _, gts = match_predictions(gt, results)
    assert [(g.annotation_id, g.missed, g.covered) for g in gts] == [
        (1, False, False),
        (2, True, True),
        (3, True, False),
        (4, True, False),
    ]
    assert gts[0].matched_pred_index == 0 and gts[1].matched_pred_index is None
    assert gts[3].image_id == 2 and gts[3].category_id == ELLIPSE and not gts[3].ignored


def test_iou_thresholds_are_inclusive() -> None:
    gt = coco([ann(1, CIRCLE, [0, 0, 10, 20]), ann(2, CIRCLE, [0, 0, 10, 100])])
    results = [
        det(1, CIRCLE, [0, 0, 10, 10], 0.9),  # IoU 100/200 = 0.5 exactly: tp
        det(2, CIRCLE, [0, 0, 10, 10], 0.9),  # IoU 100/1000 = 0.1 exactly: localization
        det(2, ELLIPSE, [0, 0, 10, 9.99], 0.8),  # IoU 99.9/1000 < 0.1: background
    ]
    got = outcomes(gt, results)
    assert got[0].error_type == "tp" and got[0].iou == pytest.approx(0.5)
    assert got[1].error_type == "localization" and got[1].iou == pytest.approx(0.1)
    assert got[2].error_type == "background" and got[2].gt_id is None


def test_greedy_match_takes_highest_iou_unmatched_gt() -> None:
    gt = coco([ann(1, CIRCLE, [0, 0, 10, 10]), ann(1, CIRCLE, [2, 0, 10, 10])])
    results = [
        det(1, CIRCLE, [2, 0, 10, 10], 0.9),  # IoU 1 with GT 2, 0.67 with GT 1
        det(1, CIRCLE, [1, 0, 10, 10], 0.8),  # 0.82 with both; GT 2 is taken -> GT 1
        det(1, CIRCLE, [1, 0, 10, 10], 0.7),  # both taken -> duplicate of the better one
    ]
    got = outcomes(gt, results)
    assert [(got[i].error_type, got[i].gt_id) for i in range(3)] == [
        ("tp", 2),
        ("tp", 1),
        ("duplicate", 1),
    ]


def test_higher_score_matches_first_whatever_the_list_order() -> None:
    gt = coco([ann(1, CIRCLE, [0, 0, 10, 10])])
    results = [det(1, CIRCLE, [0, 0, 10, 9], 0.6), det(1, CIRCLE, [0, 0, 10, 8], 0.95)]
    got = outcomes(gt, results)
    assert got[1].error_type == "tp" and got[1].iou == pytest.approx(0.8)
    assert got[0].error_type == "duplicate" and got[0].iou == pytest.approx(0.9)


def test_score_ties_go_to_the_earlier_result() -> None:
    gt = coco([ann(1, CIRCLE, [0, 0, 10, 10])])
    a, b = det(1, CIRCLE, [0, 0, 10, 9], 0.5), det(1, CIRCLE, [0, 0, 10, 8], 0.5)
    got = outcomes(gt, [a, b])
    assert (got[0].error_type, got[1].error_type) == ("tp", "duplicate")
    got = outcomes(gt, [b, a])
    assert (got[0].error_type, got[1].error_type) == ("tp", "duplicate")
    assert got[0].iou == pytest.approx(0.8)


def test_localization_is_tested_before_classification() -> None:
    gt = coco([ann(1, CIRCLE, [0, 0, 10, 10]), ann(1, ELLIPSE, [6, 0, 10, 10])])
    # circle prediction: IoU 0.25 with the circle (0..8 vs 0..10), 0.6 with the ellipse
    got = outcomes(gt, [det(1, CIRCLE, [4, 0, 10, 10], 0.9)])
    assert got[0].error_type == "localization" and got[0].gt_id == 1


def test_classification_is_tested_before_duplicate() -> None:
    gt = coco([ann(1, CIRCLE, [0, 0, 10, 10]), ann(1, ELLIPSE, [1, 0, 10, 10])])
    results = [det(1, CIRCLE, [0, 0, 10, 10], 0.9), det(1, CIRCLE, [1, 0, 10, 10], 0.8)]
    got = outcomes(gt, results)
    # The second one overlaps the matched circle (0.82) and the ellipse (1.0).
    assert got[1].error_type == "classification"
    assert (got[1].gt_id, got[1].gt_category_id) == (2, ELLIPSE)


def test_crowd_regions_and_ignore_boxes() -> None:
    gt = coco(
        [
            ann(1, CIRCLE, [0, 0, 100, 100], iscrowd=1),
            ann(1, CIRCLE, [0, 0, 10, 10]),
            # pycocotools overwrites "ignore" with "iscrowd": an ordinary object
            ann(2, ELLIPSE, [0, 0, 100, 100], ignore=1),
        ]
    )
    results = [
        det(1, CIRCLE, [0, 0, 10, 10], 0.9),  # regular GT first: tp
        det(1, CIRCLE, [50, 50, 20, 20], 0.8),  # inside the circle crowd: ignored
        det(1, ELLIPSE, [50, 50, 20, 20], 0.7),  # crowd of another class: background
        det(1, CIRCLE, [90, 90, 20, 20], 0.6),  # IoA 0.25 with the crowd: background
        det(2, ELLIPSE, [10, 10, 30, 30], 0.5),  # IoU 0.09 with the ignore=1 box: background
        det(1, CIRCLE, [0, 0, 10, 10], 0.4),  # duplicate of the tp, inside the crowd
    ]
    got = outcomes(gt, results)
    assert [got[i].error_type for i in range(6)] == [
        "tp",
        "ignored",
        "background",
        "background",
        "background",
        "ignored",
    ]
    assert got[1].gt_id == 1 and got[1].iou == pytest.approx(1.0)
    _, gts = match_predictions(gt, results)
    assert [(g.ignored, g.missed) for g in gts] == [(True, False), (False, False), (False, True)]


def test_image_without_gt_and_image_without_predictions() -> None:
    gt = coco([ann(2, CIRCLE, [0, 0, 10, 10]), ann(2, ELLIPSE, [20, 20, 10, 10])])
    results = [det(1, CIRCLE, [0, 0, 10, 10], 0.9), det(1, ELLIPSE, [5, 5, 10, 10], 0.3)]
    preds, gts = match_predictions(gt, results)
    assert [(p.error_type, p.gt_id, p.iou) for p in preds] == [
        ("background", None, 0.0),
        ("background", None, 0.0),
    ]
    assert [g.missed for g in gts] == [True, True]


def test_no_results_and_no_annotations() -> None:
    preds, gts = match_predictions(coco([ann(1, CIRCLE, [0, 0, 5, 5])]), [])
    assert preds == [] and [g.missed for g in gts] == [True]
    preds, gts = match_predictions(coco([]), [det(1, CIRCLE, [0, 0, 5, 5], 0.5)])
    assert [p.error_type for p in preds] == ["background"] and gts == []


def test_score_threshold_drops_low_scores_before_matching() -> None:
    gt = coco([ann(1, CIRCLE, [0, 0, 10, 10])])
    results = [det(1, CIRCLE, [0, 0, 10, 10], 0.04), det(1, CIRCLE, [0, 0, 10, 9], 0.05)]
    preds, _ = match_predictions(gt, results)
    assert [(p.pred_index, p.error_type) for p in preds] == [(1, "tp")]
    preds, gts = match_predictions(gt, results, score_thr=0.5)
    assert preds == [] and gts[0].missed


@pytest.mark.parametrize(
    ("bad", "field", "accepted"),
    [
        ({"image_id": 99}, "image_id", "accepted: an id from gt['images']"),
        ({"category_id": 7}, "category_id", "accepted: 1, 2, 3"),
        ({"category_id": 1.5}, "category_id", "accepted: 1, 2, 3"),
        ({"score": float("nan")}, "score", "finite number"),
        ({"score": "0.9"}, "score", "finite number"),
        ({"bbox": [0, 0, float("inf"), 5]}, "bbox", "4 finite numbers"),
        ({"bbox": [0, 0, -1, 5]}, "bbox", "width >= 0 and height >= 0"),
        ({"bbox": [0, 0, 5, -1]}, "bbox", "width >= 0 and height >= 0"),
        ({"bbox": [0, 0, 5]}, "bbox", "[x, y, width, height]"),
        ({"bbox": None}, "bbox", "[x, y, width, height]"),
    ],
)
def test_bad_result_names_index_field_and_what_is_accepted(
    bad: dict[str, Any], field: str, accepted: str
) -> None:
    gt = coco([ann(1, CIRCLE, [0, 0, 10, 10])])
    results = [det(1, CIRCLE, [0, 0, 10, 10], 0.9) for _ in range(5)]
    results[3] = {**results[3], **bad}
    results[4] = {**results[4], "score": float("nan")}  # a later problem is not reported
    with pytest.raises(AnalysisInputError) as info:
        match_predictions(gt, results)
    message = str(info.value)
    assert message.startswith("results[3]: ")
    assert f"'{field}'" in message and accepted in message


def test_missing_field_and_non_dict_result() -> None:
    gt = coco([ann(1, CIRCLE, [0, 0, 10, 10])])
    good = det(1, CIRCLE, [0, 0, 10, 10], 0.9)
    no_score = {k: v for k, v in good.items() if k != "score"}
    with pytest.raises(AnalysisInputError, match=r"^results\[1\]: missing field 'score'; "):
        match_predictions(gt, [good, no_score])
    with pytest.raises(AnalysisInputError, match=r"^results\[0\]: expected a dict"):
        match_predictions(gt, [[1, 2, 3]])
    with pytest.raises(AnalysisInputError, match="results must be a list"):
        match_predictions(gt, {"image_id": 1})  # type: ignore[arg-type]


def test_bad_ground_truth_names_the_annotation() -> None:
    gt = coco([ann(1, CIRCLE, [0, 0, 10, 10]), ann(5, CIRCLE, [0, 0, 10, 10])])
    with pytest.raises(AnalysisInputError, match=r"^gt\['annotations'\]\[1\]: image_id 5 "):
        match_predictions(gt, [])
    gt = coco([ann(1, CIRCLE, [0, 0, -1, 10])])
    with pytest.raises(AnalysisInputError, match=r"\[0\]: field 'bbox' .* width >= 0"):
        match_predictions(gt, [])
    with pytest.raises(AnalysisInputError, match="field 'categories' must be a list"):
        match_predictions({"images": [], "annotations": []}, [])


# --- a slow, literal implementation of the rules, to check the vectorised one against --


def _iou(a: list[float], b: list[float], crowd: bool = False) -> float:
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (a[2] * a[3] if crowd else a[2] * a[3] + b[2] * b[3] - inter)


def reference(gt: dict[str, Any], results: list[dict[str, Any]], thr: float) -> dict[int, Any]:
    """{pred index: (outcome, relevant gt id)} and {gt id: missed} by literal loops."""
    found: dict[int, Any] = {}
    matched: set[int] = set()
    for image in gt["images"]:
        gts = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
        regular = [a for a in gts if not a["iscrowd"]]
        regions = [a for a in gts if a["iscrowd"]]
        preds = [(i, r) for i, r in enumerate(results) if r["image_id"] == image["id"]]
        preds = [(i, r) for i, r in preds if r["score"] >= thr]
        preds.sort(key=lambda t: (-t[1]["score"], t[0]))
        for i, r in preds:
            ious = [_iou(r["bbox"], a["bbox"]) for a in regular]
            same = [k for k, a in enumerate(regular) if a["category_id"] == r["category_id"]]
            other = [k for k, a in enumerate(regular) if a["category_id"] != r["category_id"]]
            free = [k for k in same if regular[k]["id"] not in matched and ious[k] >= 0.5]
            best_same = max(same, key=lambda k: (ious[k], -k), default=None)
            best_other = max(other, key=lambda k: (ious[k], -k), default=None)
            s = ious[best_same] if best_same is not None else -1
            o = ious[best_other] if best_other is not None else -1
            covers = [
                (_iou(r["bbox"], a["bbox"], crowd=True), -k, a["id"])
                for k, a in enumerate(regions)
                if a["category_id"] == r["category_id"]
            ]
            if free:
                k = max(free, key=lambda k: (ious[k], -k))
                matched.add(regular[k]["id"])
                found[i] = ("tp", regular[k]["id"])
            elif covers and max(covers)[0] >= 0.5:
                found[i] = ("ignored", max(covers)[2])
            elif 0.1 <= s < 0.5:
                found[i] = ("localization", regular[best_same]["id"])
            elif o >= 0.5:
                found[i] = ("classification", regular[best_other]["id"])
            elif s >= 0.5:
                found[i] = ("duplicate", regular[best_same]["id"])
            elif o >= 0.1:
                found[i] = ("both", regular[best_other]["id"])
            else:
                found[i] = ("background", None)
    missed = {a["id"]: not a["iscrowd"] and a["id"] not in matched for a in gt["annotations"]}
    return {"preds": found, "missed": missed}


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_matching_equals_literal_rules(seed: int) -> None:
    rng = random.Random(seed)
    annotations = []
    for image_id in range(1, 31):
        for _ in range(rng.randint(0, 6)):
            w, h = rng.uniform(5, 40), rng.uniform(5, 40)
            box = [rng.uniform(0, 60), rng.uniform(0, 60), w, h]
            annotations.append(
                ann(image_id, rng.randint(1, 3), box, iscrowd=int(rng.random() < 0.1))
            )
    gt = coco(annotations, n_images=30)
    results = []
    for image_id in range(1, 31):
        near = [a for a in gt["annotations"] if a["image_id"] == image_id]
        for _ in range(rng.randint(0, 15)):
            if near and rng.random() < 0.7:
                x, y, w, h = rng.choice(near)["bbox"]
                box = [x + rng.gauss(0, w / 4), y + rng.gauss(0, h / 4), w * rng.uniform(0.5, 1.5)]
                box.append(h * rng.uniform(0.5, 1.5))
            else:
                box = [rng.uniform(0, 80), rng.uniform(0, 80), rng.uniform(2, 30), 20.0]
            # One decimal: plenty of score ties.
            score = round(rng.random(), 1)
            results.append(det(image_id, rng.randint(1, 3), box, score))
    expected = reference(gt, results, thr=0.05)
    preds, gts = match_predictions(gt, results)
    assert {p.pred_index: (p.error_type, p.gt_id) for p in preds} == expected["preds"]
    assert {g.annotation_id: g.missed for g in gts} == expected["missed"]
    by_id = {a["id"]: a for a in gt["annotations"]}
    for p in preds:
        if p.error_type not in ("ignored", "background"):
            assert math.isclose(p.iou, _iou(list(p.bbox), by_id[p.gt_id]["bbox"]))
    # The random case must exercise the interesting rules, not only background.
    kinds = {p.error_type for p in preds}
    assert {"tp", "localization", "classification", "background"} <= kinds

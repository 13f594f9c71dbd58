"""The numpy COCO engine against pycocotools' COCOeval: random cases, each matching rule on a
hand-built case, per-detection matches, image weights, and input validation. No services."""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from backend.analysis import AnalysisInputError, coco_metrics
from backend.analysis.engine import (
    AREA_RANGES,
    IOU_THRESHOLDS,
    MAX_DETS,
    RECALL_THRESHOLDS,
    STAT_NAMES,
    CocoMatches,
    evaluate,
    summarize,
)
from backend.analysis.inputs import parse_ground_truth, parse_results
from backend.analysis.tables import METRICS

BOX = [0.0, 0.0, 10.0, 10.0]


def _coco(dataset: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def cocoeval(gt: dict[str, Any], results: list[dict[str, Any]]) -> COCOeval:
    """pycocotools' COCOeval (bbox) after evaluate, accumulate and summarize, on copies."""
    annotations = [
        {"iscrowd": 0, "area": float(a["bbox"][2]) * float(a["bbox"][3]), **copy.deepcopy(a)}
        for a in gt["annotations"]
    ]
    coco_gt = _coco(
        {
            "images": copy.deepcopy(gt["images"]),
            "categories": copy.deepcopy(gt["categories"]),
            "annotations": annotations,
        }
    )
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        else:  # loadRes cannot take []; an empty dataset is the same detection set
            coco_dt = _coco({**coco_gt.dataset, "annotations": []})
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def assert_same_as_cocoeval(gt: dict[str, Any], results: list[dict[str, Any]]) -> CocoMatches:
    """Stats, per-class AP, curves and every detection's match equal COCOeval's."""
    reference = cocoeval(gt, results)
    matches = evaluate(gt, results)
    stats = summarize(matches)
    assert np.abs(stats.stats - reference.stats).max() <= 1e-9, (stats.stats, reference.stats)
    # The curves are ratios of the same integer counts, so they agree to the last bit.
    np.testing.assert_array_equal(stats.precision, reference.eval["precision"])
    np.testing.assert_array_equal(stats.recall, reference.eval["recall"])
    for k, cat_id in enumerate(reference.params.catIds):
        values = reference.eval["precision"][:, :, k, 0, -1]
        values = values[values > -1]
        expected = float(np.mean(values)) if values.size else None
        assert stats.per_class_ap[cat_id] == pytest.approx(expected, abs=1e-9)
    assert_same_matches(gt, results, reference, matches)
    return matches


def assert_same_matches(
    gt: dict[str, Any], results: list[dict[str, Any]], reference: COCOeval, m: CocoMatches
) -> None:
    """Per (image, category, area range): matched GT ids and ignore flags equal evalImgs'."""
    area_index = {tuple(r): a for a, r in enumerate(reference.params.areaRng)}
    column = np.full(len(results) + 1, -1)
    column[m.det_result + 1] = np.arange(len(m.det_result))  # loadRes ids are index + 1
    ann_ids = np.array([a["id"] for a in gt["annotations"]] + [0])  # -1 (no match) reads 0
    kept = 0
    for e in reference.evalImgs:
        if e is None or not e["dtIds"]:
            continue
        a = area_index[tuple(e["aRng"])]
        columns = column[np.array(e["dtIds"])]
        assert (columns >= 0).all()
        np.testing.assert_array_equal(ann_ids[m.matched[a][:, columns]], e["dtMatches"])
        np.testing.assert_array_equal(m.ignored[a][:, columns], e["dtIgnore"].astype(bool))
        assert (m.det_image[columns] == m.image_ids.index(e["image_id"])).all()
        kept += len(columns) * (a == 0)
    assert kept == len(m.det_result)


def random_case(
    seed: int, *, n_images: int = 6, n_cats: int = 4, max_gt: int = 8, max_det: int = 30
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A small COCO case with every input COCOeval treats specially (see the asserts' names).

    Sparse, unordered image and category ids; a category without GT; images without GT or
    without results; crowd, ignore:1, explicit area, zero-width GT and twin GT boxes; results
    near GT or anywhere, on a grid (exact IoU ties) or not, zero width or height, tied scores,
    130 results on one image and category; GT id 0 on every fifth seed.
    """
    rng = np.random.default_rng(seed)
    image_ids = rng.choice(1000, size=n_images, replace=False).tolist()
    cat_ids = rng.choice(np.arange(1, 100), size=n_cats, replace=False).tolist()
    gt_cats = cat_ids[:-1]  # the last category has no GT
    ann_ids = iter(rng.choice(np.arange(1, 100_000), size=4 * n_images * max_gt, replace=False))
    grid = float(rng.choice([1.0, 0.5, 0.0]))

    def snap(value: float) -> float:
        return float(round(value / grid) * grid) if grid else float(value)

    annotations: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for image_id in image_ids:
        boxes = []
        for _ in range(0 if rng.random() < 0.15 else int(rng.integers(1, max_gt + 1))):
            side = [rng.uniform(1, 30), rng.uniform(20, 110), rng.uniform(60, 200)]
            w, h = (max(grid, snap(v)) for v in rng.choice(side, size=2))
            x, y = (snap(v) for v in rng.uniform(0, 300, size=2))
            w = 0.0 if rng.random() < 0.03 else w
            cat = int(rng.choice(gt_cats))
            ann: dict[str, Any] = {
                "id": int(next(ann_ids)),
                "image_id": int(image_id),
                "category_id": cat,
                "bbox": [x, y, w, h],
            }
            flag = rng.random()
            if flag < 0.1:
                ann["iscrowd"] = 1
            elif flag < 0.2:
                ann["ignore"] = 1  # COCOeval overwrites it: an ordinary box
            elif flag < 0.6:
                ann["iscrowd"] = 0
            area = rng.random()
            if area < 0.3:
                ann["area"] = float(w * h * rng.uniform(0.2, 1.6))
            elif area < 0.8:
                ann["area"] = float(w * h)
            annotations.append(ann)
            boxes.append((x, y, w, h, cat))
            if rng.random() < 0.08:  # a twin: the same box, or shifted so a result between ties
                shift = float(rng.choice([0.0, w / 2]))
                twin = {**ann, "id": int(next(ann_ids)), "bbox": [x + shift, y, w, h]}
                annotations.append(twin)
                boxes.append((x + shift / 2, y, w, h, cat))
        if rng.random() < 0.15:
            continue  # an image without results
        n_det = 130 if rng.random() < 0.1 else int(rng.integers(0, max_det + 1))
        one_cat = rng.random() < 0.3
        for _ in range(n_det):
            if boxes and rng.random() < 0.6:
                x, y, w, h, cat = boxes[int(rng.integers(len(boxes)))]
                jitter = rng.normal(0, 0.12, 4) * [w, h, w, h]
                if grid and rng.random() < 0.5:
                    jitter = np.round(jitter / grid) * grid
                x, y = x + jitter[0], y + jitter[1]
                w, h = max(0.0, w + jitter[2]), max(0.0, h + jitter[3])
                if rng.random() < 0.15:
                    cat = int(rng.choice(cat_ids))
            else:
                w, h = rng.uniform(1, 150, size=2)
                x, y = rng.uniform(0, 300, size=2)
                cat = int(rng.choice(cat_ids))
            degenerate = rng.random()
            w = 0.0 if degenerate < 0.04 else w
            h = 0.0 if 0.04 <= degenerate < 0.08 else h
            score = rng.choice([round(rng.random(), 1), round(rng.random(), 3), rng.random()])
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(cat_ids[0] if one_cat else cat),
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "score": float(score),
                }
            )
    if seed % 5 == 0 and annotations:
        annotations[0]["id"] = 0
    order = rng.permutation(len(annotations))
    images = [{"id": int(i)} for i in image_ids]
    categories = [{"id": int(c), "name": f"class{c}"} for c in cat_ids]
    rng.shuffle(images)
    rng.shuffle(categories)
    gt = {"images": images, "annotations": [annotations[i] for i in order]}
    return {**gt, "categories": categories}, results


def coco(annotations: list[dict[str, Any]], n_images: int = 2) -> dict[str, Any]:
    anns = [{"id": i + 1, **a} for i, a in enumerate(annotations)]
    images = [{"id": i} for i in range(1, n_images + 1)]
    return {"images": images, "annotations": anns, "categories": [{"id": 1}, {"id": 2}]}


def ann(image_id: int, bbox: list[float], cat: int = 1, **extra: Any) -> dict[str, Any]:
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, **extra}


def det(image_id: int, bbox: list[float], score: float, cat: int = 1) -> dict[str, Any]:
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, "score": score}


def ap(gt: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, float | None]:
    """Engine stats by name, after checking the whole evaluation against COCOeval."""
    return summarize(assert_same_as_cocoeval(gt, results)).as_dict()


def test_parameters_are_cocoevals() -> None:
    params = Params(iouType="bbox")
    np.testing.assert_array_equal(IOU_THRESHOLDS, params.iouThrs)
    np.testing.assert_array_equal(RECALL_THRESHOLDS, params.recThrs)
    np.testing.assert_array_equal(AREA_RANGES, params.areaRng)
    assert list(MAX_DETS) == params.maxDets
    assert len(STAT_NAMES) == 12


@pytest.mark.parametrize("seed", range(60))
def test_random_case_equals_cocoeval(seed: int) -> None:
    gt, results = random_case(seed)
    assert_same_as_cocoeval(gt, results)


def test_larger_random_case_equals_cocoeval() -> None:
    gt, results = random_case(1000, n_images=40, n_cats=6, max_gt=25, max_det=120)
    assert len(results) > 2000
    assert_same_as_cocoeval(gt, results)


def test_iou_exactly_at_a_threshold_matches() -> None:
    gt = coco([ann(1, BOX), ann(2, BOX)])
    # IoU 0.5 and 0.75 exactly: matched from 0.50 up to and including that threshold.
    stats = ap(gt, [det(1, [0, 0, 10, 5], 0.9), det(2, [0, 0, 10, 7.5], 0.8)])
    assert stats["AP50"] == pytest.approx(1.0)
    # At 0.75 only the second counts: precision 1/2 up to recall 1/2, 0 beyond.
    assert stats["AP75"] == 0.5 * np.count_nonzero(RECALL_THRESHOLDS <= 0.5) / 101


def test_equal_iou_goes_to_the_later_gt() -> None:
    # The first result overlaps both boxes at IoU 0.6: COCOeval takes the later one (B),
    # which leaves A free for the second result. Taking A would leave two misses.
    gt = coco([ann(1, [0, 0, 10, 10]), ann(1, [5, 0, 10, 10])])
    stats = ap(gt, [det(1, [2.5, 0, 10, 10], 0.9), det(1, [0, 0, 10, 10], 0.8)])
    assert stats["AP50"] == pytest.approx(1.0)


def test_regular_gt_before_a_better_ignored_one() -> None:
    gt = coco([ann(1, BOX, iscrowd=1), ann(1, [0, 0, 10, 14])])
    # IoU 1 with the crowd region, 10/14 with the regular box: the regular box wins.
    matches = assert_same_as_cocoeval(gt, [det(1, BOX, 0.9)])
    assert matches.matched[0, 0, 0] == 1 and matches.tp[0, 0, 0]


def test_crowd_region_absorbs_many_results_by_intersection_over_result_area() -> None:
    gt = coco([ann(1, [0, 0, 100, 100], iscrowd=1), ann(1, [200, 200, 10, 10])])
    # Each small result lies inside the region: IoU with it is 1 (intersection / result area).
    inside = [det(1, [10 * i, 0, 5, 5], 0.9 - i / 100) for i in range(5)]
    matches = assert_same_as_cocoeval(gt, [*inside, det(1, [200, 200, 10, 10], 0.5)])
    assert matches.ignored[0, :, :5].all() and (matches.matched[0, :, :5] == 0).all()
    assert summarize(matches).as_dict()["AP"] == pytest.approx(1.0)


def test_ignore_flag_without_iscrowd_is_an_ordinary_box() -> None:
    gt = coco([ann(1, BOX, ignore=1)])
    # the error analysis reads the same arrays, so it too treats it as an object
    assert not parse_ground_truth(gt).crowd.any()
    assert ap(gt, [])["AP"] == 0.0
    assert ap(gt, [det(1, BOX, 0.9)])["AP"] == pytest.approx(1.0)


def test_area_ranges_use_the_area_field() -> None:
    # A 100x100 box declared small, and a 10x10 box declared large.
    gt = coco([ann(1, [0, 0, 100, 100], area=500.0), ann(1, [200, 200, 10, 10], area=10000.0)])
    stats = ap(gt, [det(1, [0, 0, 100, 100], 0.9), det(1, [200, 200, 10, 10], 0.8)])
    assert (stats["APs"], stats["APm"], stats["APl"]) == (
        pytest.approx(1.0),
        None,
        pytest.approx(1.0),
    )


def test_gt_with_id_0_turns_its_match_into_a_false_positive() -> None:
    gt = coco([ann(1, BOX)])
    gt["annotations"][0]["id"] = 0
    matches = assert_same_as_cocoeval(gt, [det(1, BOX, 0.9)])
    assert matches.matched[0, 0, 0] == 0 and not matches.tp[0, 0, 0]
    assert summarize(matches).as_dict()["AP"] == 0.0


def test_annotations_sharing_an_id_become_copies_of_the_last() -> None:
    gt = coco([ann(1, BOX), ann(2, [50, 50, 20, 20]), ann(2, [0, 0, 30, 30], cat=2)])
    for annotation in gt["annotations"]:
        annotation["id"] = 7
    # COCO loads three copies of the last box (image 2, category 2); images 1 and 2 of
    # category 1 have no GT left.
    assert_same_as_cocoeval(gt, [det(1, BOX, 0.9), det(2, [0, 0, 30, 30], 0.8, cat=2)])


def test_zero_width_and_height_results_count_as_false_positives() -> None:
    gt = coco([ann(1, BOX), ann(1, [20, 0, 10, 10])])
    results = [det(1, [0, 0, 0, 10], 0.95), det(1, [20, 0, 10, 0], 0.9), det(1, BOX, 0.5)]
    assert parse_results(results, parse_ground_truth(gt)).degenerate == 2
    matches = assert_same_as_cocoeval(gt, results)
    assert not matches.tp[0, :, :2].any() and not matches.ignored[0, :, :2].any()


def test_no_results_misses_every_gt() -> None:
    gt = coco([ann(1, BOX), ann(2, [0, 0, 50, 50], cat=2)])
    stats = ap(gt, [])
    assert stats["AP"] == 0.0 and stats["AR100"] == 0.0 and stats["APl"] is None
    assert summarize(evaluate(gt, [])).per_class_ap == {1: 0.0, 2: 0.0}


def test_only_the_100_best_results_per_image_and_category_count() -> None:
    gt = coco([ann(1, BOX)])
    # 100 misses outscore the hit on class 1; class 2's results do not push it out.
    misses = [det(1, [50, 50, 5, 5], 0.9) for _ in range(100)]
    others = [det(1, [50, 50, 5, 5], 0.95, cat=2) for _ in range(20)]
    matches = assert_same_as_cocoeval(gt, [*others, det(1, BOX, 0.5), *misses])
    assert len(matches.det_result) == 120 and matches.det_rank.max() == 99
    assert 20 not in matches.det_result.tolist()


def test_per_class_ap_of_empty_classes() -> None:
    gt = coco([ann(1, BOX)])
    gt["categories"].append({"id": 3})
    stats = summarize(assert_same_as_cocoeval(gt, [det(1, BOX, 0.9, cat=2)]))
    # Class 1 has GT and no result; 2 has a result and no GT; 3 has neither.
    assert stats.per_class_ap == {1: 0.0, 2: None, 3: None}


def test_score_ties_across_images_follow_sorted_image_ids() -> None:
    gt = coco([ann(1, BOX), ann(2, BOX)], n_images=3)
    gt["images"].reverse()
    # Same score: image 1's hit ranks before image 3's miss (results order would put it
    # after); within image 2, results order: miss, then hit. Precision 1 up to recall 1/2,
    # then 1/2.
    results = [det(3, [50, 50, 5, 5], 0.9), det(1, BOX, 0.9), det(2, [50, 50, 5, 5], 0.8)]
    stats = ap(gt, [*results, det(2, BOX, 0.8)])
    low = np.count_nonzero(RECALL_THRESHOLDS <= 0.5)
    assert stats["AP50"] == (low + (101 - low) * 0.5) / 101


def test_agrees_with_coco_metrics() -> None:
    gt, results = random_case(7)
    results = [r for r in results if min(r["bbox"][2:]) > 0]  # coco_metrics refuses the rest
    metrics = coco_metrics(gt, results)
    stats = summarize(evaluate(gt, results))
    for metric in METRICS:  # tables.METRICS index COCOeval.stats, as CocoStats.stats does
        assert stats.as_dict()[STAT_NAMES[metric.stat]] == metrics[metric.key]
    names = {int(c["id"]): c["name"] for c in gt["categories"]}
    assert {names[k]: v for k, v in stats.per_class_ap.items()} == metrics["classwise"]


def test_match_arrays_point_at_inputs() -> None:
    gt, results = random_case(3)
    m = evaluate(gt, results)
    n_areas, n_thr, n = m.tp.shape
    assert (n_areas, n_thr) == (4, 10) and m.ignored.shape == m.matched.shape == m.tp.shape
    assert m.image_ids == sorted(image["id"] for image in gt["images"])
    for j, i in enumerate(m.det_result.tolist()):
        k = np.searchsorted(m.category_start, j, side="right") - 1
        assert results[i]["category_id"] == m.category_ids[k]
        assert results[i]["score"] == m.det_score[j]
        assert results[i]["image_id"] == m.image_ids[m.det_image[j]]
    assert not (m.tp & m.ignored).any() and (m.matched[m.tp] >= 0).all()
    # A true positive's GT is on its image and of its category.
    category = np.repeat(m.category_ids, np.diff(m.category_start))
    for a, t, j in zip(*np.nonzero(m.tp), strict=True):
        annotation = gt["annotations"][m.matched[a, t, j]]
        assert annotation["image_id"] == m.image_ids[m.det_image[j]]
        assert annotation["category_id"] == category[j]
    # Within a category: score descending, then image position.
    for k in range(len(m.category_ids)):
        block = slice(m.category_start[k], m.category_start[k + 1])
        keys = list(zip(-m.det_score[block], m.det_image[block], strict=True))
        assert keys == sorted(keys)


def test_all_ones_weights_equal_unweighted_exactly() -> None:
    for seed in range(10):
        matches = evaluate(*random_case(seed))
        plain, ones = summarize(matches), summarize(matches, np.ones(matches.n_images))
        np.testing.assert_array_equal(plain.stats, ones.stats)
        np.testing.assert_array_equal(plain.precision, ones.precision)
        np.testing.assert_array_equal(plain.recall, ones.recall)
        assert plain.per_class_ap == ones.per_class_ap


def duplicated(
    gt: dict[str, Any], results: list[dict[str, Any]], copies: dict[Any, int]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Image i's GT and results ``copies[i]`` times, copy c under id i + 100000 * c."""
    images, annotations, kept = [], [], []
    fresh_ids = iter(range(max(a["id"] for a in gt["annotations"]) + 1, 10**9))
    for image in gt["images"]:
        for c in range(copies[image["id"]]):
            new_id = image["id"] + 100_000 * c
            images.append({**image, "id": new_id})
            for a in gt["annotations"]:
                if a["image_id"] == image["id"]:
                    ann_id = a["id"] if c == 0 else next(fresh_ids)
                    annotations.append({**a, "id": ann_id, "image_id": new_id})
            kept += [{**r, "image_id": new_id} for r in results if r["image_id"] == image["id"]]
    return {**gt, "images": images, "annotations": annotations}, kept


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 6, 7, 8, 9, 11, 12])
def test_integer_weights_equal_duplicated_images_when_scores_are_distinct(seed: int) -> None:
    # With distinct scores a copy's results only tie with the original's, so they stay next
    # to it in the ranking, as the weight puts them. (Seeds without GT id 0, whose copies
    # under new ids would count as true positives.)
    gt, results = random_case(seed)
    rng = np.random.default_rng(seed)
    for r in results:
        r["score"] = float(rng.random())
    matches = evaluate(gt, results)
    weights = rng.integers(0, 4, matches.n_images)
    weighted = summarize(matches, weights)
    copies = dict(zip(matches.image_ids, weights.tolist(), strict=True))
    physical = summarize(evaluate(*duplicated(gt, results, copies)))
    np.testing.assert_array_equal(weighted.stats, physical.stats)
    np.testing.assert_array_equal(weighted.precision, physical.precision)


def test_integer_weights_can_differ_from_duplicates_when_scores_tie() -> None:
    # COCOeval ranks tied scores by image id, so a copy under a new id lands after the other
    # images' tied results, not next to its original: a copied hit then ranks below a miss.
    gt = coco([ann(1, BOX), ann(2, BOX)])
    results = [det(1, BOX, 0.9), det(2, [50, 50, 5, 5], 0.9)]
    matches = evaluate(gt, results)
    weighted = summarize(matches, np.array([2.0, 1.0])).as_dict()
    physical = summarize(evaluate(*duplicated(gt, results, {1: 2, 2: 1}))).as_dict()
    assert weighted["AP50"] == pytest.approx(2 / 3, abs=0.01)  # hit, hit, miss
    assert physical["AP50"] < weighted["AP50"]  # hit, miss, hit


@pytest.mark.parametrize("seed", range(5))
def test_zero_weight_equals_removing_the_image_even_with_ties(seed: int) -> None:
    gt, results = random_case(seed)
    matches = evaluate(gt, results)
    gone = matches.image_ids[seed % matches.n_images]
    weights = np.array([float(i != gone) for i in matches.image_ids])
    copies = {i: int(i != gone) for i in matches.image_ids}
    kept_gt, kept_results = duplicated(gt, results, copies)
    kept_gt["images"] = gt["images"]  # the image stays, empty
    removed = summarize(evaluate(kept_gt, kept_results))
    np.testing.assert_array_equal(summarize(matches, weights).precision, removed.precision)
    np.testing.assert_array_equal(summarize(matches, weights).stats, removed.stats)


@pytest.mark.parametrize(
    "weights", [np.ones(3), -np.ones(2), np.array([1.0, np.nan]), np.ones((2, 1))]
)
def test_bad_weights_are_refused(weights: np.ndarray) -> None:
    matches = evaluate(coco([ann(1, BOX)]), [])
    with pytest.raises(ValueError, match="image_weights must be 2 finite numbers >= 0"):
        summarize(matches, weights)


def test_invalid_results_name_the_entry_even_after_a_zero_size_box() -> None:
    gt = coco([ann(1, BOX)])
    with pytest.raises(AnalysisInputError, match=r"results\[1\].*width"):
        evaluate(gt, [det(1, [0, 0, 0, 5], 0.9), det(1, [0, 0, -1, 5], 0.9)])
    with pytest.raises(AnalysisInputError, match=r"results\[1\].*image_id"):
        evaluate(gt, [det(1, [0, 0, 5, 0], 0.9), det(9, BOX, 0.9)])
    with pytest.raises(AnalysisInputError, match=r"results\[0\].*score"):
        evaluate(gt, [det(1, BOX, float("nan"))])
    with pytest.raises(AnalysisInputError, match="list of dicts"):
        evaluate(gt, {"image_id": 1})  # type: ignore[arg-type]


def test_non_numeric_iscrowd_is_refused() -> None:
    with pytest.raises(AnalysisInputError, match=r"annotations'\]\[0\]: field 'iscrowd'"):
        evaluate(coco([ann(1, BOX, iscrowd="yes")]), [])

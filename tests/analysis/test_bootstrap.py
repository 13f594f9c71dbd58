"""Bootstrap intervals and paired comparisons: the resampled figures equal the engine's (and so
COCOeval's), draws are seeded, a run equals itself, planted errors are found, and intervals
cover a large pool's mAP as often as they claim. No services."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from backend.analysis.bootstrap import (
    METHOD,
    Comparison,
    Difference,
    bootstrap_intervals,
    describe_difference,
    holm,
    paired_comparison,
    resample_counts,
)
from backend.analysis.bootstrap import difference_of as paired_difference
from backend.analysis.bootstrap_stats import N_STATS, plan_resampling, weighted_stats
from backend.analysis.engine import CocoMatches, evaluate, summarize
from backend.analysis.tables import METRICS

CATEGORIES = (1, 2, 3)


def synthetic(
    n_images: int, seed: int, *, exotic: bool = False
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A fixed synthetic detector on random GT: 1-4 boxes of 3 classes from 8 to 250 px (all
    three area ranges), each found with probability 0.8 (jittered, right class 90% of the
    time), plus Poisson(1.5) false positives per image.

    ``exotic`` adds what accumulate treats specially: crowd boxes, a class without GT, images
    without GT, tied scores, 130 results on one image and class (past the 100 kept), and
    zero-width results.
    """
    rng = np.random.default_rng(seed)
    n_gt = rng.integers(0 if exotic else 1, 5, n_images)
    image = np.repeat(np.arange(1, n_images + 1), n_gt)
    wh = np.exp(rng.uniform(np.log(8), np.log(250), (len(image), 2)))
    xy = rng.uniform(0, 400, (len(image), 2))
    category = rng.choice(CATEGORIES, len(image))
    crowd = (rng.random(len(image)) < 0.08) if exotic else np.zeros(len(image), bool)
    annotations = [
        {
            "id": i + 1,
            "image_id": int(im),
            "category_id": int(c),
            "bbox": [*p, *s],
            "area": s[0] * s[1],
            "iscrowd": int(cr),
        }
        for i, (im, c, p, s, cr) in enumerate(
            zip(image, category, xy.tolist(), wh.tolist(), crowd, strict=True)
        )
    ]
    found = rng.random(len(image)) < 0.8
    jitter = rng.normal(0, 0.12, (len(image), 4)) * np.hstack([wh, wh])
    boxes = np.hstack([xy + jitter[:, :2], np.maximum(wh + jitter[:, 2:], 1)])
    labels = np.where(rng.random(len(image)) < 0.9, category, rng.choice(CATEGORIES, len(image)))
    scores = np.clip(rng.normal(0.65, 0.2, len(image)), 0.01, 1)
    n_fp = rng.poisson(1.5, n_images)
    fp_image = np.repeat(np.arange(1, n_images + 1), n_fp)
    fp_wh = np.exp(rng.uniform(np.log(8), np.log(250), (len(fp_image), 2)))
    fp_boxes = np.hstack([rng.uniform(0, 400, (len(fp_image), 2)), fp_wh])
    all_image = np.concatenate([image[found], fp_image])
    all_boxes = np.concatenate([boxes[found], fp_boxes])
    all_labels = np.concatenate([labels[found], rng.choice(CATEGORIES, len(fp_image))])
    all_scores = np.concatenate([scores[found], rng.uniform(0, 0.8, len(fp_image))])
    if exotic:
        all_scores = all_scores.round(1)  # ties within and across images
        all_boxes[rng.random(len(all_boxes)) < 0.03, 2] = 0.0
    results = [
        {"image_id": int(im), "category_id": int(c), "bbox": b, "score": float(s)}
        for im, c, b, s in zip(
            all_image, all_labels, all_boxes.tolist(), all_scores.tolist(), strict=True
        )
    ]
    categories = [{"id": c} for c in CATEGORIES]
    if exotic:
        categories.append({"id": 9})  # results but no GT: undefined everywhere
        results += [{"image_id": 1, "category_id": 9, "bbox": [5.0, 5.0, 20.0, 20.0], "score": 0.5}]
        results += [
            {
                "image_id": 2,
                "category_id": 1,
                "bbox": [*rng.uniform(0, 300, 2).tolist(), 30.0, 30.0],
                "score": float(s),
            }
            for s in rng.random(130).round(2)
        ]
    images = [{"id": i} for i in range(1, n_images + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def restrict(matches: CocoMatches, keep: np.ndarray) -> CocoMatches:
    """The matches of the images at positions ``keep`` (ascending) only: what evaluating those
    images alone gives, since COCOeval matches each image on its own."""
    position = np.full(matches.n_images, -1)
    position[keep] = np.arange(len(keep))
    det = position[matches.det_image] >= 0
    gt = position[matches.gt_image] >= 0
    n_cats = len(matches.category_ids)
    category = np.repeat(np.arange(n_cats), np.diff(matches.category_start))[det]
    return CocoMatches(
        image_ids=[matches.image_ids[i] for i in keep],
        category_ids=matches.category_ids,
        category_start=np.searchsorted(category, np.arange(n_cats + 1)),
        det_result=matches.det_result[det],
        det_image=position[matches.det_image[det]],
        det_score=matches.det_score[det],
        det_rank=matches.det_rank[det],
        matched=matches.matched[:, :, det],
        tp=matches.tp[:, :, det],
        ignored=matches.ignored[:, :, det],
        gt_image=position[matches.gt_image[gt]],
        gt_category=matches.gt_category[gt],
        gt_count=matches.gt_count[:, gt],
    )


def engine_rows(matches: CocoMatches, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """summarize's stats[:6] and per-class AP for each weighting, NaN where it says -1/None."""
    stats, per_class = [], []
    for row in weights:
        found = summarize(matches, row)
        stats.append(np.where(found.stats[:N_STATS] < 0, np.nan, found.stats[:N_STATS]))
        per_class.append([np.nan if v is None else v for v in found.per_class_ap.values()])
    return np.array(stats), np.array(per_class)


def cocoeval_stats(gt: dict[str, Any], results: list[dict[str, Any]]) -> np.ndarray:
    coco_gt = COCO()
    coco_gt.dataset = copy.deepcopy(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats[:N_STATS]


@pytest.fixture(scope="module")
def run() -> CocoMatches:
    return evaluate(*synthetic(400, seed=11))


def test_every_stored_metric_is_resampled() -> None:
    assert sorted(m.stat for m in METRICS) == list(range(N_STATS))


@pytest.mark.parametrize("seed", range(6))
def test_unit_weights_give_the_engines_figures_bit_for_bit(seed: int) -> None:
    gt, results = synthetic(60, seed, exotic=True)
    matches = evaluate(gt, results)
    ones = np.ones((1, matches.n_images), dtype=np.int64)
    stats, per_class = weighted_stats(plan_resampling(matches), ones)
    expected_stats, expected_per_class = engine_rows(matches, ones)
    np.testing.assert_array_equal(stats, expected_stats)
    np.testing.assert_array_equal(per_class, expected_per_class)
    assert np.isnan(per_class[0, -1])  # the class without GT
    if seed == 0:  # and so COCOeval's
        np.testing.assert_array_equal(stats[0], cocoeval_stats(gt, results))


@pytest.mark.parametrize("seed", range(6))
def test_integer_weights_give_the_engines_weighted_figures(seed: int) -> None:
    matches = evaluate(*synthetic(60, seed, exotic=True))
    rng = np.random.default_rng(seed)
    n = matches.n_images
    weights = np.vstack(
        [
            rng.integers(0, 4, (3, n)),
            rng.multinomial(n, np.full(n, 1 / n), 3),
            np.eye(n, dtype=np.int64)[:2] * 5,  # one image only: most figures undefined
            np.zeros((1, n), dtype=np.int64),
        ]
    )
    stats, per_class = weighted_stats(plan_resampling(matches), weights)
    expected_stats, expected_per_class = engine_rows(matches, weights)
    np.testing.assert_allclose(stats, expected_stats, rtol=0, atol=1e-12)
    np.testing.assert_allclose(per_class, expected_per_class, rtol=0, atol=1e-12)
    assert np.isnan(stats[-1]).all()  # no image drawn: nothing defined


def test_weights_must_be_counts(run: CocoMatches) -> None:
    plan = plan_resampling(run)
    with pytest.raises(ValueError, match="integers >= 0"):
        weighted_stats(plan, np.full((1, run.n_images), 0.5))
    with pytest.raises(ValueError, match=f"must be \\(W, {run.n_images}\\)"):
        weighted_stats(plan, np.ones((1, 3), dtype=np.int64))


def test_draws_do_not_depend_on_the_chunk_size() -> None:
    small = np.concatenate(list(resample_counts(50, 23, seed=4, chunk=5)))
    large = np.concatenate(list(resample_counts(50, 23, seed=4, chunk=64)))
    np.testing.assert_array_equal(small, large)
    assert small.shape == (23, 50) and (small.sum(axis=1) == 50).all()


def test_intervals_are_seeded(run: CocoMatches) -> None:
    first = bootstrap_intervals(run, resamples=200, seed=3)
    assert bootstrap_intervals(run, resamples=200, seed=3) == first
    other = bootstrap_intervals(run, resamples=200, seed=4)
    assert other.metrics["bbox_mAP"] != first.metrics["bbox_mAP"]
    assert (first.resamples, first.seed, first.level, first.method) == (200, 3, 0.95, METHOD)


def test_intervals_bracket_the_engines_estimates(run: CocoMatches) -> None:
    found = bootstrap_intervals(run, resamples=300, seed=0)
    stats = summarize(run)
    for metric in METRICS:
        interval = found.metrics[metric.key]
        assert interval.estimate == stats.stats[metric.stat]
        assert interval.low < interval.estimate < interval.high
        assert interval.high - interval.low < 0.2
        assert interval.defined == 300
    for cat, interval in found.per_class.items():
        assert interval.estimate == stats.per_class_ap[cat]
        assert interval.low < interval.estimate < interval.high


def test_figures_undefined_in_some_resamples_use_the_others() -> None:
    gt, results = synthetic(40, seed=5)
    # class 7 has one GT box, so it is undefined where its image is not drawn (~36%)
    gt["categories"].append({"id": 7})
    gt["annotations"].append(
        {"id": 10_000, "image_id": 1, "category_id": 7, "bbox": [0, 0, 50, 50], "iscrowd": 0}
    )
    results.append({"image_id": 1, "category_id": 7, "bbox": [0, 0, 50, 50], "score": 0.9})
    gt["categories"].append({"id": 8})  # no GT at all
    found = bootstrap_intervals(evaluate(gt, results), resamples=500, seed=1)
    rare = found.per_class[7]
    assert 250 < rare.defined < 400
    assert [rare.estimate, rare.low, rare.high] == pytest.approx([1.0, 1.0, 1.0])
    assert found.per_class[8].estimate is None
    assert (found.per_class[8].low, found.per_class[8].defined) == (None, 0)


def test_a_run_compared_with_itself_does_not_differ(run: CocoMatches) -> None:
    found = paired_comparison(run, run, resamples=200, seed=2)
    for difference in [*found.metrics.values(), *found.per_class.values()]:
        assert (difference.estimate, difference.low, difference.high) == (0.0, 0.0, 0.0)
        assert difference.p_value == 1.0
    sentence = describe_difference(found, name_a="job 1", name_b="job 1 again")
    assert sentence == (
        "no significant difference in mAP between job 1 and job 1 again on this val set (p = 1)"
    )


def test_errors_planted_on_a_tenth_of_the_images_are_significant() -> None:
    gt, results = synthetic(1000, seed=8)
    rng = np.random.default_rng(8)
    damaged_images = set(rng.choice(1000, 100, replace=False).tolist())
    damaged = copy.deepcopy(results)
    for result in damaged:
        if result["image_id"] in damaged_images:
            result["bbox"][0] += result["bbox"][2] * 0.6  # IoU with its box falls below 0.5
    original, worse = evaluate(gt, results), evaluate(gt, damaged)
    found = paired_comparison(original, worse, resamples=1000, seed=0)
    mean_ap = found.metrics["bbox_mAP"]
    assert mean_ap.estimate < 0 and mean_ap.high < 0
    assert mean_ap.p_value < 0.01
    sentence = describe_difference(found, name_a="original", name_b="damaged")
    assert sentence.startswith(f"original beats damaged by {-mean_ap.estimate * 100:.1f} mAP (")
    swapped = paired_comparison(worse, original, resamples=1000, seed=0).metrics["bbox_mAP"]
    assert swapped.estimate == -mean_ap.estimate and swapped.low > 0
    assert swapped.p_value == mean_ap.p_value
    # the same damage on a single image is not told apart from noise
    one = copy.deepcopy(results)
    for result in one:
        if result["image_id"] == 1:
            result["bbox"][0] += result["bbox"][2] * 0.6
    small = paired_comparison(original, evaluate(gt, one), resamples=500, seed=0)
    assert small.metrics["bbox_mAP"].p_value > 0.05


def test_a_run_without_predictions_scores_zero_in_every_resample() -> None:
    gt, results = synthetic(200, seed=3)
    empty, real = evaluate(gt, []), evaluate(gt, results)
    found = bootstrap_intervals(empty, resamples=100, seed=0).metrics["bbox_mAP"]
    assert (found.estimate, found.low, found.high, found.defined) == (0.0, 0.0, 0.0, 100)
    compared = paired_comparison(empty, real, resamples=100, seed=0)
    assert compared.metrics["bbox_mAP"].p_value == pytest.approx(2 / 101)
    assert describe_difference(compared, name_a="none", name_b="real").startswith(
        "real beats none by "
    )


def test_the_p_value_tests_the_error_about_the_observed_difference() -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.003, 1000)
    a = np.full(1000, 0.5)
    # Observed +0.01; resampled differences around +0.01: an error of 0.01 is unlikely.
    tight = paired_difference(0.5, 0.51, a, a + 0.01 + noise, 0.95)
    assert tight.p_value == pytest.approx(2 / 1001) and 0 < tight.low < tight.high
    # Resampled differences around +0.02: resampling adds +0.01 by itself, so the observed
    # +0.01 is as likely an error of that size as a real difference (all of them above 0
    # would make a "share of d* below 0" test reject).
    shifted = paired_difference(0.5, 0.51, a, a + 0.02 + noise, 0.95)
    assert shifted.p_value > 0.5 and shifted.low < 0 < shifted.high


def test_paired_runs_must_share_images_and_ground_truth(run: CocoMatches) -> None:
    other = restrict(run, np.arange(1, run.n_images))
    with pytest.raises(ValueError, match=r"1 image ids only in A \(e.g. \[1\]\), 0 only in B"):
        paired_comparison(run, other, resamples=10)
    gt, results = synthetic(400, seed=11)
    gt["annotations"] = gt["annotations"][1:]
    with pytest.raises(ValueError, match="same ground truth"):
        paired_comparison(run, evaluate(gt, results), resamples=10)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"resamples": 0}, "resamples must be an integer >= 1"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"level": 95}, "level must be between 0 and 1"),
    ],
)
def test_bad_options_are_refused(run: CocoMatches, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bootstrap_intervals(run, **options)


def test_results_serialise_to_json(run: CocoMatches) -> None:
    found = bootstrap_intervals(run, resamples=20, seed=0).as_dict()
    assert json.loads(json.dumps(found)) == found
    assert set(found["metrics"]) == {m.key for m in METRICS}
    assert set(found["per_class"]) == {"1", "2", "3"}
    assert set(found["metrics"]["bbox_mAP"]) == {"estimate", "low", "high", "defined"}
    compared = paired_comparison(run, run, resamples=20).as_dict()
    assert json.loads(json.dumps(compared)) == compared


def _comparison(estimate: float, low: float, high: float, p_value: float) -> Comparison:
    difference = Difference(estimate, low, high, p_value, defined=1000)
    metrics = {m.key: difference for m in METRICS}
    return Comparison(metrics, {}, resamples=1000, seed=0, level=0.95)


@pytest.mark.parametrize(
    ("comparison", "sentence"),
    [
        (
            _comparison(0.012, 0.004, 0.020, 0.003),
            "B beats A by 1.2 mAP (95% CI 0.4 to 2.0, p = 0.003)",
        ),
        (
            _comparison(-0.012, -0.020, -0.004, 0.0004),
            "A beats B by 1.2 mAP (95% CI 0.4 to 2.0, p < 0.001)",
        ),
        (
            _comparison(0.004, -0.002, 0.010, 0.41),
            "no significant difference in mAP between A and B on this val set (p = 0.41)",
        ),
    ],
)
def test_a_difference_reads_as_one_sentence(comparison: Comparison, sentence: str) -> None:
    assert describe_difference(comparison, name_a="A", name_b="B") == sentence


def test_describe_names_the_metrics_it_knows(run: CocoMatches) -> None:
    with pytest.raises(ValueError, match="unknown metric 'AP'; expected one of bbox_mAP, "):
        describe_difference(_comparison(0, 0, 0, 1), name_a="A", name_b="B", metric="AP")


def test_holm_adjusts_step_down_in_input_order() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04, then the
    # running maximum
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert holm([]) == []
    with pytest.raises(ValueError, match=r"numbers in \[0, 1\]"):
        holm([0.1, 1.5])


def test_intervals_cover_the_pool_map_as_often_as_they_claim() -> None:
    # A fixed detector on a pool of 20,000 images; each of 200 val sets of 500 images drawn
    # from it gets a 95% interval, which should hold the pool's mAP about 95% of the time
    # (90-99% allows for 200 draws: one standard error is 1.5 points). The pool is evaluated
    # once; a val set's matches are the pool's restricted to its images. 100 resamples per
    # val set keep this to seconds (it runs in the fast tier); their 2.5% and 97.5% quantiles
    # are coarser than a stored interval's (1000), which can only widen the spread of
    # coverage, and coverage is what is checked (95.5% here; 94.5% with 200 resamples).
    pool = evaluate(*synthetic(20_000, seed=0))
    pool_map = summarize(pool).stats[0]
    rng = np.random.default_rng(0)
    covered = []
    for draw in range(200):
        val = restrict(pool, np.sort(rng.choice(pool.n_images, 500, replace=False)))
        found = bootstrap_intervals(val, resamples=100, seed=draw).metrics["bbox_mAP"]
        covered.append(found.low <= pool_map <= found.high)
    assert 0.90 <= np.mean(covered) <= 0.99, np.mean(covered)


def test_a_restricted_pool_equals_zero_weights() -> None:
    matches = evaluate(*synthetic(300, seed=1, exotic=True))
    keep = np.sort(np.random.default_rng(1).choice(300, 120, replace=False))
    weights = np.zeros(300)
    weights[keep] = 1
    alone, weighted = summarize(restrict(matches, keep)), summarize(matches, weights)
    np.testing.assert_array_equal(alone.stats, weighted.stats)
    assert alone.per_class_ap == weighted.per_class_ap

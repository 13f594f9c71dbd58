"""Replicate groups: spread over seeds vs val images, and the two-level group comparison."""

from __future__ import annotations

import numpy as np
import pytest

from backend.analysis.bootstrap import paired_comparison
from backend.analysis.engine import evaluate
from backend.analysis.replicates import compare_groups, summarize_group


def _ground_truth(n_images: int = 60) -> dict:
    rng = np.random.default_rng(0)
    annotations = []
    for image in range(1, n_images + 1):
        for _ in range(3):
            x, y = rng.uniform(0, 150, 2)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image,
                    "category_id": int(rng.integers(1, 3)),
                    "bbox": [float(x), float(y), 40.0, 40.0],
                    "area": 1600.0,
                    "iscrowd": 0,
                }
            )
    return {
        "images": [{"id": i, "width": 200, "height": 200} for i in range(1, n_images + 1)],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": annotations,
    }


def _run(gt: dict, *, seed: int, jitter: float) -> object:
    """A detector that finds every box, displaced by `jitter` px on average, plus noise."""
    rng = np.random.default_rng(seed)
    results = []
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        dx, dy = rng.normal(0, jitter, 2)
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": [x + dx, y + dy, w, h],
                "score": float(rng.uniform(0.3, 1.0)),
            }
        )
    return evaluate(gt, results)


@pytest.fixture(scope="module")
def gt() -> dict:
    return _ground_truth()


def test_a_group_summary_splits_seed_and_val_image_variance():
    found = summarize_group([0.40, 0.42, 0.44], [(0.35, 0.45), (0.37, 0.47), (0.39, 0.49)])
    assert found.n == 3 and found.mean == pytest.approx(0.42)
    assert found.std == pytest.approx(0.02)
    # t(0.975, 2) = 4.303: half-width 4.303 * 0.02 / sqrt(3)
    assert found.high - found.mean == pytest.approx(4.302653 * 0.02 / np.sqrt(3), rel=1e-5)
    assert found.val_se == pytest.approx(0.10 / (2 * 1.959964), rel=1e-5)
    assert found.seed_share == pytest.approx(0.02**2 / (0.02**2 + found.val_se**2))
    single = summarize_group([0.4], [(0.3, 0.5)])
    assert single.n == 1 and single.std is None and single.seed_share is None
    assert summarize_group([None], [None]).n == 0


def test_one_run_per_group_is_the_paired_comparison(gt):
    a, b = _run(gt, seed=1, jitter=4), _run(gt, seed=2, jitter=8)
    grouped = compare_groups([a], [b], resamples=200, seed=3)
    paired = paired_comparison(a, b, resamples=200, seed=3)
    assert grouped.metrics == paired.metrics and grouped.per_class == paired.per_class


def test_a_group_against_itself_differs_by_nothing(gt):
    runs = [_run(gt, seed=s, jitter=5) for s in range(3)]
    found = compare_groups(runs, runs, resamples=200, seed=0)
    mean_ap = found.metrics["bbox_mAP"]
    assert mean_ap.estimate == 0 and mean_ap.p_value == 1


def test_a_sharper_group_beats_a_blurrier_one_over_seeds_and_images(gt):
    sharp = [_run(gt, seed=s, jitter=3) for s in range(3)]
    blurry = [_run(gt, seed=10 + s, jitter=9) for s in range(3)]
    found = compare_groups(blurry, sharp, resamples=300, seed=0)
    mean_ap = found.metrics["bbox_mAP"]
    assert mean_ap.estimate > 0 and mean_ap.low > 0 and mean_ap.p_value < 0.01
    # seeds add doubt: the group interval is wider than one pair's
    one_pair = paired_comparison(blurry[0], sharp[0], resamples=300, seed=0).metrics["bbox_mAP"]
    assert (mean_ap.high - mean_ap.low) > 0.5 * (one_pair.high - one_pair.low)


def test_groups_on_different_images_are_refused(gt):
    other = _ground_truth(30)
    with pytest.raises(ValueError, match="same val images"):
        compare_groups([_run(gt, seed=0, jitter=5)], [_run(other, seed=0, jitter=5)])

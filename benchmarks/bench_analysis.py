"""Time ``analyze`` (validation, matching, summaries, counts and dAP) on a synthetic set.

Default: 5,000 images x 100 predictions x ~7 GT boxes, 20 classes. Target: <= 10 s on a
2-core machine. Run: ``python benchmarks/bench_analysis.py [--images N] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import numpy as np

from backend.analysis.inputs import parse_ground_truth, parse_results
from backend.analysis.matching import match_table
from backend.analysis.summary import analyze, image_summaries
from backend.analysis.tide import delta_ap

WIDTH, HEIGHT = 1333, 800


def synthetic_set(
    n_images: int, preds_per_image: int, n_classes: int, seed: int = 0
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """COCO gt and results: jittered copies of GT (some relabelled) plus random boxes."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, n_images + 1):
        images.append({"id": image_id, "width": WIDTH, "height": HEIGHT})
        n_gt = int(rng.integers(3, 12))  # mean 7
        wh = rng.uniform(20, 300, size=(n_gt, 2))
        xy = rng.uniform(0, 1, size=(n_gt, 2)) * ([WIDTH, HEIGHT] - wh)
        cats = rng.integers(1, n_classes + 1, size=n_gt)
        crowd = rng.random(n_gt) < 0.01
        for box_xy, box_wh, cat, is_crowd in zip(xy, wh, cats, crowd, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(cat),
                    "bbox": [*box_xy.tolist(), *box_wh.tolist()],
                    "area": float(box_wh[0] * box_wh[1]),
                    "iscrowd": int(is_crowd),
                }
            )
        # ~3 predictions near each GT box, the rest anywhere.
        near = rng.integers(0, n_gt, size=min(preds_per_image, 3 * n_gt))
        jitter = rng.normal(0, 0.15, size=(len(near), 4)) * np.repeat(wh[near], 2, axis=1)
        near_xy = xy[near] + jitter[:, :2]
        near_wh = np.maximum(wh[near] + jitter[:, 2:], 2.0)
        near_cat = np.where(
            rng.random(len(near)) < 0.85, cats[near], rng.integers(1, n_classes + 1, len(near))
        )
        n_far = preds_per_image - len(near)
        far_wh = rng.uniform(10, 300, size=(n_far, 2))
        far_xy = rng.uniform(0, 1, size=(n_far, 2)) * ([WIDTH, HEIGHT] - far_wh)
        boxes = np.concatenate((np.hstack((near_xy, near_wh)), np.hstack((far_xy, far_wh))))
        labels = np.concatenate((near_cat, rng.integers(1, n_classes + 1, n_far)))
        scores = np.concatenate(
            (rng.uniform(0.3, 1.0, len(near)), rng.uniform(0.0, 0.6, n_far))
        ).round(4)
        for box, label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist(), strict=True):
            results.append(
                {"image_id": image_id, "category_id": label, "bbox": box, "score": score}
            )
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, n_classes + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def _timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--preds", type=int, default=100)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    build_s, (gt, results) = _timed(lambda: synthetic_set(args.images, args.preds, args.classes))
    print(
        f"synthetic set: {len(gt['images'])} images, {len(gt['annotations'])} GT, "
        f"{len(results)} predictions (built in {build_s:.1f} s); cpus: {os.cpu_count()}"
    )
    totals = []
    for _ in range(args.repeat):
        seconds, analysis = _timed(lambda: analyze(gt, results, score_thr=0.05))
        totals.append(seconds)
    print(f"analyze (score_thr=0.05): median {statistics.median(totals):.2f} s of {totals}")
    print(f"  kept predictions: {len(analysis.predictions)}, counts: {analysis.counts}")
    print(
        f"  AP50 {analysis.ap50:.2f}, dAP: "
        + ", ".join(f"{k} {v:.2f}" for k, v in analysis.dap.items())
    )

    # Where the time goes (one run of each stage).
    t_gt, ground_truth = _timed(lambda: parse_ground_truth(gt))
    t_res, detections = _timed(lambda: parse_results(results, ground_truth, score_thr=0.05))
    t_match, table = _timed(lambda: match_table(ground_truth, detections))
    t_dap, _ = _timed(lambda: delta_ap(table))
    t_img, _ = _timed(lambda: image_summaries(table))
    t_obj, _ = _timed(lambda: (table.predictions(), table.ground_truth_matches()))
    print(
        f"  stages: parse gt {t_gt:.2f} s, parse results {t_res:.2f} s, match {t_match:.2f} s, "
        f"dAP {t_dap:.2f} s, image summaries {t_img:.2f} s, match objects {t_obj:.2f} s"
    )


if __name__ == "__main__":
    main()

"""Mask scoring (iouType "segm") of the numpy COCO engine against pycocotools' COCOeval on
random polygons, crowd RLE regions and noisy predicted masks. No services."""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from backend.analysis import AnalysisInputError
from backend.analysis.engine import evaluate, summarize

HEIGHT, WIDTH = 96, 128


def _polygon(rng: np.random.Generator) -> list[float]:
    """A random convex-ish polygon (3-8 corners) inside the image."""
    cx, cy = rng.uniform(4, WIDTH - 4), rng.uniform(4, HEIGHT - 4)
    radius = rng.uniform(2, 40)
    angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 9))))
    xs = np.clip(cx + radius * np.cos(angles) * rng.uniform(0.6, 1.0, len(angles)), 0, WIDTH)
    ys = np.clip(cy + radius * np.sin(angles) * rng.uniform(0.6, 1.0, len(angles)), 0, HEIGHT)
    return np.round(np.stack([xs, ys], axis=1).ravel(), 2).tolist()


def _rle_of(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def random_case(seed: int, n_images: int = 6) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """GT polygons (some in two parts, some crowd regions as uncompressed RLE) and results:
    jittered copies of GT masks, confusions and random blobs, scored at random."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "height": HEIGHT, "width": WIDTH} for i in range(n_images)]
    annotations, results = [], []
    for image in images:
        for _ in range(int(rng.integers(0, 6))):
            parts = [_polygon(rng) for _ in range(1 if rng.random() < 0.8 else 2)]
            rle = mask_utils.merge(mask_utils.frPyObjects(parts, HEIGHT, WIDTH))
            area = float(mask_utils.area(rle))
            if area == 0:
                continue
            crowd = rng.random() < 0.1
            if crowd:  # a crowd region as uncompressed RLE, as COCO stores them
                mask = mask_utils.decode(rle)
                flat = mask.ravel(order="F")
                changes = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1], True])
                counts = np.diff(changes).tolist()
                segmentation: Any = {
                    "size": [HEIGHT, WIDTH],
                    "counts": ([0] + counts) if flat[0] else counts,
                }
            else:
                segmentation = parts
            box = mask_utils.toBbox(rle).tolist()
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["id"],
                    "category_id": int(rng.integers(1, 4)),
                    "bbox": box,
                    "area": area,
                    "iscrowd": int(crowd),
                    "segmentation": segmentation,
                }
            )
            for _ in range(int(rng.integers(0, 3))):
                mask = mask_utils.decode(rle).astype(bool)
                shift = rng.integers(-2, 3, 2)
                mask = np.roll(mask, tuple(shift.tolist()), axis=(0, 1))
                mask &= rng.random(mask.shape) < rng.uniform(0.85, 1.0)
                category = annotations[-1]["category_id"] if rng.random() < 0.8 else 1
                results.append(
                    {
                        "image_id": image["id"],
                        "category_id": category,
                        "segmentation": _rle_of(mask),
                        "score": float(np.round(rng.random(), 2)),  # ties on purpose
                    }
                )
        for _ in range(int(rng.integers(0, 4))):
            blob = mask_utils.decode(
                mask_utils.merge(mask_utils.frPyObjects([_polygon(rng)], HEIGHT, WIDTH))
            )
            results.append(
                {
                    "image_id": image["id"],
                    "category_id": int(rng.integers(1, 4)),
                    "segmentation": _rle_of(blob),
                    "score": float(rng.random()),
                }
            )
    categories = [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def cocoeval_segm(gt: dict[str, Any], results: list[dict[str, Any]]) -> COCOeval:
    coco_gt = COCO()
    coco_gt.dataset = copy.deepcopy(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


@pytest.mark.parametrize("seed", range(25))
def test_segm_equals_cocoeval(seed: int) -> None:
    gt, results = random_case(seed)
    if not results:
        pytest.skip("this seed drew no results")
    reference = cocoeval_segm(gt, results)
    found = summarize(evaluate(gt, results, iou_type="segm"))
    np.testing.assert_array_equal(found.stats, reference.stats)
    np.testing.assert_array_equal(found.precision, reference.eval["precision"])
    np.testing.assert_array_equal(found.recall, reference.eval["recall"])


def test_segm_differs_from_bbox_where_masks_do() -> None:
    """A thin diagonal mask inside a square box: box IoU 1, mask IoU far lower."""
    diagonal = np.eye(32, dtype=np.uint8)
    diagonal[1:, :-1] |= np.eye(31, dtype=np.uint8)
    image = np.zeros((HEIGHT, WIDTH), np.uint8)
    image[:32, :32] = diagonal
    flipped = np.zeros_like(image)
    flipped[:32, :32] = diagonal[:, ::-1]
    gt = {
        "images": [{"id": 1, "height": HEIGHT, "width": WIDTH}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [0.0, 0.0, 32.0, 32.0],
                "area": float(image.sum()),
                "iscrowd": 0,
                "segmentation": _rle_of(image),
            }
        ],
    }
    results = [
        {
            "image_id": 1,
            "category_id": 1,
            "bbox": [0.0, 0.0, 32.0, 32.0],
            "segmentation": _rle_of(flipped),
            "score": 0.9,
        }
    ]
    assert summarize(evaluate(gt, results)).stats[0] == pytest.approx(1.0)
    assert summarize(evaluate(gt, results, iou_type="segm")).stats[0] == 0.0
    without_boxes = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    np.testing.assert_array_equal(
        summarize(evaluate(gt, without_boxes, iou_type="segm")).stats,
        cocoeval_segm(gt, without_boxes).stats,
    )


def test_missing_gt_segmentation_is_named() -> None:
    gt, results = random_case(3)
    del gt["annotations"][0]["segmentation"]
    with pytest.raises(AnalysisInputError, match=r"gt\['annotations'\]\[0\].*segmentation"):
        evaluate(gt, results, iou_type="segm")


def test_result_mask_of_the_wrong_size_is_named() -> None:
    gt, results = random_case(3)
    results[0]["segmentation"] = {"size": [HEIGHT + 1, WIDTH], "counts": "abc"}
    with pytest.raises(AnalysisInputError, match=r"results\[0\].*size \[96, 128\]"):
        evaluate(gt, results, iou_type="segm")

"""Unsupervised proposals (worker/proposals.py), AlignDet's pseudo-boxes: they find the shapes of
the synthetic dataset, are valid, filtered and deterministic, and a folder's are computed once.
No service is needed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from backend.datasets.shapes import generate_shapes
from worker import proposals
from worker.proposals import folder_proposals, image_proposals

IMAGE_SIDE = 128


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], list[dict]]:
    """8 shapes images of 128 px (seed 1): their folder, COCO images and annotations."""
    paths = generate_shapes(
        tmp_path_factory.mktemp("shapes"),
        seed=1,
        num_train=8,
        num_val=0,
        image_size=(IMAGE_SIDE, IMAGE_SIDE),
    )
    coco = json.loads(paths.train_ann.read_text())
    return paths.train_images, coco["images"], coco["annotations"]


def _read(folder: Path, image: dict) -> np.ndarray:
    return cv2.imread(str(folder / image["file_name"]), cv2.IMREAD_COLOR)


def _iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    ix = np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0])
    iy = np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1])
    inter = ix.clip(0) * iy.clip(0)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (areas + (box[2] - box[0]) * (box[3] - box[1]) - inter)


# Measured with "detlab colour-region grouping 1": 0.97 at both 32 and 64 (37 of 38 shapes);
# on 16 images of 256 px, 0.90 at 32 and 0.97 at 64.
@pytest.mark.parametrize("per_image, floor", [(32, 0.8), (64, 0.85)])
def test_proposals_recall_most_shapes(shapes, per_image: int, floor: float) -> None:
    folder, images, annotations = shapes
    found = 0
    for image in images:
        boxes = image_proposals(_read(folder, image), per_image=per_image)
        for ann in annotations:
            if ann["image_id"] == image["id"]:
                x, y, w, h = ann["bbox"]
                gt = np.array([x, y, x + w, y + h])
                found += bool(len(boxes)) and bool(_iou(boxes, gt).max() >= 0.5)
    recall = found / len(annotations)
    print(f"{proposals.PROPOSALS_METHOD}: recall@IoU0.5 {recall:.3f} at {per_image} per image")
    assert recall >= floor


def test_boxes_are_valid_filtered_and_deduplicated(shapes) -> None:
    folder, images, _ = shapes
    for image in images:
        boxes = image_proposals(_read(folder, image), per_image=64, min_size=8)
        assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
        assert 0 < len(boxes) <= 64
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        assert (w >= 8).all() and (h >= 8).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= image["width"]).all()
        assert (boxes[:, 3] <= image["height"]).all()
        assert (w * h <= 0.9 * image["width"] * image["height"]).all()
        for i in range(1, len(boxes)):
            assert _iou(boxes[:i], boxes[i]).max() <= 0.9


def test_fewer_per_image_is_a_prefix_and_min_size_filters(shapes) -> None:
    folder, images, _ = shapes
    image = _read(folder, images[0])
    many = image_proposals(image, per_image=64)
    few = image_proposals(image, per_image=10)
    np.testing.assert_array_equal(few, many[: len(few)])
    assert (np.minimum(many[:, 2] - many[:, 0], many[:, 3] - many[:, 1]) < 30).any()
    large = image_proposals(image, per_image=64, min_size=30)
    assert len(large) and (large[:, 2:] - large[:, :2] >= 30).all()


def test_proposals_are_deterministic(shapes) -> None:
    folder, images, _ = shapes
    for image in images[:3]:
        pixels = _read(folder, image)
        first = image_proposals(pixels, per_image=32)
        np.testing.assert_array_equal(first, image_proposals(pixels.copy(), per_image=32))


def test_a_lone_object_is_found_and_a_blank_image_has_none() -> None:
    blank = np.full((96, 120, 3), 90, np.uint8)
    assert image_proposals(blank, per_image=16).shape == (0, 4)
    scene = blank.copy()
    scene[30:70, 20:60] = (30, 200, 240)
    boxes = image_proposals(scene, per_image=16)
    assert _iou(boxes[:1], np.array([20, 30, 60, 70]))[0] >= 0.8  # ranked first
    with pytest.raises(ValueError, match="expected uint8"):
        image_proposals(blank[..., 0], per_image=16)


def test_folder_proposals_are_computed_once_and_recomputed_when_an_image_changes(
    shapes, tmp_path: Path
) -> None:
    source, images, _ = shapes
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    names = [image["file_name"] for image in images[:3]]
    for name in names:
        (folder / name).write_bytes((source / name).read_bytes())
    cv2.imwrite(str(folder / "sub" / "blank.png"), np.full((64, 64, 3), 128, np.uint8))
    names.append("sub/blank.png")
    cache_dir = tmp_path / "cache"

    before = proposals.folder_proposals_computed
    first = folder_proposals(folder, names, cache_dir=cache_dir, per_image=32)
    assert proposals.folder_proposals_computed == before + 1
    assert sorted(first) == sorted(names)
    assert first["sub/blank.png"].shape == (0, 4)
    for name in names[:3]:
        expected = image_proposals(cv2.imread(str(folder / name)), per_image=32)
        np.testing.assert_array_equal(first[name], expected)
    (cache,) = cache_dir.iterdir()  # one file, no temporary left behind
    written = cache.stat().st_mtime_ns

    again = folder_proposals(folder, list(reversed(names)), cache_dir=cache_dir, per_image=32)
    assert proposals.folder_proposals_computed == before + 1  # read, not computed
    assert cache.stat().st_mtime_ns == written
    assert sorted(again) == sorted(names)
    for name in names:
        np.testing.assert_array_equal(again[name], first[name])
        assert again[name].dtype == np.float32 and again[name].shape[1:] == (4,)

    folder_proposals(folder, names, cache_dir=cache_dir, per_image=16)  # other settings
    assert proposals.folder_proposals_computed == before + 2

    changed = folder / names[0]
    cv2.imwrite(str(changed), cv2.flip(cv2.imread(str(changed)), 1))
    stamp = changed.stat().st_mtime_ns + 1_000_000_000  # also where mtimes are coarse
    os.utime(changed, ns=(stamp, stamp))
    updated = folder_proposals(folder, names, cache_dir=cache_dir, per_image=32)
    assert proposals.folder_proposals_computed == before + 3
    assert not np.array_equal(updated[names[0]], first[names[0]])
    np.testing.assert_array_equal(updated[names[1]], first[names[1]])
    assert len(list(cache_dir.iterdir())) == 3

"""The synthetic shapes dataset: deterministic, valid COCO, and as varied as promised."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from backend.datasets import shapes as shapes_module
from backend.datasets.shapes import CLASS_NAMES, ShapesPaths, generate_shapes, main

SIZE = (320, 240)  # not square, so a swapped width and height shows


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> ShapesPaths:
    out = tmp_path_factory.mktemp("shapes")
    return generate_shapes(out, seed=3, num_train=40, num_val=10, image_size=SIZE)


def _load(ann: Path) -> dict:
    return json.loads(ann.read_text(encoding="utf-8"))


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_layout_matches_returned_paths(dataset: ShapesPaths) -> None:
    assert dataset.train_ann == dataset.root / "annotations" / "train.json"
    assert dataset.val_ann == dataset.root / "annotations" / "val.json"
    assert dataset.train_images == dataset.root / "train"
    assert dataset.val_images == dataset.root / "val"
    assert len(_load(dataset.train_ann)["images"]) == 40
    assert len(_load(dataset.val_ann)["images"]) == 10


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path: Path) -> None:
    first = generate_shapes(tmp_path / "a", seed=7, num_train=6, num_val=2)
    second = generate_shapes(tmp_path / "b", seed=7, num_train=6, num_val=2)
    other = generate_shapes(tmp_path / "c", seed=8, num_train=6, num_val=2)
    for ann in ("train_ann", "val_ann"):
        assert getattr(first, ann).read_bytes() == getattr(second, ann).read_bytes()
        assert getattr(first, ann).read_bytes() != getattr(other, ann).read_bytes()
    for split in ("train_images", "val_images"):
        names = sorted(p.name for p in getattr(first, split).glob("*.png"))
        assert names == sorted(p.name for p in getattr(second, split).glob("*.png"))
        for name in names:
            assert (getattr(first, split) / name).read_bytes() == (
                getattr(second, split) / name
            ).read_bytes()
    a = np.asarray(Image.open(first.train_images / "000001.png"))
    c = np.asarray(Image.open(other.train_images / "000001.png"))
    assert not np.array_equal(a, c)


def test_train_split_does_not_depend_on_val_count(tmp_path: Path) -> None:
    few = generate_shapes(tmp_path / "a", seed=1, num_train=4, num_val=1)
    many = generate_shapes(tmp_path / "b", seed=1, num_train=4, num_val=5)
    assert few.train_ann.read_bytes() == many.train_ann.read_bytes()


@pytest.mark.parametrize("split", ["train_ann", "val_ann"])
def test_pycocotools_loads_it_with_unique_ids(dataset: ShapesPaths, split: str) -> None:
    coco = COCO(str(getattr(dataset, split)))
    data = _load(getattr(dataset, split))
    assert len(coco.getImgIds()) == len(data["images"])
    assert len(coco.getAnnIds()) == len(data["annotations"]) > 0
    assert len({ann["id"] for ann in data["annotations"]}) == len(data["annotations"])
    assert [cat["name"] for cat in coco.loadCats(coco.getCatIds())] == list(CLASS_NAMES)
    assert {cat["supercategory"] for cat in data["categories"]} == {"shape"}
    for ann in data["annotations"]:
        assert ann["iscrowd"] == 0
        assert all(isinstance(v, float) for v in ann["bbox"])


def test_boxes_lie_inside_their_images(dataset: ShapesPaths) -> None:
    for ann_file in (dataset.train_ann, dataset.val_ann):
        data = _load(ann_file)
        images = {img["id"]: img for img in data["images"]}
        for ann in data["annotations"]:
            x, y, w, h = ann["bbox"]
            img = images[ann["image_id"]]
            assert x >= 0 and y >= 0 and w > 0 and h > 0
            assert x + w <= img["width"] and y + h <= img["height"]
            assert 0 < ann["area"] <= w * h


def test_every_class_and_every_coco_size_occurs(dataset: ShapesPaths) -> None:
    anns = _load(dataset.train_ann)["annotations"]
    assert {ann["category_id"] for ann in anns} == set(range(1, len(CLASS_NAMES) + 1))
    areas = [ann["area"] for ann in anns]
    assert any(a < 32**2 for a in areas)
    assert any(32**2 <= a <= 96**2 for a in areas)
    assert any(a > 96**2 for a in areas)


def test_objects_per_image_vary_and_some_overlap(dataset: ShapesPaths) -> None:
    data = _load(dataset.train_ann)
    boxes: dict[int, list[list[float]]] = defaultdict(list)
    for ann in data["annotations"]:
        boxes[ann["image_id"]].append(ann["bbox"])
    counts = [len(boxes[img["id"]]) for img in data["images"]]
    assert min(counts) >= 1 and max(counts) >= 4
    overlapping = sum(
        any(_iou(a, b) > 0 for a, b in itertools.combinations(image_boxes, 2))
        for image_boxes in boxes.values()
    )
    assert overlapping >= 5


def test_confusable_pairs_differ_in_elongation(dataset: ShapesPaths) -> None:
    elongation: dict[str, list[float]] = defaultdict(list)
    names = dict(enumerate(CLASS_NAMES, start=1))
    for ann in _load(dataset.train_ann)["annotations"]:
        _, _, w, h = ann["bbox"]
        elongation[names[ann["category_id"]]].append(max(w, h) / min(w, h))
    assert max(elongation["square"] + elongation["circle"]) <= 1.25
    assert min(elongation["rectangle"] + elongation["ellipse"]) >= 1.1
    assert max(elongation["rectangle"] + elongation["ellipse"]) <= 2.6


def test_image_files_exist_with_declared_size(dataset: ShapesPaths) -> None:
    for ann_file, image_dir in (
        (dataset.train_ann, dataset.train_images),
        (dataset.val_ann, dataset.val_images),
    ):
        for img in _load(ann_file)["images"]:
            assert "/" not in img["file_name"]
            with Image.open(image_dir / img["file_name"]) as image:
                assert image.size == (img["width"], img["height"]) == SIZE
                assert image.mode == "RGB"


def test_every_shape_stays_at_least_30_percent_visible() -> None:
    """Occlusion is bounded: most of a shape's own pixels still show its colour."""
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
    checked = occluded = 0
    for index in range(30):
        bgr, shapes = shapes_module._render(np.random.default_rng([5, index]), 6, xx, yy)
        rgb = bgr[..., ::-1].astype(np.float32)
        for shape in shapes:
            h, w = shape.mask.shape
            inside = rgb[shape.y0 : shape.y0 + h, shape.x0 : shape.x0 + w][shape.mask]
            showing = np.linalg.norm(inside - shape.colour, axis=1) < 45
            assert showing.mean() >= 0.25, (index, shape.category_id, showing.mean())
            occluded += showing.mean() < 0.9
            checked += 1
    assert checked > 60 and occluded > 5  # occlusion does happen, within the bound


def test_fewer_classes_take_the_confusable_pairs_first(tmp_path: Path) -> None:
    paths = generate_shapes(tmp_path, num_train=20, num_val=1, num_classes=3)
    data = _load(paths.train_ann)
    assert [c["name"] for c in data["categories"]] == ["square", "rectangle", "circle"]
    assert {a["category_id"] for a in data["annotations"]} == {1, 2, 3}


def test_scene_options_bound_the_count_and_size_of_shapes(tmp_path: Path) -> None:
    # the demo's scenes: at 128 px, areas of 625-4000 px² before rasterisation
    paths = generate_shapes(
        tmp_path,
        num_train=40,
        num_val=1,
        image_size=(128, 128),
        num_classes=4,
        max_objects=3,
        size_buckets=((1.0, 2500.0, 16000.0),),
    )
    data = _load(paths.train_ann)
    per_image = defaultdict(int)
    for annotation in data["annotations"]:
        per_image[annotation["image_id"]] += 1
        assert 500 <= annotation["area"] <= 4300, annotation
    assert max(per_image.values()) == 3 and min(per_image.values()) >= 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_classes": 1},
        {"num_classes": 7},
        {"num_train": 0},
        {"image_size": (32, 256)},
        {"max_objects": 0},
        {"size_buckets": ((0.5, 100.0, 200.0),)},
        {"size_buckets": ((1.0, 300.0, 200.0),)},
    ],
)
def test_invalid_arguments_are_refused(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError, match="expected"):
        generate_shapes(tmp_path, **kwargs)


def test_cli_writes_the_dataset_and_reports_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(tmp_path), "--seed", "2", "--num-train", "3", "--num-val", "2"]
    assert main([*argv, "--size", "128x96", "--classes", "2"]) == 0
    out = capsys.readouterr().out
    assert "train: 3 images" in out and "val: 2 images" in out
    data = _load(tmp_path / "annotations" / "train.json")
    assert [c["name"] for c in data["categories"]] == ["square", "rectangle"]
    assert {(img["width"], img["height"]) for img in data["images"]} == {(128, 96)}
    assert len(list((tmp_path / "val").glob("*.png"))) == 2


def test_cli_accepts_a_single_int_size_and_rejects_bad_sizes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path), "--num-train", "1", "--num-val", "0", "--size", "96"]) == 0
    data = _load(tmp_path / "annotations" / "train.json")
    assert (data["images"][0]["width"], data["images"][0]["height"]) == (96, 96)
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--size", "big"])
    assert "WIDTHxHEIGHT" in capsys.readouterr().err
    assert main([str(tmp_path), "--classes", "9"]) == 2


def _drawn_and_coco_masks(paths: ShapesPaths, seed: int, num_classes: int = len(CLASS_NAMES)):
    """(annotation, its pycocotools mask, the mask the generator drew) for every annotation;
    the drawn shapes come from rendering each image again from its own random stream."""
    for split in ("train", "val"):
        coco = COCO(str(getattr(paths, f"{split}_ann")))
        for image in coco.loadImgs(coco.getImgIds()):
            height, width = image["height"], image["width"]
            yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
            rng = np.random.default_rng([seed, shapes_module.SPLIT_STREAMS[split], image["id"]])
            _, drawn = shapes_module._render(rng, num_classes, xx, yy)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
            # the same scene as the file's: same boxes, in the same order
            assert [a["bbox"] for a in anns] == [
                [s.x0, s.y0, s.mask.shape[1], s.mask.shape[0]] for s in drawn
            ]
            for ann, shape in zip(anns, drawn, strict=True):
                full = np.zeros((height, width), bool)
                h, w = shape.mask.shape
                full[shape.y0 : shape.y0 + h, shape.x0 : shape.x0 + w] = shape.mask
                yield ann, coco.annToMask(ann).astype(bool), full


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_segmentations_are_coco_polygons_of_the_drawn_shapes(dataset: ShapesPaths) -> None:
    ious: list[float] = []
    for ann, mask, drawn in _drawn_and_coco_masks(dataset, seed=3):
        (polygon,) = ann["segmentation"]
        assert len(polygon) >= 6 and len(polygon) % 2 == 0
        assert all(isinstance(v, float) and round(v, 2) == v for v in polygon)
        iou = _mask_iou(mask, drawn)
        # a few pixels of a tiny shape's edge may round either way
        assert iou >= (0.85 if ann["area"] < 32**2 else 0.95), (ann["id"], iou)
        ious.append(iou)
        # amodal like the box: the full shape, within its box give or take a pixel
        x, y, w, h = ann["bbox"]
        rows, cols = np.nonzero(mask)
        assert x - 1 <= cols.min() and cols.max() + 1 <= x + w + 1, ann["id"]
        assert y - 1 <= rows.min() and rows.max() + 1 <= y + h + 1, ann["id"]
        assert abs(int(mask.sum()) - ann["area"]) <= 0.15 * ann["area"], ann["id"]
    assert len(ious) > 150 and float(np.mean(ious)) >= 0.97


def test_every_segmentation_covers_its_drawn_shape_at_the_default_size(tmp_path: Path) -> None:
    paths = generate_shapes(tmp_path, seed=0, num_train=16, num_val=4)
    ious = [_mask_iou(mask, drawn) for _, mask, drawn in _drawn_and_coco_masks(paths, seed=0)]
    assert len(ious) > 50 and min(ious) >= 0.9

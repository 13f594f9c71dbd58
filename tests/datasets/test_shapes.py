"""The synthetic shapes dataset: deterministic, valid COCO, and as varied as promised."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from pathlib import Path

import cv2
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


def _elongations(paths: ShapesPaths) -> dict[str, list[float]]:
    """Each class's box elongations (long side over short side) in the train split."""
    names = dict(enumerate(CLASS_NAMES, start=1))
    elongation: dict[str, list[float]] = defaultdict(list)
    for ann in _load(paths.train_ann)["annotations"]:
        _, _, w, h = ann["bbox"]
        elongation[names[ann["category_id"]]].append(max(w, h) / min(w, h))
    return elongation


def test_elongation_stretches_rectangles_and_ellipses_only(tmp_path: Path) -> None:
    kwargs = {"seed": 6, "num_train": 30, "num_val": 1, "image_size": SIZE, "num_classes": 4}
    default = _elongations(generate_shapes(tmp_path / "a", **kwargs))
    long = _elongations(generate_shapes(tmp_path / "b", elongation=(2.5, 3.0), **kwargs))
    stretched = long["rectangle"] + long["ellipse"]
    # a tilt of up to 15 degrees shortens a box's elongation, to 1.66 at worst for 2.5
    assert len(stretched) > 10 and min(stretched) >= 1.6
    assert np.median(stretched) >= 2.2 > np.median(default["rectangle"] + default["ellipse"])
    assert max(long["square"] + long["circle"]) <= 1.25


def _background_spread(paths: ShapesPaths) -> list[float]:
    """Per train image, the largest channel's spread of the smoothed pixels outside every box
    (grown by 4 px): smoothing removes the grain, so a plain background measures near 0."""
    data = _load(paths.train_ann)
    spreads = []
    for image in data["images"]:
        rgb = np.asarray(Image.open(paths.train_images / image["file_name"]), np.float32)
        smooth = cv2.blur(rgb, (9, 9))
        outside = np.ones(rgb.shape[:2], bool)
        for ann in data["annotations"]:
            if ann["image_id"] == image["id"]:
                x, y, w, h = (int(v) for v in ann["bbox"])
                outside[max(0, y - 8) : y + h + 8, max(0, x - 8) : x + w + 8] = False
        outside[:4], outside[-4:], outside[:, :4], outside[:, -4:] = False, False, False, False
        if outside.sum() > 500:
            spreads.append(float(smooth[outside].std(axis=0).max()))
    return spreads


def test_plain_background_keeps_the_scenes_and_flattens_the_texture(tmp_path: Path) -> None:
    textured = generate_shapes(tmp_path / "a", seed=4, num_train=24, num_val=2, image_size=SIZE)
    plain = generate_shapes(
        tmp_path / "b", seed=4, num_train=24, num_val=2, image_size=SIZE, background="plain"
    )
    # only colours change: the same shapes in the same places
    assert _load(plain.train_ann)["annotations"] == _load(textured.train_ann)["annotations"]
    flat, rough = _background_spread(plain), _background_spread(textured)
    assert len(flat) > 15 and max(flat) < 3.0, flat
    assert sum(spread > 6.0 for spread in rough) > len(rough) / 2, rough


def test_colour_by_pair_gives_each_pair_its_own_colours(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:128, 0:128].astype(np.float32)
    palette = [tuple(colour) for colour in shapes_module.PALETTE]
    used: dict[int, set[int]] = defaultdict(set)
    for index in range(40):
        scenes = [
            shapes_module._render(
                np.random.default_rng([2, index]),
                len(CLASS_NAMES),
                xx,
                yy,
                shapes_module._Scene(colour_by_pair=by_pair),
            )[1]
            for by_pair in (False, True)
        ]
        assert [s.category_id for s in scenes[0]] == [s.category_id for s in scenes[1]]
        for shape in scenes[1]:
            used[(shape.category_id - 1) // 2].add(palette.index(tuple(shape.colour)))
    # every pair shows several colours, all from its own set, and the sets do not overlap
    for pair, colours in used.items():
        assert len(colours) >= 2 and colours <= set(shapes_module.PAIR_COLOURS[pair]), pair
    assert sorted(used) == [0, 1, 2]
    assert not set.intersection(*(set(c) for c in shapes_module.PAIR_COLOURS[:2]))
    # and through the public entry point, the annotations stay the default's
    kwargs = {"seed": 5, "num_train": 6, "num_val": 2, "image_size": (128, 128)}
    default = generate_shapes(tmp_path / "a", **kwargs)
    by_pair = generate_shapes(tmp_path / "b", colour_by_pair=True, **kwargs)
    assert by_pair.train_ann.read_bytes() == default.train_ann.read_bytes()


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
        {"background": "stripes"},
        {"colour_by_pair": "yes"},
        {"elongation": (1.0, 2.0)},
        {"elongation": (3.0, 2.0)},
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


def test_cli_takes_the_scene_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--seed", "3", "--num-train", "12", "--num-val", "1", "--size", "128"]
    assert (
        main(
            [
                str(tmp_path / "cli"),
                *argv,
                "--background",
                "plain",
                "--colour-by-pair",
                "--elongation",
                "2.5,3",
            ]
        )
        == 0
    )
    made = generate_shapes(
        tmp_path / "api",
        seed=3,
        num_train=12,
        num_val=1,
        image_size=(128, 128),
        background="plain",
        colour_by_pair=True,
        elongation=(2.5, 3.0),
    )
    # the command line writes what the function does with the same options, byte for byte
    for name in ("annotations/train.json", "train/000001.png"):
        assert (tmp_path / "cli" / name).read_bytes() == (made.root / name).read_bytes(), name
    with pytest.raises(SystemExit):
        main([str(tmp_path / "bad"), "--elongation", "long"])
    assert "MIN,MAX" in capsys.readouterr().err
    assert main([str(tmp_path / "bad"), "--elongation", "3,2"]) == 2
    assert "elongation is (3.0, 2.0)" in capsys.readouterr().err


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

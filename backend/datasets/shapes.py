"""Deterministic synthetic COCO detection dataset: coloured shapes on textured backgrounds.

The demo and test dataset of DetLab. Every image draws its randomness from
``(seed, split, index)``, so the same seed gives byte-identical annotations and images.
Boxes, areas and segmentation polygons are each shape's full extent (also where a later
shape covers part of it); a shape is only placed where it leaves every earlier shape at least
30% visible.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from backend.artifacts_io import write_text_atomic

__all__ = ["CLASS_NAMES", "ShapesPaths", "generate_shapes", "main"]

# The confusable pairs come first so that any K >= 2 keeps a hard pair.
CLASS_NAMES: tuple[str, ...] = ("square", "rectangle", "circle", "ellipse", "triangle", "cross")
MAX_OBJECTS = 7
PLACEMENT_ATTEMPTS = 12
MIN_VISIBLE = 0.3  # a later shape may hide at most 70% of an earlier one
NEAR_NEIGHBOUR = 0.35  # share of placements aimed at an existing shape, to make occlusion
ELONGATION = (1.4, 2.2)  # rectangles and ellipses: clearly, but not hugely, non-square
TILT_DEGREES = 15.0  # small tilts keep square/rectangle and circle/ellipse separable
# (probability, min area, max area) in px² for a 256 px short side, straddling COCO's
# small (< 32²) and large (> 96²) bounds with a margin for rasterisation.
SizeBuckets = tuple[tuple[float, float, float], ...]
SIZE_BUCKETS: SizeBuckets = ((0.40, 196.0, 900.0), (0.45, 1200.0, 8000.0), (0.15, 10500.0, 16000.0))
MIN_CONTRAST = 110.0  # RGB distance of a shape's colour from what lies under it
PALETTE = np.array(
    [
        (220, 40, 40),
        (40, 175, 60),
        (40, 70, 220),
        (235, 210, 40),
        (210, 50, 200),
        (40, 200, 210),
        (240, 130, 30),
        (245, 245, 245),
        (20, 20, 20),
        (120, 50, 170),
    ],
    dtype=np.float32,
)
# colour_by_pair: the palette indices each pair of classes (square/rectangle, circle/ellipse,
# triangle/cross) draws from, so that colour tells the pairs apart and only shape tells apart
# the two classes of a pair
PAIR_COLOURS: tuple[tuple[int, ...], ...] = (
    (0, 6, 3),  # red, orange, yellow
    (1, 2, 5),  # green, blue, cyan
    (4, 9, 7, 8),  # magenta, purple, white, black
)
BACKGROUNDS = ("textured", "plain")
# The plus sign's corners in units of half its bar thickness.
CROSS = np.array(
    [(-1, -3), (1, -3), (1, -1), (3, -1), (3, 1), (1, 1), (1, 3), (-1, 3), (-1, 1), (-3, 1)]
    + [(-3, -1), (-1, -1)],
    dtype=np.float64,
)
SPLIT_STREAMS = {"train": 0, "val": 1}


@dataclass(frozen=True)
class ShapesPaths:
    """Where generate_shapes wrote the two splits."""

    root: Path
    train_ann: Path
    val_ann: Path
    train_images: Path
    val_images: Path


@dataclass
class _Shape:
    category_id: int
    x0: int
    y0: int
    mask: np.ndarray  # bool, the shape's full extent inside its box
    colour: np.ndarray
    area: int
    visible: int
    polygon: np.ndarray  # (N, 2) x, y: the outline that was filled, in image pixels


def _segmentation(polygon: np.ndarray) -> list[list[float]]:
    """The COCO polygon of the pixels OpenCV filled for this outline (see _rasterise).

    cv2.fillPoly fills every pixel whose centre, at integer coordinates, the outline's boundary
    passes within about half a pixel of, as well as those inside: the outline grown by half a
    pixel. pycocotools takes pixel (i, j) to be the square from (i, j) to (i + 1, j + 1), so the
    same pixels are that grown outline moved by half a pixel."""
    following = np.roll(polygon, -1, axis=0)
    edges = following - polygon
    normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    # (dy, -dx) points outward when the corners run clockwise on screen (y down): the shoelace
    # sum is then positive
    if np.sum(polygon[:, 0] * following[:, 1] - following[:, 0] * polygon[:, 1]) < 0:
        normals = -normals
    before, after = np.roll(normals, 1, axis=0), normals
    # each corner moves to where its two edges, each pushed out by half a pixel, meet
    grown = polygon + 0.5 * (before + after) / (1 + np.sum(before * after, axis=1, keepdims=True))
    return [[round(float(v), 2) for v in (grown + 0.5).ravel()]]


def _background(
    rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, *, plain: bool = False
) -> np.ndarray:
    """A float (3, H, W) RGB background: smooth blotches, a linear gradient or stripes; or,
    plain, one flat colour (the texture is drawn all the same, so the scene that follows is
    the textured one's)."""
    height, width = xx.shape
    base = rng.uniform(50, 205, 3).astype(np.float32)
    other = np.clip(base + rng.uniform(-80, 80, 3), 0, 255).astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:
        cells = rng.random((int(rng.integers(3, 9)), int(rng.integers(3, 9)))).astype(np.float32)
        mix = cv2.resize(cells, (width, height), interpolation=cv2.INTER_CUBIC)
    elif kind == 1:
        theta = rng.uniform(0, 2 * math.pi)
        proj = xx * math.cos(theta) + yy * math.sin(theta)
        mix = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
    else:
        theta, period = rng.uniform(0, math.pi), rng.uniform(8, 40)
        proj = xx * math.cos(theta) + yy * math.sin(theta)
        mix = 0.5 + 0.5 * np.sin(proj * (2 * math.pi / period) + rng.uniform(0, 2 * math.pi))
    # Planar (channel-first) arrays: numpy broadcasts over a leading axis far faster.
    if plain:
        mix = np.zeros_like(mix)
    mix = np.clip(mix, 0, 1)[None]
    return base[:, None, None] + (other - base)[:, None, None] * mix


def _sample_area(rng: np.random.Generator, scale: float, buckets: SizeBuckets) -> float:
    """A target pixel area, log-uniform inside a randomly chosen size bucket."""
    probs = [bucket[0] for bucket in buckets]
    _, low, high = buckets[int(rng.choice(len(buckets), p=probs))]
    return math.exp(rng.uniform(math.log(low), math.log(high))) * scale


def _rotate(points: np.ndarray, degrees: float) -> np.ndarray:
    theta = math.radians(degrees)
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return points @ rotation.T


def _ellipse(a: float, b: float) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 72, endpoint=False)
    return np.stack([a * np.cos(t), b * np.sin(t)], axis=1)


def _outline(
    name: str,
    area: float,
    rng: np.random.Generator,
    elongation: tuple[float, float] = ELONGATION,
) -> np.ndarray:
    """The polygon of one shape of the given area, centred on the origin."""
    tilt = rng.uniform(-TILT_DEGREES, TILT_DEGREES)
    ratio = rng.uniform(*elongation)  # used by rectangles and ellipses only
    if rng.random() < 0.5:
        ratio = 1 / ratio
    if name == "square":
        half = math.sqrt(area) / 2
        points = np.array([(-half, -half), (half, -half), (half, half), (-half, half)])
    elif name == "rectangle":
        hw, hh = math.sqrt(area * ratio) / 2, math.sqrt(area / ratio) / 2
        points = np.array([(-hw, -hh), (hw, -hh), (hw, hh), (-hw, hh)])
    elif name == "circle":
        radius = math.sqrt(area / math.pi)
        points = _ellipse(radius, radius)
    elif name == "ellipse":
        points = _ellipse(math.sqrt(area * ratio / math.pi), math.sqrt(area / ratio / math.pi))
    elif name == "triangle":
        radius = math.sqrt(4 * area / math.sqrt(3)) / math.sqrt(3)  # equilateral, circumradius
        angles = rng.uniform(0, 2 * math.pi) + np.array([0, 2, 4]) * math.pi / 3
        return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)
    elif name == "cross":
        # a plus sign whose bars are a third as thick as long: area = 5/9 of its box
        points = CROSS * (math.sqrt(9 * area / 5) / 6)
    else:
        raise ValueError(f"unknown shape {name!r}; expected one of {', '.join(CLASS_NAMES)}")
    return _rotate(points, tilt)


def _centre(
    rng: np.random.Generator, outline: np.ndarray, shapes: list[_Shape], width: int, height: int
) -> tuple[float, float] | None:
    """A centre keeping the outline inside the image, sometimes next to an existing shape."""
    low, high = outline.min(axis=0), outline.max(axis=0)
    x_range, y_range = (-low[0], width - 1 - high[0]), (-low[1], height - 1 - high[1])
    if x_range[0] > x_range[1] or y_range[0] > y_range[1]:
        return None
    if shapes and rng.random() < NEAR_NEIGHBOUR:
        other = shapes[int(rng.integers(len(shapes)))]
        h, w = other.mask.shape
        spread = 0.5 * (w + h) / 2 + 0.25 * float(np.ptp(outline[:, 0]))
        cx = other.x0 + w / 2 + rng.normal(0, spread)
        cy = other.y0 + h / 2 + rng.normal(0, spread)
        return float(np.clip(cx, *x_range)), float(np.clip(cy, *y_range))
    return rng.uniform(*x_range), rng.uniform(*y_range)


def _rasterise(points: np.ndarray) -> tuple[int, int, np.ndarray]:
    """The mask of a polygon in image pixels, cropped to its tight box, and the box's
    top-left corner."""
    x0, y0 = (int(v) for v in np.floor(points.min(axis=0)))
    x1, y1 = (int(v) + 2 for v in np.ceil(points.max(axis=0)))
    canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
    fixed = np.round((points - (x0, y0)) * 16).astype(np.int32)  # 4 bits of subpixel precision
    cv2.fillPoly(canvas, [fixed], (1,), lineType=cv2.LINE_8, shift=4)
    rows, cols = np.flatnonzero(canvas.any(axis=1)), np.flatnonzero(canvas.any(axis=0))
    if rows.size == 0:
        return x0, y0, canvas.astype(bool)
    mask = canvas[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(bool)
    return x0 + int(cols[0]), y0 + int(rows[0]), mask


def _pick_colour(
    rng: np.random.Generator,
    under: np.ndarray,
    neighbours: list[np.ndarray],
    allowed: tuple[int, ...] | None = None,
) -> np.ndarray:
    """A palette colour (one of the allowed indices, if given) far from the background under
    the shape and from shapes it touches."""
    avoid = [under.mean(axis=0), *neighbours]
    order = rng.permutation(len(PALETTE))  # all of it, so a restriction leaves the stream be
    if allowed is not None:
        order = order[np.isin(order, allowed)]
    best, best_gap = PALETTE[order[0]], -1.0
    for index in order:
        gap = min(float(np.linalg.norm(PALETTE[index] - colour)) for colour in avoid)
        if gap >= MIN_CONTRAST:
            return PALETTE[index]
        if gap > best_gap:
            best, best_gap = PALETTE[index], gap
    return best


@dataclass(frozen=True)
class _Scene:
    """How crowded a scene is, how large and how elongated its shapes are, how it looks."""

    max_objects: int = MAX_OBJECTS
    size_buckets: SizeBuckets = SIZE_BUCKETS
    background: str = "textured"
    colour_by_pair: bool = False
    elongation: tuple[float, float] = ELONGATION


def _render(
    rng: np.random.Generator,
    num_classes: int,
    xx: np.ndarray,
    yy: np.ndarray,
    scene: _Scene = _Scene(),  # noqa: B008 - frozen, so sharing the default is safe
) -> tuple[np.ndarray, list[_Shape]]:
    """One image (BGR, as OpenCV writes it) and its shapes, in drawing order."""
    height, width = xx.shape
    background = _background(rng, xx, yy, plain=scene.background == "plain")
    image = background.copy()
    owner = np.full((height, width), -1, np.int16)  # index of the topmost shape per pixel
    scale = (min(width, height) / 256) ** 2
    shapes: list[_Shape] = []
    for _ in range(int(rng.integers(1, scene.max_objects + 1))):
        category = int(rng.integers(num_classes))
        area = _sample_area(rng, scale, scene.size_buckets)
        outline = _outline(CLASS_NAMES[category], area, rng, scene.elongation)
        for _attempt in range(PLACEMENT_ATTEMPTS):
            centre = _centre(rng, outline, shapes, width, height)
            if centre is None:
                break
            polygon = outline + centre
            x0, y0, mask = _rasterise(polygon)
            if not mask.any():
                continue
            h, w = mask.shape
            box = (slice(y0, y0 + h), slice(x0, x0 + w))
            covered = owner[box][mask]
            lost = np.bincount(covered[covered >= 0], minlength=len(shapes))
            if any(s.visible - n < MIN_VISIBLE * s.area for s, n in zip(shapes, lost, strict=True)):
                continue
            neighbours = [shapes[j].colour for j in np.flatnonzero(lost)]
            allowed = PAIR_COLOURS[category // 2] if scene.colour_by_pair else None
            under = background[:, box[0], box[1]][:, mask].T
            colour = _pick_colour(rng, under, neighbours, allowed)
            image[:, box[0], box[1]][:, mask] = colour[:, None]
            owner[box][mask] = len(shapes)
            for shape, n in zip(shapes, lost, strict=True):
                shape.visible -= int(n)
            area = int(mask.sum())
            shapes.append(_Shape(category + 1, x0, y0, mask, colour, area, area, polygon))
            break
    grain = rng.standard_normal((height, width), dtype=np.float32) * rng.uniform(3, 10)
    planes = []
    for plane in image[::-1]:
        plane = cv2.GaussianBlur(plane, (3, 3), 0.7) + grain
        planes.append(np.rint(np.clip(plane, 0, 255, out=plane), out=plane).astype(np.uint8))
    return cv2.merge(planes), shapes


def _file_name(image_id: int) -> str:
    return f"{image_id:06d}.png"


def _write_split(
    split: str,
    count: int,
    seed: int,
    size: tuple[int, int],
    num_classes: int,
    scene: _Scene,
    root: Path,
) -> tuple[Path, Path]:
    """Render and save one split's images and its COCO annotation file."""
    width, height = size
    image_dir, ann_file = root / split, root / "annotations" / f"{split}.json"
    image_dir.mkdir(parents=True, exist_ok=True)
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    def render_and_save(image_id: int) -> list[_Shape]:
        rng = np.random.default_rng([seed, SPLIT_STREAMS[split], image_id])
        bgr, shapes = _render(rng, num_classes, xx, yy, scene)
        path = image_dir / _file_name(image_id)
        if not cv2.imwrite(str(path), bgr):
            raise OSError(f"could not write {path}; is the directory writable?")
        return shapes

    # Each image has its own random stream, so threads (OpenCV and numpy release the GIL)
    # change nothing in the output.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        rendered = list(pool.map(render_and_save, range(1, count + 1)))
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, shapes in enumerate(rendered, start=1):
        images.append(
            {"id": image_id, "file_name": _file_name(image_id), "width": width, "height": height}
        )
        for shape in shapes:
            h, w = shape.mask.shape
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": shape.category_id,
                    "bbox": [float(shape.x0), float(shape.y0), float(w), float(h)],
                    # the full shape's pixel area, as COCO uses segment area for size ranges
                    "area": float(shape.area),
                    "iscrowd": 0,
                    "segmentation": _segmentation(shape.polygon),
                }
            )
    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"}
        for i, name in enumerate(CLASS_NAMES[:num_classes])
    ]
    coco = {
        "info": {"description": f"DetLab synthetic shapes, {split} split", "seed": seed},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    write_text_atomic(ann_file, json.dumps(coco) + "\n")
    return ann_file, image_dir


def generate_shapes(
    out_dir: Path,
    *,
    seed: int = 0,
    num_train: int = 200,
    num_val: int = 50,
    image_size: tuple[int, int] = (256, 256),
    num_classes: int = 6,
    max_objects: int = MAX_OBJECTS,
    size_buckets: SizeBuckets = SIZE_BUCKETS,
    background: str = "textured",
    colour_by_pair: bool = False,
    elongation: tuple[float, float] = ELONGATION,
) -> ShapesPaths:
    """Write the shapes dataset (image_size is width, height) under out_dir: 1..max_objects
    shapes an image, each area drawn from size_buckets ((probability, min px², max px²) for a
    256 px short side, scaled with the image's area), on a textured or a plain background;
    colour_by_pair draws each pair of classes from its own colours (PAIR_COLOURS). The two
    options change colours only: the same seed places the same shapes. Rectangles and ellipses
    are elongation[0] to elongation[1] times as long as wide."""
    if not 2 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f"num_classes is {num_classes}; expected 2..{len(CLASS_NAMES)}")
    if max_objects < 1:
        raise ValueError(f"max_objects is {max_objects}; expected at least 1")
    if (
        not size_buckets
        or not math.isclose(sum(b[0] for b in size_buckets), 1.0)
        or any(p < 0 or not 0 < low <= high for p, low, high in size_buckets)
    ):
        raise ValueError(
            f"size_buckets is {size_buckets!r}; expected (probability, min area, max area) "
            "triples with 0 < min <= max and probabilities summing to 1"
        )
    if background not in BACKGROUNDS:
        raise ValueError(f"background is {background!r}; expected one of {', '.join(BACKGROUNDS)}")
    if not isinstance(colour_by_pair, bool):
        raise ValueError(f"colour_by_pair is {colour_by_pair!r}; expected True or False")
    if len(elongation) != 2 or not 1 < elongation[0] <= elongation[1]:
        raise ValueError(
            f"elongation is {elongation!r}; expected (min, max) length-to-width ratios with "
            "1 < min <= max"
        )
    if seed < 0:
        raise ValueError(f"seed is {seed}; expected a non-negative integer")
    if num_train < 1 or num_val < 0:
        raise ValueError(
            f"num_train={num_train}, num_val={num_val}; expected num_train >= 1, num_val >= 0"
        )
    width, height = image_size
    if width < 64 or height < 64:
        raise ValueError(f"image_size is {width}x{height}; expected both sides >= 64")
    root = Path(out_dir)
    size = (width, height)
    low, high = float(elongation[0]), float(elongation[1])
    scene = _Scene(max_objects, tuple(size_buckets), background, colour_by_pair, (low, high))
    train_ann, train_images = _write_split("train", num_train, seed, size, num_classes, scene, root)
    val_ann, val_images = _write_split("val", num_val, seed, size, num_classes, scene, root)
    return ShapesPaths(root, train_ann, val_ann, train_images, val_images)


def _parse_size(text: str) -> tuple[int, int]:
    """'256' or '320x240' (width x height) as a (width, height) pair."""
    parts = text.lower().split("x")
    try:
        values = [int(part) for part in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise argparse.ArgumentTypeError(f"{text!r} is not a size; expected WIDTHxHEIGHT or one int")


def _parse_range(text: str) -> tuple[float, float]:
    """'2,3' as (2.0, 3.0)."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a range; expected MIN,MAX") from None
    return low, high


def main(argv: list[str] | None = None) -> int:
    """Command line: detlab-shapes OUT_DIR [--seed] [--num-train] [--num-val] [--size] ..."""
    parser = argparse.ArgumentParser(
        prog="detlab-shapes", description="Generate the synthetic shapes COCO dataset."
    )
    parser.add_argument("out_dir", type=Path, help="directory to write the dataset into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=200, help="training images")
    parser.add_argument("--num-val", type=int, default=50, help="validation images")
    parser.add_argument(
        "--size", type=_parse_size, default=(256, 256), help="WIDTHxHEIGHT or one int"
    )
    parser.add_argument(
        "--classes", type=int, default=len(CLASS_NAMES), help=f"2..{len(CLASS_NAMES)} classes"
    )
    parser.add_argument("--background", choices=BACKGROUNDS, default="textured")
    parser.add_argument(
        "--colour-by-pair",
        action="store_true",
        help="each pair of look-alike classes drawn in colours of its own",
    )
    parser.add_argument(
        "--elongation",
        type=_parse_range,
        default=ELONGATION,
        help=f"MIN,MAX length-to-width of rectangles and ellipses (default {ELONGATION[0]},"
        f"{ELONGATION[1]})",
    )
    args = parser.parse_args(argv)
    try:
        paths = generate_shapes(
            args.out_dir,
            seed=args.seed,
            num_train=args.num_train,
            num_val=args.num_val,
            image_size=args.size,
            num_classes=args.classes,
            background=args.background,
            colour_by_pair=args.colour_by_pair,
            elongation=args.elongation,
        )
    except ValueError as exc:
        print(f"detlab-shapes: error: {exc}", file=sys.stderr)
        return 2
    for split, ann, images in (
        ("train", paths.train_ann, paths.train_images),
        ("val", paths.val_ann, paths.val_images),
    ):
        coco = json.loads(ann.read_text(encoding="utf-8"))
        print(
            f"{split}: {len(coco['images'])} images, {len(coco['annotations'])} annotations, "
            f"{len(coco['categories'])} classes; annotations {ann}, images {images}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Overlay PNGs: valid, right size, outcome colours on the box edges, legend, filters."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from backend.analysis import BOX_COLOURS, PredictionMatch, render_overlay
from backend.analysis.matching import GtMatch
from backend.analysis.overlay import _font, _place_labels, encode_png, label_font_px

CATEGORIES = {1: "circle", 2: "ellipse"}
GREY = (90, 90, 90)


def decode(png: bytes) -> np.ndarray:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        return np.asarray(image.convert("RGB"))


def pred(kind: str, box: tuple[float, ...], score: float = 0.9, cat: int = 1) -> PredictionMatch:
    gt_cat = 2 if kind in ("classification", "both") else (None if kind == "background" else 1)
    return PredictionMatch(7, 0, cat, score, box, kind, 0.7, 1, gt_cat)


def left_edge(pixels: np.ndarray, box: tuple[float, ...]) -> tuple[int, ...]:
    x, y, _, h = (int(v) for v in box)
    return tuple(pixels[y + h // 2, x])


def test_each_outcome_colours_its_box_edge_and_appears_in_the_legend() -> None:
    image = np.full((300, 400, 3), GREY, dtype=np.uint8)
    boxes = {
        "tp": (20, 40, 50, 50),
        "classification": (100, 40, 50, 50),
        "localization": (180, 40, 50, 50),
        "both": (20, 150, 50, 50),
        "duplicate": (100, 150, 50, 50),
        "background": (180, 150, 50, 50),
    }
    matches = [pred(kind, box) for kind, box in boxes.items()]
    gt_boxes = [
        GtMatch(1, 7, 1, (20, 240, 40, 40), False, False, False, 0),
        GtMatch(2, 7, 2, (100, 240, 40, 40), False, True, False, None),
    ]
    pixels = decode(render_overlay(image, gt_boxes, matches, categories=CATEGORIES))
    assert pixels.shape == (300, 400, 3)
    for kind, box in boxes.items():
        assert left_edge(pixels, box) == BOX_COLOURS[kind], kind
        assert tuple(pixels[box[1] + 25, box[0] + 25]) == GREY  # inside stays untouched
    assert left_edge(pixels, (20, 240, 40, 40)) == BOX_COLOURS["gt"]
    assert left_edge(pixels, (100, 240, 40, 40)) == BOX_COLOURS["missed"]
    # Label tags sit just above each box, or inside its top when the room above is taken by
    # another label, filled with its colour.
    assert BOX_COLOURS["classification"] in {tuple(pixels[40 - 3, 103]), tuple(pixels[41, 103])}
    # The legend (top right) shows a swatch of every colour drawn, and nothing else.
    legend = pixels[:200, 280:].reshape(-1, 3)
    legend_colours = {tuple(c) for c in np.unique(legend, axis=0)}
    assert set(BOX_COLOURS.values()) <= legend_colours


def test_show_and_score_threshold_filter_what_is_drawn() -> None:
    image = Image.new("RGB", (200, 120), GREY)
    tp_box, cls_box, low_box = (10, 30, 40, 40), (70, 30, 40, 40), (130, 30, 40, 40)
    matches = [
        pred("tp", tp_box),
        pred("classification", cls_box),
        pred("tp", low_box, score=0.1),
        pred("ignored", (10, 80, 20, 20)),
    ]
    gt_boxes = [{"bbox": [150, 80, 30, 30], "category_id": 1, "missed": True}]
    pixels = decode(render_overlay(image, gt_boxes, matches, categories=CATEGORIES, show={"tp"}))
    assert left_edge(pixels, tp_box) == BOX_COLOURS["tp"]
    assert left_edge(pixels, cls_box) == GREY
    assert left_edge(pixels, low_box) == GREY  # score 0.1 < score_thr 0.3
    assert left_edge(pixels, (10, 80, 20, 20)) == GREY  # ignored: never drawn
    assert left_edge(pixels, (150, 80, 30, 30)) == GREY
    pixels = decode(
        render_overlay(
            image, gt_boxes, matches, categories=CATEGORIES, show={"missed"}, score_thr=0.0
        )
    )
    assert left_edge(pixels, (150, 80, 30, 30)) == BOX_COLOURS["missed"]
    assert left_edge(pixels, low_box) == GREY
    pixels = decode(render_overlay(image, [], matches, categories=CATEGORIES, score_thr=0.0))
    assert left_edge(pixels, low_box) == BOX_COLOURS["tp"]
    assert np.asarray(image).max() == GREY[0]  # the caller's image is not drawn on


def test_nothing_to_draw_returns_the_image_itself() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    pixels = decode(render_overlay(image, [], [], categories=CATEGORIES))
    assert np.array_equal(pixels, image)
    gray = rng.integers(0, 256, size=(20, 30), dtype=np.uint8)
    assert np.array_equal(decode(render_overlay(gray, [], [], categories={}))[..., 0], gray)


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (800, 1333), (1000, 17)])
def test_encode_png_is_lossless_for_pil_and_opencv(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    png = encode_png(rgb)
    assert np.array_equal(decode(png), rgb)
    bgr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(bgr[..., ::-1], rgb)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="show: unknown value 'boxes'; accepted: "):
        render_overlay(np.zeros((4, 4, 3), np.uint8), [], [], categories={}, show={"boxes"})
    with pytest.raises(ValueError, match="uint8 array"):
        render_overlay(np.zeros((4, 4, 3), np.float32), [], [], categories={})


def test_degenerate_gt_box_is_still_marked() -> None:
    image = np.zeros((20, 20, 3), np.uint8)
    gt_boxes = [{"bbox": [5, 12, 0, 0.5], "category_id": 1}]  # zero width: allowed for GT
    pixels = decode(render_overlay(image, gt_boxes, [], categories=CATEGORIES))
    assert tuple(pixels[12, 5]) == BOX_COLOURS["gt"]


def small_scene() -> tuple[np.ndarray, list[GtMatch], list[PredictionMatch]]:
    image = np.full((128, 128, 3), GREY, dtype=np.uint8)
    gt_boxes = [GtMatch(1, 7, 1, (70, 70, 30, 30), False, True, False, None)]
    matches = [pred("tp", (10, 20, 40, 40)), pred("classification", (60, 20, 40, 30))]
    return image, gt_boxes, matches


def test_small_images_get_the_legend_in_a_strip_below_not_over_the_picture() -> None:
    image, gt_boxes, matches = small_scene()
    bare = decode(render_overlay(image, gt_boxes, matches, categories=CATEGORIES, legend="none"))
    assert bare.shape == (128, 128, 3)
    for place in ("auto", "below"):
        png = render_overlay(image, gt_boxes, matches, categories=CATEGORIES, legend=place)
        pixels = decode(png)
        assert pixels.shape[0] > 128 and pixels.shape[1] == 128, place
        assert np.array_equal(pixels[:128], bare), place  # the picture itself is untouched
        strip = {tuple(c) for c in pixels[128:].reshape(-1, 3)}
        drawn = {BOX_COLOURS[o] for o in ("tp", "classification", "missed")}
        assert drawn <= strip and not (set(BOX_COLOURS.values()) - drawn) & strip, place
    # forced inside: same size, the top-right corner covered by the legend box
    inside = decode(
        render_overlay(image, gt_boxes, matches, categories=CATEGORIES, legend="inside")
    )
    assert inside.shape == (128, 128, 3) and not np.array_equal(inside, bare)


def test_large_images_keep_the_legend_in_the_corner_and_none_leaves_it_out() -> None:
    image = np.full((800, 1333, 3), GREY, dtype=np.uint8)
    matches = [pred("tp", (100, 100, 200, 200)), pred("background", (500, 300, 100, 100))]
    auto = decode(render_overlay(image, [], matches, categories=CATEGORIES))
    assert auto.shape == (800, 1333, 3)
    corner = {tuple(c) for c in auto[:100, 1000:].reshape(-1, 3)}
    assert {BOX_COLOURS["tp"], BOX_COLOURS["background"]} <= corner
    plain = decode(render_overlay(image, [], matches, categories=CATEGORIES, legend="none"))
    assert {tuple(c) for c in plain[:100, 1000:].reshape(-1, 3)} == {GREY}


def test_unknown_legend_place_names_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match="legend: unknown value 'left'; accepted: auto, inside"):
        render_overlay(np.zeros((4, 4, 3), np.uint8), [], [], categories={}, legend="left")


def test_labels_take_a_free_place_and_grow_with_the_picture() -> None:
    draw = ImageDraw.Draw(Image.new("RGB", (200, 200)))
    font = _font(label_font_px(200))
    # three boxes side by side whose long labels cannot all sit above them
    items = [
        ("classification", [10.0 + 25 * i, 80.0, 20.0, 40.0], f"rectangle 0.9{i} (gt: circle)")
        for i in range(3)
    ]
    tags = _place_labels(draw, items, (200, 200), font)
    for i, a in enumerate(tags):
        for b in tags[i + 1 :]:
            assert not (a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3])
    assert tags[0][3] < 80  # the first keeps the place above its box
    assert label_font_px(128) == 12 and label_font_px(640) == 20 and label_font_px(4000) == 28

"""PNG overlays of GT boxes and predictions coloured by their outcome, with a legend."""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pycocotools import mask as mask_utils

from backend.analysis import tables
from backend.analysis.tables import BOX_COLOURS, DEFAULTS

__all__ = [
    "DEFAULT_SHOW",
    "LEGEND_PLACES",
    "SHOW_GROUPS",
    "decode_mask",
    "encode_png",
    "label_font_px",
    "render_overlay",
    "scaled_boxes",
    "shown_outcomes",
]

# Names accepted in ``show`` besides the outcome names themselves.
SHOW_GROUPS: dict[str, frozenset[str]] = {
    name: frozenset(members) for name, (_, members) in tables.SHOW_GROUPS.items()
}
DEFAULT_SHOW = frozenset({"gt", "tp", "errors"})
# Where the legend goes: "inside" the top-right corner, in a strip "below" the picture (the
# PNG grows by its height), "none", or "auto": inside unless it would cover more than a third
# of the width or half the height (small images), then below.
LEGEND_PLACES = ("auto", "inside", "below", "none")

_POOL: tuple[int, ThreadPoolExecutor, int] | None = None
_POOL_LOCK = threading.Lock()
_LINE_WIDTH = 2
_PAD = 2
# A mask is filled with its box's colour at this opacity (the picture stays readable under
# it), and outlined in that colour _LINE_WIDTH pixels wide.
_MASK_ALPHA = 0.38
# Label text is sized to the PNG's width: one pixel of type per this many pixels of picture,
# within these bounds. A PNG shown at about its own width (as the dashboard asks for its tiles)
# then has labels that read, and small pictures are not buried under their labels.
_WIDTH_PER_FONT_PX = 32
_FONT_PX = (12, 28)
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def _field(item: Any, name: str, default: Any = None) -> Any:
    """Read ``name`` from a dict or an attribute of a GtMatch/PredictionMatch."""
    if isinstance(item, Mapping):
        return item.get(name, default)
    return getattr(item, name, default)


def shown_outcomes(show: Collection[str]) -> frozenset[str]:
    """Outcome names selected by ``show`` (groups and/or outcome names); ValueError naming
    the accepted ones for anything else."""
    selected: set[str] = set()
    for name in show:
        if name in SHOW_GROUPS:
            selected |= SHOW_GROUPS[name]
        elif name in BOX_COLOURS:
            selected.add(name)
        else:
            accepted = sorted({*SHOW_GROUPS, *BOX_COLOURS})
            raise ValueError(f"show: unknown value {name!r}; accepted: {', '.join(accepted)}")
    return frozenset(selected)


def scaled_boxes(items: Sequence[Any], factor: float) -> list[dict[str, Any]]:
    """GT boxes or predictions as dicts with coordinates times factor, for a resized image (a
    ``mask`` is kept as it is: render_overlay fits masks to the picture it draws on)."""
    fields = ("category_id", "score", "error_type", "gt_category_id", "missed", "ignored", "mask")
    out = []
    for item in items:
        entry = {name: _field(item, name) for name in fields}
        entry["bbox"] = [v * factor for v in _field(item, "bbox")]
        out.append(entry)
    return out


def decode_mask(segmentation: Any, height: int, width: int) -> np.ndarray | None:
    """A COCO segmentation as an HxW bool array: polygons [[x1, y1, x2, y2, ...], ...] drawn
    at the image's height and width, or an RLE {"size": [h, w], "counts": ...} (compressed or
    not). None for no segmentation (absent or empty: a box-only annotation); ValueError, saying
    what is accepted, for one that cannot be read."""
    if segmentation is None or (isinstance(segmentation, list | dict) and not segmentation):
        return None
    try:
        if isinstance(segmentation, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation, Mapping) and isinstance(segmentation.get("counts"), list):
            rle = mask_utils.frPyObjects(dict(segmentation), height, width)
        elif isinstance(segmentation, Mapping) and isinstance(
            segmentation.get("counts"), str | bytes
        ):
            counts = segmentation["counts"]
            rle = {
                "size": list(segmentation["size"]),
                "counts": counts.encode() if isinstance(counts, str) else counts,
            }
        else:
            raise TypeError(f"got {type(segmentation).__name__}")
        return np.asarray(mask_utils.decode(rle), dtype=bool)
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise ValueError(
            "segmentation: expected polygons [[x1, y1, x2, y2, ...], ...] or a COCO RLE "
            f"{{'size': [height, width], 'counts': ...}}; {exc}"
        ) from None


def _fitted(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``mask`` (a whole image's) as a bool array of the picture's ``size`` (width, height):
    resized as overlay images are, nearest neighbour up and bilinear down."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape == (size[1], size[0]):
        return mask
    larger = size[0] * size[1] > mask.shape[0] * mask.shape[1]
    resample = Image.Resampling.NEAREST if larger else Image.Resampling.BILINEAR
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, resample)
    return np.asarray(resized) > 127


def _eroded(mask: np.ndarray, steps: int) -> np.ndarray:
    """``mask`` less ``steps`` pixels all round (4-neighbour), outside counting as empty."""
    for _ in range(steps):
        padded = np.pad(mask, 1)
        mask = mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask


def _paint_masks(canvas: Image.Image, masks: Sequence[tuple[str, np.ndarray]]) -> Image.Image:
    """The canvas with each (outcome, mask) filled translucently in the outcome's colour and
    outlined in it, in the order given."""
    if not masks:
        return canvas
    pixels = np.array(canvas)
    for outcome, mask in masks:
        fitted = _fitted(mask, canvas.size)
        rows, cols = np.flatnonzero(fitted.any(axis=1)), np.flatnonzero(fitted.any(axis=0))
        if not len(rows):
            continue
        # only the mask's bounding window is touched: masks are small beside their pictures
        window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        inside, region = fitted[window], pixels[window]  # views: writes reach ``pixels``
        colour = np.array(BOX_COLOURS[outcome], dtype=np.float32)
        blended = region[inside] * (1 - _MASK_ALPHA) + colour * _MASK_ALPHA
        region[inside] = np.rint(blended).astype(np.uint8)
        region[inside & ~_eroded(inside, _LINE_WIDTH)] = colour.astype(np.uint8)
    return Image.fromarray(pixels)


def _as_rgb(image: Image.Image | np.ndarray) -> Image.Image:
    """A new RGB image to draw on; arrays must be uint8 HxW, HxWx3 (RGB) or HxWx4."""
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image.copy()
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(
            f"image: expected a PIL image or a uint8 array HxW, HxWx3 or HxWx4; "
            f"got {array.dtype} with shape {array.shape}"
        )
    if array.ndim == 3 and array.shape[2] not in (3, 4):
        raise ValueError(f"image: expected 3 or 4 channels; got shape {array.shape}")
    return Image.fromarray(array).convert("RGB")


@lru_cache(maxsize=32)
def _font(size: int) -> Font:
    """Pillow's own scalable font at ``size`` px (its bitmap font where FreeType is missing)."""
    return ImageFont.load_default(size=size)


def label_font_px(width: int) -> int:
    """The size of the labels on a PNG ``width`` pixels wide."""
    low, high = _FONT_PX
    return max(low, min(high, round(width / _WIDTH_PER_FONT_PX)))


def _label(name: str, score: float | None, gt_name: str | None) -> str:
    text = name if score is None else f"{name} {score:.2f}"
    return f"{text} (gt: {gt_name})" if gt_name is not None else text


def render_overlay(
    image: Image.Image | np.ndarray,
    gt_boxes: Sequence[Any],
    matches: Sequence[Any],
    *,
    categories: Mapping[int, str],
    score_thr: float = DEFAULTS.draw_score_thr,
    show: Collection[str] = DEFAULT_SHOW,
    legend: str = "auto",
) -> bytes:
    """Draw GT and predictions of one image, coloured by outcome, and return PNG bytes.

    ``gt_boxes``: GtMatch objects or dicts with ``bbox`` [x, y, w, h], ``category_id`` and
    optionally ``missed``. ``matches``: PredictionMatch objects or dicts with ``bbox``,
    ``category_id``, ``score``, ``error_type`` and optionally ``gt_category_id``.
    ``show`` takes "gt", "tp", "errors" (every error and missed GT) or outcome names.
    Predictions below ``score_thr`` and ignored predictions are not drawn. ``legend``: one of
    LEGEND_PLACES. A box that has a ``mask`` (an HxW bool array over the whole image, see
    decode_mask; fitted to the picture when its size differs) and is drawn gets the mask
    filled and outlined in its colour, under every box and label.
    """
    if legend not in LEGEND_PLACES:
        raise ValueError(f"legend: unknown value {legend!r}; accepted: {', '.join(LEGEND_PLACES)}")
    wanted = shown_outcomes(show)
    canvas = _as_rgb(image)

    # (outcome, box, label) in drawing order: GT first, then predictions by rising score;
    # the masks of those that have one, in the same order.
    items: list[tuple[str, list[float], str]] = []
    masks: list[tuple[str, np.ndarray]] = []
    for gt in gt_boxes:
        outcome = "missed" if _field(gt, "missed", False) else "gt"
        if outcome in wanted:
            name = categories.get(_field(gt, "category_id"), str(_field(gt, "category_id")))
            text = f"{name} (missed)" if outcome == "missed" else name
            items.append((outcome, list(_field(gt, "bbox")), text))
            if _field(gt, "mask") is not None:
                masks.append((outcome, _field(gt, "mask")))
    preds = [
        m
        for m in matches
        if _field(m, "score", 0.0) >= score_thr and _field(m, "error_type") in wanted
    ]
    preds.sort(key=lambda m: _field(m, "score", 0.0))
    for m in preds:
        cat = _field(m, "category_id")
        gt_cat = _field(m, "gt_category_id")
        gt_name = categories.get(gt_cat, str(gt_cat)) if gt_cat not in (None, cat) else None
        text = _label(categories.get(cat, str(cat)), _field(m, "score"), gt_name)
        items.append((_field(m, "error_type"), list(_field(m, "bbox")), text))
        if _field(m, "mask") is not None:
            masks.append((_field(m, "error_type"), _field(m, "mask")))

    canvas = _paint_masks(canvas, masks)
    draw = ImageDraw.Draw(canvas)
    for outcome, (x, y, w, h), _ in items:
        # Pillow refuses corners out of order, which a GT box narrower than 1 px would give.
        corners = (x, y, max(x, x + w - 1), max(y, y + h - 1))
        draw.rectangle(corners, outline=BOX_COLOURS[outcome], width=_LINE_WIDTH)
    font = _font(label_font_px(canvas.width))
    # the last drawn (highest scores) choose their place first and are drawn on top
    tags = _place_labels(draw, items[::-1], canvas.size, font)
    for (outcome, _, text), tag in zip(items, tags[::-1], strict=True):
        _draw_label(draw, tag, text, BOX_COLOURS[outcome], font)
    present = [o for o in BOX_COLOURS if any(i[0] == o for i in items)]
    if present and legend != "none":
        box = _legend_box(draw, present, font)
        fits = box[0] <= canvas.width / 3 and box[1] <= canvas.height / 2
        if legend == "inside" or (legend == "auto" and fits):
            _draw_legend(draw, present, canvas.width, box, font)
        else:
            canvas = _with_legend_strip(canvas, present, font)

    return encode_png(np.asarray(canvas))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _deflate_pool() -> tuple[ThreadPoolExecutor, int]:
    """Threads for parallel deflate, made once per process (a forked child makes its own)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid():
            workers = max(1, min(8, os.cpu_count() or 1))
            pool = ThreadPoolExecutor(workers, thread_name_prefix="png-deflate")
            _POOL = (os.getpid(), pool, workers)
        return _POOL[1], _POOL[2]


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an HxWx3 uint8 array, compressed in parallel slices.

    Pillow's encoder takes ~80 ms for a 1333x800 photo even at level 1 (adaptive filters,
    one thread). Here every row gets the "Sub" filter (numpy), and the filtered bytes are
    cut into slices deflated independently on threads (zlib releases the GIL); raw deflate
    streams that end in a full flush concatenate into one valid stream, as pigz does.
    Deflate uses Z_RLE: on noisy images (camera grain, DetLab's shapes) it is about twice
    as fast as the default strategy with files as small or smaller; on clean photos it is
    as small; on flat synthetic scenes files grow by ~15%.
    """
    height, width, channels = rgb.shape
    if channels != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"encode_png: expected HxWx3 uint8; got {rgb.dtype} {rgb.shape}")
    flat = rgb.reshape(height, width * 3)
    rows = np.empty((height, width * 3 + 1), dtype=np.uint8)
    rows[:, 0] = 1  # filter type Sub: each byte minus the byte one pixel to the left
    rows[:, 1:4] = flat[:, :3]
    np.subtract(flat[:, 3:], flat[:, :-3], out=rows[:, 4:])
    data = rows.reshape(-1).data  # a memoryview: its slices are not copies

    pool, workers = _deflate_pool()
    parts = 2 * workers
    step = -(-len(data) // parts)

    def deflate(part: int) -> bytes:
        compressor = zlib.compressobj(1, zlib.DEFLATED, -15, 8, zlib.Z_RLE)
        body = compressor.compress(data[part * step : (part + 1) * step])
        return body + compressor.flush(zlib.Z_FINISH if part == parts - 1 else zlib.Z_FULL_FLUSH)

    deflated = b"".join(pool.map(deflate, range(parts)))
    # zlib wrapper: CMF/FLG for a 32 KiB window (FLG makes the pair a multiple of 31).
    header = bytes((0x78, 0x01))
    stream = header + deflated + struct.pack(">I", zlib.adler32(data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", stream)
        + _png_chunk(b"IEND", b"")
    )


def _text_height(font: Font) -> int:
    """Height of a line of text in ``font``, ascenders to descenders."""
    _, top, _, bottom = font.getbbox("Ag(y")
    return int(bottom - top)


def _text_top(font: Font) -> int:
    """The blank rows above the ascenders that ``draw.text`` leaves: text is drawn that much
    higher, so that it sits in its tag."""
    return int(font.getbbox("Ag(y")[1])


Tag = tuple[int, int, int, int]  # left, top, right, bottom (inclusive)


def _place_labels(
    draw: ImageDraw.ImageDraw,
    items: Sequence[tuple[str, list[float], str]],
    size: tuple[int, int],
    font: Font,
) -> list[Tag]:
    """A tag for each box's label, in the order given, each where it covers no tag placed
    before it if it can: above the box's top-left corner, inside it, under it, inside its
    bottom; the first of these when every one is taken."""
    height = _text_height(font) + 2 * _PAD
    placed: list[Tag] = []
    for _, (x, y, _, h), text in items:
        width = int(draw.textlength(text, font=font)) + 2 * _PAD
        left = int(min(max(x, 0), max(size[0] - width, 0)))
        tops = [y - height, y, y + h, y + h - height]
        candidates = [
            (left, top, left + width - 1, top + height - 1)
            for top in (int(min(max(t, 0), max(size[1] - height, 0))) for t in tops)
        ]
        free = [c for c in candidates if not any(_overlap(c, other) for other in placed)]
        placed.append((free or candidates)[0])
    return placed


def _overlap(a: Tag, b: Tag) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _draw_label(
    draw: ImageDraw.ImageDraw, tag: Tag, text: str, color: tuple[int, int, int], font: Font
) -> None:
    """Text on a tag filled with the box's colour."""
    draw.rectangle(tag, fill=color)
    dark = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] < 140
    draw.text(
        (tag[0] + _PAD, tag[1] + _PAD - _text_top(font)),
        text,
        fill=(255, 255, 255) if dark else (0, 0, 0),
        font=font,
    )


_LEGEND_FILL = (32, 32, 32)


def _swatch(font: Font) -> int:
    return max(8, _text_height(font) - 4)


def _line(font: Font) -> int:
    return _text_height(font) + 4


def _legend_box(draw: ImageDraw.ImageDraw, outcomes: list[str], font: Font) -> tuple[int, int]:
    """Width and height of the corner legend, one outcome a line."""
    text = max(int(draw.textlength(o, font=font)) for o in outcomes)
    return _swatch(font) + 3 * _PAD + text + 4, _line(font) * len(outcomes) + 2 * _PAD


def _legend_entry(draw: ImageDraw.ImageDraw, x: int, y: int, outcome: str, font: Font) -> None:
    """A colour swatch and the outcome's name, the swatch's top-left corner at (x, y)."""
    swatch = _swatch(font)
    top = y + (_text_height(font) - swatch) // 2 + 1
    draw.rectangle((x, top, x + swatch - 1, top + swatch - 1), fill=BOX_COLOURS[outcome])
    draw.text(
        (x + swatch + _PAD + 2, y - _text_top(font)), outcome, fill=(255, 255, 255), font=font
    )


def _draw_legend(
    draw: ImageDraw.ImageDraw,
    outcomes: list[str],
    image_width: int,
    box: tuple[int, int],
    font: Font,
) -> None:
    """The legend box (its size from _legend_box) in the top-right corner."""
    width, height = box
    left = max(image_width - width - 4, 0)
    top = 4
    draw.rectangle((left, top, left + width - 1, top + height - 1), fill=_LEGEND_FILL)
    for i, outcome in enumerate(outcomes):
        _legend_entry(draw, left + _PAD, top + _PAD + i * _line(font), outcome, font)


def _with_legend_strip(canvas: Image.Image, outcomes: list[str], font: Font) -> Image.Image:
    """The picture above a strip holding the legend, entries side by side, wrapped to the
    picture's width: nothing of the picture is covered."""
    measure = ImageDraw.Draw(canvas)
    widths = [
        _swatch(font) + 3 * _PAD + int(measure.textlength(o, font=font)) + 8 for o in outcomes
    ]
    lines: list[list[int]] = [[]]
    used = _PAD
    for index, width in enumerate(widths):
        if lines[-1] and used + width > canvas.width:
            lines.append([])
            used = _PAD
        lines[-1].append(index)
        used += width
    strip = _line(font) * len(lines) + 2 * _PAD
    grown = Image.new("RGB", (canvas.width, canvas.height + strip), _LEGEND_FILL)
    grown.paste(canvas, (0, 0))
    draw = ImageDraw.Draw(grown)
    for row, members in enumerate(lines):
        x, y = _PAD, canvas.height + _PAD + row * _line(font)
        for index in members:
            _legend_entry(draw, x, y, outcomes[index], font)
            x += widths[index]
    return grown

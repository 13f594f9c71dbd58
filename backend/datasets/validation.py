"""Checks a COCO-format split before it is registered and computes its statistics.

Each check adds a problem naming the file, what is wrong and what is accepted;
registration is refused when any problem is found.

`python -m backend.datasets.validation SPLIT ANN_FILE IMAGE_DIR` prints a split's report as
JSON; `check_splits` checks big files that way, in a child process (see IN_PROCESS_BYTES).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "SplitReport",
    "check_split",
    "check_split_in_child",
    "check_splits",
    "confine",
    "oversized_files",
    "PathOutsideRoots",
    "SMALL",
    "MEDIUM",
]

# COCO's area buckets
SMALL = 32**2
MEDIUM = 96**2
# a box may stick out of its image by this fraction of the image side (rounding, padding)
OUTSIDE_TOLERANCE = 0.05
MAX_LISTED = 5
# Parsing JSON holds the GIL from start to end (seconds for a big file), which would hold up
# every other request of the API process, its event loop included. Annotation files bigger
# than this are checked in a child process, which also gives back the memory parsing took.
IN_PROCESS_BYTES = 8 * 1024**2


class PathOutsideRoots(ValueError):
    """A path resolves (symlinks included) outside every allowed root."""


def _under_a_root(text: str, roots: list[Path]) -> str:
    """A relative path as the API shows it to non-admins: under the first root that has it
    (the first root when none does). Resolved from the working directory instead when it names
    something there that lies under a root, as before paths were shown relative."""
    if Path(text).is_absolute() or not roots:
        return text
    for root in roots:
        if (root / text).exists():
            return str(root / text)
    if Path(text).exists():
        return text
    return str(roots[0] / text)


def confine(path: str | Path, roots: list[Path]) -> Path:
    """Resolve path, following symlinks, and insist it lies under one of roots. A relative
    path is taken relative to the roots."""
    text = str(path)
    if "\x00" in text:
        raise PathOutsideRoots(f"{text!r} contains a NUL byte; give a plain file system path")
    if text.startswith("~"):
        # a home folder is never an allowed root, and ~unknown-user cannot even be resolved
        raise PathOutsideRoots(
            f"{text} starts with '~'; give an absolute path under an allowed data root"
        )
    try:
        resolved = Path(_under_a_root(text, roots)).resolve()
    except (OSError, RuntimeError) as exc:
        raise PathOutsideRoots(
            f"{text} cannot be resolved ({exc}); give an absolute path"
        ) from None
    for root in roots:
        if resolved == root or resolved.is_relative_to(root.resolve()):
            return resolved
    accepted = ", ".join(str(root) for root in roots)
    raise PathOutsideRoots(f"{path} is outside the allowed data roots (accepted: {accepted})")


def oversized_files(ann_files: list[Path], limit: int) -> list[dict[str, str]]:
    """A problem for each file over limit bytes, found from its size alone (nothing is read).

    A file that cannot be stat'ed is left to check_split, which reports it by name."""
    problems = []
    for ann_file in dict.fromkeys(ann_files):  # train and val may be one file
        try:
            size = ann_file.stat().st_size
        except OSError:
            continue
        if size > limit:
            problems.append(
                {
                    "where": str(ann_file),
                    "problem": f"{size} bytes, over the limit of {limit} bytes for an "
                    "annotation file (DETLAB_MAX_ANNOTATION_BYTES)",
                }
            )
    return problems


@dataclass
class SplitReport:
    """Problems and statistics of one split (train or val)."""

    split: str
    problems: list[dict[str, str]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    categories: list[dict[str, Any]] = field(default_factory=list)

    def add(self, where: str, problem: str) -> None:
        self.problems.append({"split": self.split, "where": where, "problem": problem})


def _load_json(report: SplitReport, ann_file: Path) -> dict[str, Any] | None:
    try:
        text = ann_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        report.add(str(ann_file), "file not found; expected a COCO annotation JSON file")
        return None
    except (OSError, UnicodeDecodeError) as exc:
        report.add(str(ann_file), f"unreadable ({exc.__class__.__name__}: {exc})")
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        report.add(
            str(ann_file),
            f"not valid JSON: {exc.msg} at line {exc.lineno} column "
            f"{exc.colno}; expected a COCO annotation JSON object",
        )
        return None
    if not isinstance(data, dict):
        report.add(
            str(ann_file),
            f"top level is a {type(data).__name__}; expected a JSON object "
            "with 'images', 'annotations' and 'categories'",
        )
        return None
    missing = [
        key
        for key in ("images", "annotations", "categories")
        if not isinstance(data.get(key), list)
    ]
    if missing:
        report.add(
            str(ann_file),
            f"missing or not a list: {', '.join(missing)}; a COCO file "
            "needs 'images', 'annotations' and 'categories' lists",
        )
        return None
    return data


def _ids(report: SplitReport, where: str, records: list[Any], kind: str) -> dict[Any, dict]:
    by_id: dict[Any, dict] = {}
    duplicates: list[str] = []
    for index, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("id"), int):
            report.add(where, f"{kind}[{index}] has no integer 'id'; every {kind} entry needs one")
            continue
        if record["id"] in by_id:
            duplicates.append(str(record["id"]))
        by_id[record["id"]] = record
    if duplicates:
        report.add(
            where,
            f"duplicate {kind} ids ({len(duplicates)}): "
            f"{', '.join(duplicates[:MAX_LISTED])}; ids must be unique",
        )
    return by_id


def _check_category_names(report: SplitReport, where: str, categories: dict[Any, dict]) -> None:
    """Classes are shown, filtered and compared by name, so two ids may not share one."""
    ids_by_name: dict[str, list[str]] = {}
    for cat_id, category in categories.items():
        ids_by_name.setdefault(str(category.get("name", cat_id)), []).append(str(cat_id))
    shared = {name: ids for name, ids in ids_by_name.items() if len(ids) > 1}
    if shared:
        listed = "; ".join(f"{name!r} (ids {', '.join(ids)})" for name, ids in shared.items())
        report.add(
            where,
            f"categories share a name: {listed}; every category needs a name of its own",
        )


def _check_box(ann: dict, image: dict | None) -> str | None:
    bbox = ann.get("bbox")
    if (
        not isinstance(bbox, list)
        or len(bbox) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
    ):
        return f"bbox {bbox!r} is not [x, y, width, height] numbers"
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return f"bbox {bbox} has a non-finite value; all four must be finite"
    if w <= 0 or h <= 0:
        return f"bbox {bbox} has non-positive width or height; both must be > 0"
    if image is not None:
        width, height = image.get("width"), image.get("height")
        if isinstance(width, int | float) and isinstance(height, int | float):
            tol_x, tol_y = OUTSIDE_TOLERANCE * width, OUTSIDE_TOLERANCE * height
            if x < -tol_x or y < -tol_y or x + w > width + tol_x or y + h > height + tol_y:
                return (
                    f"bbox {bbox} lies outside its {width}x{height} image by more than "
                    f"{OUTSIDE_TOLERANCE:.0%} of the image size"
                )
    return None


SEGMENTATION_ACCEPTED = (
    "a segmentation is COCO polygons (a list of [x1, y1, x2, y2, x3, y3, ...] lists of "
    "finite numbers) or RLE ({'size': [height, width] of its image, 'counts': a string or "
    "a list of ints}); leave it out, null or [] for a box-only annotation"
)


def _has_segmentation(ann: dict) -> bool:
    """Whether the annotation carries a mask: box-only COCO exports often write [] or null."""
    return ann.get("segmentation") not in (None, [])


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_polygons(polygons: list) -> str | None:
    for index, polygon in enumerate(polygons):
        if not isinstance(polygon, list) or not all(_is_number(v) for v in polygon):
            return f"polygon {index} is not a flat list of numbers"
        if not all(math.isfinite(v) for v in polygon):
            return f"polygon {index} has a non-finite coordinate"
        if len(polygon) < 6 or len(polygon) % 2:
            return (
                f"polygon {index} has {len(polygon)} numbers; expected an even count of at "
                "least 6 (x, y of three or more points)"
            )
    return None


def _check_rle(rle: dict, image: dict | None) -> str | None:
    size, counts = rle.get("size"), rle.get("counts")
    if not isinstance(size, list) or len(size) != 2 or not all(type(v) is int for v in size):
        return f"RLE size {size!r} is not [height, width] integers"
    if image is not None and [image.get("height"), image.get("width")] != size:
        return (
            f"RLE size {size} is not its image's [height, width], "
            f"[{image.get('height')}, {image.get('width')}]"
        )
    if isinstance(counts, list):
        if not all(type(v) is int and v >= 0 for v in counts):
            return "RLE counts is a list holding other than non-negative integers"
        if sum(counts) != size[0] * size[1]:
            return (
                f"RLE counts add up to {sum(counts)} pixels; expected height x width = "
                f"{size[0] * size[1]}"
            )
    elif not isinstance(counts, str):
        return f"RLE counts is of type {type(counts).__name__}"
    return None


def _check_segmentation(ann: dict, image: dict | None) -> str | None:
    if not _has_segmentation(ann):
        return None
    segmentation = ann["segmentation"]
    if isinstance(segmentation, list):
        return _check_polygons(segmentation)
    if isinstance(segmentation, dict):
        return _check_rle(segmentation, image)
    return f"segmentation is of type {type(segmentation).__name__}"


def _check_images(report: SplitReport, images: dict[Any, dict], image_dir: Path) -> None:
    bad_meta = [
        str(i)
        for i, img in images.items()
        if not isinstance(img.get("file_name"), str)
        or not isinstance(img.get("width"), int)
        or not isinstance(img.get("height"), int)
        or img["width"] <= 0
        or img["height"] <= 0
    ]
    if bad_meta:
        report.add(
            str(image_dir),
            f"{len(bad_meta)} images lack a file_name or positive integer "
            f"width/height (ids {', '.join(bad_meta[:MAX_LISTED])})",
        )
    if not image_dir.is_dir():
        report.add(str(image_dir), "image folder not found; expected a folder of image files")
        return
    present = {p.relative_to(image_dir).as_posix() for p in image_dir.rglob("*") if p.is_file()}
    missing = sorted(
        img["file_name"]
        for img in images.values()
        if isinstance(img.get("file_name"), str) and img["file_name"] not in present
    )
    if missing:
        report.add(
            str(image_dir),
            f"{len(missing)} image files missing, e.g. "
            f"{', '.join(missing[:MAX_LISTED])}; file_name is relative to the image folder",
        )


def check_split(split: str, ann_file: Path, image_dir: Path) -> SplitReport:
    """Validate one COCO split and, when valid, compute its statistics."""
    report = SplitReport(split=split)
    data = _load_json(report, ann_file)
    if data is None:
        return report
    where = str(ann_file)
    images = _ids(report, where, data["images"], "images")
    categories = _ids(report, where, data["categories"], "categories")
    _check_category_names(report, where, categories)
    annotations = _ids(report, where, data["annotations"], "annotations")
    unknown_images, unknown_cats, bad_boxes, bad_segmentations = [], [], [], []
    for ann in annotations.values():
        if ann.get("image_id") not in images:
            unknown_images.append(f"{ann['id']} (image_id {ann.get('image_id')!r})")
        if ann.get("category_id") not in categories:
            unknown_cats.append(f"{ann['id']} (category_id {ann.get('category_id')!r})")
        box_problem = _check_box(ann, images.get(ann.get("image_id")))
        if box_problem:
            bad_boxes.append(f"annotation {ann['id']}: {box_problem}")
        segmentation_problem = _check_segmentation(ann, images.get(ann.get("image_id")))
        if segmentation_problem:
            bad_segmentations.append(f"annotation {ann['id']}: {segmentation_problem}")
    if unknown_images:
        report.add(
            where,
            f"{len(unknown_images)} annotations point at unknown images: "
            f"{', '.join(unknown_images[:MAX_LISTED])}; image_id must be an id in 'images'",
        )
    if unknown_cats:
        report.add(
            where,
            f"{len(unknown_cats)} annotations point at unknown categories: "
            f"{', '.join(unknown_cats[:MAX_LISTED])}; category_id must be an id in "
            "'categories'",
        )
    if bad_boxes:
        report.add(where, f"{len(bad_boxes)} bad boxes: {'; '.join(bad_boxes[:MAX_LISTED])}")
    if bad_segmentations:
        report.add(
            where,
            f"{len(bad_segmentations)} bad segmentations: "
            f"{'; '.join(bad_segmentations[:MAX_LISTED])}; {SEGMENTATION_ACCEPTED}",
        )
    _check_images(report, images, image_dir)
    if report.problems:
        return report
    _check_with_pycocotools(report, ann_file)
    if not report.problems:
        report.categories = [
            {"id": c["id"], "name": str(c.get("name", c["id"]))}
            for c in sorted(categories.values(), key=lambda c: c["id"])
        ]
        report.stats = _stats(images, annotations, categories)
    return report


def check_splits(splits: list[tuple[str, Path, Path]]) -> list[SplitReport]:
    """check_split for each (split, ann_file, image_dir): in this process when the annotation
    files are small, one child process per split when together they pass IN_PROCESS_BYTES."""
    sizes = [ann_file.stat().st_size if ann_file.is_file() else 0 for _, ann_file, _ in splits]
    check = check_split if sum(sizes) <= IN_PROCESS_BYTES else check_split_in_child
    return [check(*split) for split in splits]


def check_split_in_child(split: str, ann_file: Path, image_dir: Path) -> SplitReport:
    """check_split run by `python -m backend.datasets.validation`; a child that dies is a
    problem naming the file."""
    package_root = str(Path(__file__).resolve().parents[2])  # where `backend` is importable
    path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", __name__, split, str(ann_file), str(image_dir)]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path}
    )
    if done.returncode == 0:
        return SplitReport(**json.loads(done.stdout.splitlines()[-1]))
    report = SplitReport(split=split)
    if done.returncode < 0:
        problem = (
            f"checking it was stopped by {signal.Signals(-done.returncode).name} (out of "
            "memory?); give the API more memory, or lower DETLAB_MAX_ANNOTATION_BYTES to refuse "
            "files this big"
        )
    else:
        problem = f"checking it failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
    report.add(str(ann_file), problem)
    return report


def _check_with_pycocotools(report: SplitReport, ann_file: Path) -> None:
    import contextlib
    import io

    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            COCO(str(ann_file))
    except Exception as exc:  # noqa: BLE001 - any pycocotools failure is a user-facing problem
        report.add(str(ann_file), f"pycocotools cannot load it: {exc.__class__.__name__}: {exc}")


def _stats(images: dict, annotations: dict, categories: dict) -> dict[str, Any]:
    per_class: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    crowd = masks = 0
    for ann in annotations.values():
        if ann.get("iscrowd", 0):
            crowd += 1
            continue
        if _has_segmentation(ann):
            masks += 1
        per_class[str(categories[ann["category_id"]].get("name", ann["category_id"]))] += 1
        x, y, w, h = ann["bbox"]
        area = float(ann.get("area") or w * h)
        sizes["small" if area < SMALL else "medium" if area < MEDIUM else "large"] += 1
    return {
        "images": len(images),
        "boxes": sum(per_class.values()),
        "crowd_boxes": crowd,
        # non-crowd boxes with a segmentation: a mask model needs one on every box
        "masks": masks,
        "per_class": {
            str(c.get("name", c["id"])): per_class.get(str(c.get("name", c["id"])), 0)
            for c in sorted(categories.values(), key=lambda c: c["id"])
        },
        "small": sizes["small"],
        "medium": sizes["medium"],
        "large": sizes["large"],
    }


if __name__ == "__main__":  # see check_splits; the last line of stdout is the report
    report = check_split(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
    print(json.dumps(asdict(report)))

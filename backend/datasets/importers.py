"""Converters from KITTI 2D object labels and Pascal VOC XML into COCO detection JSON."""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from backend.artifacts_io import write_text_atomic

__all__ = ["ImportFailed", "kitti_to_coco", "voc_to_coco", "main"]

KITTI_FIELDS = tuple(
    "type truncated occluded alpha left top right bottom height width length x y z rotation_y"
    " score".split()
)
KITTI_IGNORED = "DontCare"
KITTI_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class ImportFailed(ValueError):
    """A source annotation file is missing or malformed; the message names file and field."""


def _image_size(path: Path, context: str) -> tuple[int, int]:
    """(width, height) read from the image file's header."""
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise ImportFailed(
            f"{context}: image {path} not found; expected an image file for every label file"
        ) from None
    except (OSError, UnidentifiedImageError) as exc:
        raise ImportFailed(f"{context}: image {path} is not a readable image ({exc})") from exc


def _category_table(
    found: Sequence[str], classes: Sequence[str] | None, source: str
) -> dict[str, int]:
    """Category ids 1..K: the given classes in order, or the names found, sorted."""
    if classes is None:
        names = sorted(set(found))
    else:
        names = [name.strip() for name in classes]
        if not names or any(not name for name in names) or len(set(names)) != len(names):
            raise ImportFailed(
                f"classes {list(classes)!r} for {source}: expected a non-empty list of distinct "
                "non-empty names"
            )
    return {name: index for index, name in enumerate(names, start=1)}


def _write_coco(
    out_json: Path,
    description: str,
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    categories: dict[str, int],
) -> None:
    coco = {
        "info": {"description": description},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name} for name, cid in categories.items()],
    }
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_json, json.dumps(coco, indent=1) + "\n")


def _parse_kitti_line(line: str, where: str) -> tuple[str, tuple[float, float, float, float]]:
    """The object type and its (left, top, right, bottom) box from one KITTI label line."""
    fields = line.split()
    if len(fields) not in (15, 16):
        raise ImportFailed(
            f"{where}: {len(fields)} fields; expected 15 (type, truncated, occluded, alpha, "
            "left, top, right, bottom, height, width, length, x, y, z, rotation_y) "
            "or 16 with a trailing score"
        )
    numbers = []
    for name, text in zip(KITTI_FIELDS[1:], fields[1:], strict=False):
        try:
            numbers.append(float(text))
        except ValueError:
            raise ImportFailed(f"{where}: field '{name}' is {text!r}; expected a number") from None
    left, top, right, bottom = numbers[3:7]
    if right < left or bottom < top:
        raise ImportFailed(
            f"{where}: box left={left}, top={top}, right={right}, bottom={bottom}; "
            "expected right >= left and bottom >= top"
        )
    return fields[0], (left, top, right, bottom)


def kitti_to_coco(
    kitti_root: Path,
    out_json: Path,
    *,
    image_dir: str = "image_2",
    label_dir: str = "label_2",
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Convert KITTI 2D object labels to COCO JSON and return a summary of what was kept."""
    root = Path(kitti_root)
    if classes is not None and KITTI_IGNORED in classes:
        raise ImportFailed(
            f"classes {list(classes)!r} include {KITTI_IGNORED}, which marks unlabelled regions; "
            "expected object types only (Car, Pedestrian, ...)"
        )
    label_files = sorted((root / label_dir).glob("*.txt"))
    if not label_files:
        raise ImportFailed(f"no label files (*.txt) in {root / label_dir}; expected KITTI labels")
    skipped: Counter[str] = Counter()
    images: list[dict[str, Any]] = []
    objects: list[tuple[int, str, tuple[float, float, float, float]]] = []
    for image_id, label_file in enumerate(label_files, start=1):
        candidates = [root / image_dir / (label_file.stem + s) for s in KITTI_IMAGE_SUFFIXES]
        image_path = next((path for path in candidates if path.is_file()), candidates[0])
        width, height = _image_size(image_path, str(label_file))
        images.append(
            {"id": image_id, "file_name": image_path.name, "width": width, "height": height}
        )
        text = label_file.read_text(encoding="utf-8")
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            kind, box = _parse_kitti_line(line, f"{label_file}:{line_no}")
            if kind == KITTI_IGNORED:
                skipped[kind] += 1  # unlabelled regions, not objects
            else:
                objects.append((image_id, kind, box))
    categories = _category_table([kind for _, kind, _ in objects], classes, str(root))
    annotations: list[dict[str, Any]] = []
    for image_id, kind, (left, top, right, bottom) in objects:
        if kind not in categories:
            skipped[kind] += 1
            continue
        box_w, box_h = right - left, bottom - top
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": categories[kind],
                "bbox": [left, top, box_w, box_h],
                "area": box_w * box_h,
                "iscrowd": 0,
            }
        )
    _write_coco(out_json, f"converted from KITTI labels in {root}", images, annotations, categories)
    return {
        "out_json": str(out_json),
        "images": len(images),
        "annotations": len(annotations),
        "categories": list(categories),
        "skipped": dict(sorted(skipped.items())),
    }


def _voc_text(node: ET.Element, path: str, where: str) -> str:
    """The stripped text of a required child element."""
    child = node.find(path)
    if child is None or child.text is None or not child.text.strip():
        raise ImportFailed(f"{where}: missing or empty <{path}>; expected it in VOC XML")
    return child.text.strip()


def _voc_number(node: ET.Element, path: str, where: str) -> float:
    text = _voc_text(node, path, where)
    try:
        return float(text)
    except ValueError:
        raise ImportFailed(f"{where}: <{path}> is {text!r}; expected a number") from None


def _read_voc_xml(xml_path: Path, voc_root: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An image record (without id) and its objects (name, box, difficult) from one VOC file."""
    try:
        tree = ET.parse(xml_path)
    except FileNotFoundError:
        raise ImportFailed(f"{xml_path} not found; expected one annotation file per id") from None
    except ET.ParseError as exc:
        line, column = exc.position
        raise ImportFailed(
            f"{xml_path}: malformed XML at line {line}, column {column} ({exc}); "
            "expected a Pascal VOC <annotation> document"
        ) from None
    root = tree.getroot()
    where = str(xml_path)
    if root.tag != "annotation":
        raise ImportFailed(f"{where}: root element is <{root.tag}>; expected <annotation>")
    filename_node = root.find("filename")
    filename = (filename_node.text or "").strip() if filename_node is not None else ""
    filename = filename or f"{xml_path.stem}.jpg"
    size = root.find("size")
    width = int(_voc_number(root, "size/width", where)) if size is not None else 0
    height = int(_voc_number(root, "size/height", where)) if size is not None else 0
    if width <= 0 or height <= 0:
        # Some exporters write 0x0; the image itself then says how large it is.
        image_path = voc_root / "JPEGImages" / filename
        if not image_path.is_file():
            raise ImportFailed(
                f"{where}: <size> is {width}x{height} and {image_path} does not exist; "
                "expected positive <size><width> and <height>"
            )
        width, height = _image_size(image_path, where)
    image = {"file_name": filename, "width": width, "height": height}
    objects = []
    for index, obj in enumerate(root.findall("object"), start=1):
        obj_where = f"{where}: object {index}"
        name = _voc_text(obj, "name", obj_where)
        difficult_text = (obj.findtext("difficult") or "0").strip()
        if difficult_text not in ("0", "1"):
            raise ImportFailed(f"{obj_where}: <difficult> is {difficult_text!r}; expected 0 or 1")
        xmin, ymin, xmax, ymax = (
            _voc_number(obj, f"bndbox/{field}", obj_where)
            for field in ("xmin", "ymin", "xmax", "ymax")
        )
        if xmax < xmin or ymax < ymin:
            raise ImportFailed(
                f"{obj_where}: box ({xmin}, {ymin}, {xmax}, {ymax}); expected xmax >= xmin "
                "and ymax >= ymin"
            )
        # VOC boxes are 1-based with inclusive ends.
        box = [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]
        objects.append({"name": name, "bbox": box, "difficult": difficult_text == "1"})
    return image, objects


def _voc_ids(voc_root: Path, image_set: str | None) -> list[str]:
    """Annotation ids from ImageSets/Main/{image_set}.txt, or every Annotations/*.xml."""
    if image_set is None:
        ids = sorted(path.stem for path in (voc_root / "Annotations").glob("*.xml"))
        if not ids:
            raise ImportFailed(f"no *.xml in {voc_root / 'Annotations'}; expected VOC annotations")
        return ids
    list_file = voc_root / "ImageSets" / "Main" / f"{image_set}.txt"
    if not list_file.is_file():
        raise ImportFailed(f"{list_file} not found; expected one image id per line")
    lines = list_file.read_text(encoding="utf-8").splitlines()
    ids = [line.split()[0] for line in lines if line.strip()]
    if not ids:
        raise ImportFailed(f"{list_file} is empty; expected one image id per line")
    return ids


def voc_to_coco(
    voc_root: Path,
    out_json: Path,
    *,
    image_set: str | None = None,
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Convert Pascal VOC XML to COCO JSON; difficult objects become ignored crowd regions."""
    root = Path(voc_root)
    images: list[dict[str, Any]] = []
    objects: list[tuple[int, dict[str, Any]]] = []
    for image_id, voc_id in enumerate(_voc_ids(root, image_set), start=1):
        image, image_objects = _read_voc_xml(root / "Annotations" / f"{voc_id}.xml", root)
        images.append({"id": image_id, **image})
        objects.extend((image_id, obj) for obj in image_objects)
    categories = _category_table([obj["name"] for _, obj in objects], classes, str(root))
    skipped: Counter[str] = Counter()
    annotations: list[dict[str, Any]] = []
    for image_id, obj in objects:
        if obj["name"] not in categories:
            skipped[obj["name"]] += 1
            continue
        _, _, width, height = obj["bbox"]
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": categories[obj["name"]],
                "bbox": obj["bbox"],
                "area": width * height,
                # COCO eval (pycocotools, mmdet's CocoMetric) neither rewards nor penalises
                # detections on crowd boxes; mmdet's CocoDataset leaves "ignore" boxes out of
                # the training targets.
                "iscrowd": int(obj["difficult"]),
                "ignore": int(obj["difficult"]),
            }
        )
    _write_coco(out_json, f"converted from Pascal VOC in {root}", images, annotations, categories)
    return {
        "out_json": str(out_json),
        "images": len(images),
        "annotations": len(annotations),
        "difficult": sum(ann["iscrowd"] for ann in annotations),
        "categories": list(categories),
        "skipped": dict(sorted(skipped.items())),
    }


def _class_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated class names")
    return names


def main(argv: list[str] | None = None) -> int:
    """Command line: detlab-import {kitti,voc} ROOT OUT_JSON [options]."""
    parser = argparse.ArgumentParser(
        prog="detlab-import", description="Convert KITTI or Pascal VOC annotations to COCO JSON."
    )
    formats = parser.add_subparsers(dest="format", required=True)
    kitti = formats.add_parser("kitti", help="KITTI 2D object labels (label_2/*.txt)")
    kitti.add_argument("root", type=Path, help="directory holding image_2/ and label_2/")
    kitti.add_argument("out_json", type=Path)
    kitti.add_argument("--image-dir", default="image_2")
    kitti.add_argument("--label-dir", default="label_2")
    kitti.add_argument("--classes", type=_class_list, help="comma-separated, e.g. Car,Pedestrian")
    voc = formats.add_parser("voc", help="Pascal VOC XML (Annotations/*.xml)")
    voc.add_argument("root", type=Path, help="directory holding Annotations/ (VOC2007, ...)")
    voc.add_argument("out_json", type=Path)
    voc.add_argument("--image-set", help="ids from ImageSets/Main/IMAGE_SET.txt, e.g. train")
    voc.add_argument("--classes", type=_class_list, help="comma-separated, e.g. cat,dog")
    args = parser.parse_args(argv)
    try:
        if args.format == "kitti":
            summary = kitti_to_coco(
                args.root,
                args.out_json,
                image_dir=args.image_dir,
                label_dir=args.label_dir,
                classes=args.classes,
            )
        else:
            summary = voc_to_coco(
                args.root, args.out_json, image_set=args.image_set, classes=args.classes
            )
    except ImportFailed as exc:
        print(f"detlab-import: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

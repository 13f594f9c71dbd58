"""KITTI and Pascal VOC conversion into COCO JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from backend.datasets.importers import ImportFailed, kitti_to_coco, main, voc_to_coco

CAR = "Car 0.00 0 -1.58 10.50 20.25 60.75 70.00 1.50 1.60 3.90 1.00 1.50 20.00 -1.50"
PEDESTRIAN = "Pedestrian 0.00 1 0.20 5.00 6.00 15.00 40.00 1.70 0.60 0.80 2.00 1.50 10.00 0.10"
DONTCARE = "DontCare -1 -1 -10 0.00 0.00 30.00 10.00 -1 -1 -1 -1000 -1000 -1000 -10"
# a detection result file has a 16th field, the score
CYCLIST_SCORED = "Cyclist 0.10 2 1.00 1.00 2.00 3.50 4.50 1.7 0.5 1.8 3.0 1.6 12.0 0.3 0.87"


def _image(path: Path, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 90, 90)).save(path)


@pytest.fixture
def kitti_root(tmp_path: Path) -> Path:
    root = tmp_path / "kitti"
    (root / "label_2").mkdir(parents=True)
    _image(root / "image_2" / "000000.png", (120, 80))
    _image(root / "image_2" / "000001.png", (100, 50))
    (root / "label_2" / "000000.txt").write_text(f"{CAR}\n{PEDESTRIAN}\n{DONTCARE}\n\n")
    (root / "label_2" / "000001.txt").write_text(f"{CYCLIST_SCORED}\n{DONTCARE}\n{CAR}\n")
    return root


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_kitti_converts_boxes_exactly_and_skips_dontcare(kitti_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "train.json"
    summary = kitti_to_coco(kitti_root, out)
    assert summary["images"] == 2
    assert summary["annotations"] == 4
    assert summary["categories"] == ["Car", "Cyclist", "Pedestrian"]
    assert summary["skipped"] == {"DontCare": 2}
    data = _load(out)
    names = {cat["id"]: cat["name"] for cat in data["categories"]}
    assert names == {1: "Car", 2: "Cyclist", 3: "Pedestrian"}
    first = [a for a in data["annotations"] if a["image_id"] == 1]
    assert [names[a["category_id"]] for a in first] == ["Car", "Pedestrian"]
    car = first[0]
    assert car["bbox"] == [10.5, 20.25, 50.25, 49.75]
    assert car["area"] == 50.25 * 49.75
    assert car["iscrowd"] == 0
    assert first[1]["bbox"] == [5.0, 6.0, 10.0, 34.0]
    cyclist = next(a for a in data["annotations"] if names[a["category_id"]] == "Cyclist")
    assert cyclist["bbox"] == [1.0, 2.0, 2.5, 2.5]
    assert len({a["id"] for a in data["annotations"]}) == 4
    # boxes only: a mask model refuses the dataset rather than train on made-up masks
    assert not any("segmentation" in a for a in data["annotations"])
    coco = COCO(str(out))
    assert len(coco.getAnnIds(catIds=[1])) == 2


def test_kitti_reads_image_sizes_from_the_files(kitti_root: Path, tmp_path: Path) -> None:
    kitti_to_coco(kitti_root, tmp_path / "out.json")
    images = _load(tmp_path / "out.json")["images"]
    assert [(i["file_name"], i["width"], i["height"]) for i in images] == [
        ("000000.png", 120, 80),
        ("000001.png", 100, 50),
    ]


def test_kitti_class_filter_keeps_given_order_and_counts_the_rest(
    kitti_root: Path, tmp_path: Path
) -> None:
    summary = kitti_to_coco(kitti_root, tmp_path / "out.json", classes=["Pedestrian", "Car"])
    assert summary["categories"] == ["Pedestrian", "Car"]
    assert summary["annotations"] == 3
    assert summary["skipped"] == {"Cyclist": 1, "DontCare": 2}
    data = _load(tmp_path / "out.json")
    assert [c["name"] for c in data["categories"]] == ["Pedestrian", "Car"]
    assert sorted(a["category_id"] for a in data["annotations"]) == [1, 2, 2]


def test_kitti_refuses_dontcare_as_a_class(kitti_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ImportFailed, match="DontCare"):
        kitti_to_coco(kitti_root, tmp_path / "out.json", classes=["Car", "DontCare"])


def test_kitti_short_line_error_names_file_and_line(kitti_root: Path, tmp_path: Path) -> None:
    (kitti_root / "label_2" / "000001.txt").write_text(f"{CAR}\nCar 0 0 1.0 2.0 3.0\n")
    with pytest.raises(ImportFailed) as failure:
        kitti_to_coco(kitti_root, tmp_path / "out.json")
    message = str(failure.value)
    assert "000001.txt:2" in message
    assert "6 fields" in message and "expected 15" in message
    assert not (tmp_path / "out.json").exists()


def test_kitti_non_numeric_field_error_names_the_field(kitti_root: Path, tmp_path: Path) -> None:
    (kitti_root / "label_2" / "000000.txt").write_text(CAR.replace("60.75", "sixty"))
    with pytest.raises(ImportFailed, match=r"000000\.txt:1: field 'right' is 'sixty'"):
        kitti_to_coco(kitti_root, tmp_path / "out.json")


def test_kitti_inverted_box_and_missing_image_are_errors(kitti_root: Path, tmp_path: Path) -> None:
    (kitti_root / "label_2" / "000000.txt").write_text(CAR.replace("60.75", "5.00"))
    with pytest.raises(ImportFailed, match="expected right >= left"):
        kitti_to_coco(kitti_root, tmp_path / "out.json")
    (kitti_root / "label_2" / "000000.txt").write_text(CAR)
    (kitti_root / "image_2" / "000001.png").unlink()
    with pytest.raises(ImportFailed, match=r"000001\.txt: image .*000001\.png not found"):
        kitti_to_coco(kitti_root, tmp_path / "out.json")


VOC_TEMPLATE = """<annotation>
  <folder>VOC2007</folder>
  <filename>{name}.jpg</filename>
  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>
  {objects}
</annotation>
"""
VOC_OBJECT = """<object>
    <name>{label}</name><pose>Left</pose><truncated>0</truncated>
    <difficult>{difficult}</difficult>
    <bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax>
    </bndbox>
  </object>"""


def _voc_file(root: Path, name: str, size: tuple[int, int], objects: list[tuple]) -> None:
    body = "\n  ".join(
        VOC_OBJECT.format(label=label, box=box, difficult=difficult)
        for label, box, difficult in objects
    )
    path = root / "Annotations" / f"{name}.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(VOC_TEMPLATE.format(name=name, width=size[0], height=size[1], objects=body))


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    root = tmp_path / "VOC2007"
    _voc_file(root, "000005", (500, 375), [("dog", (1, 1, 10, 20), 0), ("cat", (5, 6, 7, 8), 1)])
    _voc_file(root, "000007", (300, 200), [("dog", (100, 50, 199, 149), 0)])
    _voc_file(root, "000009", (640, 480), [("person", (11, 12, 13, 14), 0)])
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("000005\n000009\n\n")
    return root


def test_voc_converts_one_based_inclusive_boxes_exactly(voc_root: Path, tmp_path: Path) -> None:
    summary = voc_to_coco(voc_root, tmp_path / "voc.json")
    assert summary["images"] == 3 and summary["annotations"] == 4
    assert summary["categories"] == ["cat", "dog", "person"]
    data = _load(tmp_path / "voc.json")
    names = {cat["id"]: cat["name"] for cat in data["categories"]}
    by_image = {img["id"]: img for img in data["images"]}
    assert [(i["file_name"], i["width"], i["height"]) for i in data["images"]] == [
        ("000005.jpg", 500, 375),
        ("000007.jpg", 300, 200),
        ("000009.jpg", 640, 480),
    ]
    boxes = {
        (by_image[a["image_id"]]["file_name"], names[a["category_id"]]): a["bbox"]
        for a in data["annotations"]
    }
    assert boxes[("000005.jpg", "dog")] == [0.0, 0.0, 10.0, 20.0]
    assert boxes[("000005.jpg", "cat")] == [4.0, 5.0, 3.0, 3.0]
    assert boxes[("000007.jpg", "dog")] == [99.0, 49.0, 100.0, 100.0]
    areas = {a["id"]: a["area"] for a in data["annotations"]}
    assert sorted(areas.values()) == [9.0, 9.0, 200.0, 10000.0]
    assert not any("segmentation" in a for a in data["annotations"])  # boxes only


def test_voc_difficult_objects_become_ignored_crowd_boxes(voc_root: Path, tmp_path: Path) -> None:
    summary = voc_to_coco(voc_root, tmp_path / "voc.json")
    assert summary["difficult"] == 1
    anns = _load(tmp_path / "voc.json")["annotations"]
    flags = {(a["image_id"], a["category_id"]): (a["iscrowd"], a["ignore"]) for a in anns}
    assert flags[(1, 1)] == (1, 1)  # the difficult cat
    assert flags[(1, 2)] == (0, 0)


def test_coco_eval_neither_rewards_nor_penalises_difficult_objects(
    voc_root: Path, tmp_path: Path
) -> None:
    voc_to_coco(voc_root, tmp_path / "voc.json", image_set="train")
    gt = COCO(str(tmp_path / "voc.json"))
    anns = gt.loadAnns(gt.getAnnIds())
    # perfect detections for the ordinary objects, none for the difficult one
    detections = [
        {**{key: a[key] for key in ("image_id", "category_id", "bbox")}, "score": 0.9}
        for a in anns
        if not a["iscrowd"]
    ]
    evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
    cat, dog = gt.getCatIds(catNms=["cat"])[0], gt.getCatIds(catNms=["dog"])[0]
    evaluator.params.catIds = sorted([cat, dog])
    evaluator.evaluate()
    evaluator.accumulate()
    recall = evaluator.eval["recall"][0, :, 0, -1]  # IoU 0.5, each class, all areas, 100 dets
    by_class = dict(zip(evaluator.params.catIds, recall, strict=True))
    # the only cat is difficult: there is no recall to measure (-1), rather than 0
    assert by_class == {cat: -1.0, dog: 1.0}


def test_voc_image_set_selects_ids(voc_root: Path, tmp_path: Path) -> None:
    summary = voc_to_coco(voc_root, tmp_path / "voc.json", image_set="train")
    assert summary["images"] == 2 and summary["annotations"] == 3
    data = _load(tmp_path / "voc.json")
    assert [img["file_name"] for img in data["images"]] == ["000005.jpg", "000009.jpg"]
    with pytest.raises(ImportFailed, match=r"ImageSets/Main/val\.txt not found"):
        voc_to_coco(voc_root, tmp_path / "voc.json", image_set="val")


def test_voc_classes_filter(voc_root: Path, tmp_path: Path) -> None:
    summary = voc_to_coco(voc_root, tmp_path / "voc.json", classes=["person", "dog"])
    assert summary["categories"] == ["person", "dog"]
    assert summary["skipped"] == {"cat": 1}
    assert summary["annotations"] == 3


def test_voc_malformed_xml_error_names_file_and_position(voc_root: Path, tmp_path: Path) -> None:
    (voc_root / "Annotations" / "000007.xml").write_text("<annotation><size></annotation>")
    with pytest.raises(ImportFailed, match=r"000007\.xml: malformed XML at line 1, column"):
        voc_to_coco(voc_root, tmp_path / "voc.json")


def test_voc_missing_or_bad_fields_are_named(voc_root: Path, tmp_path: Path) -> None:
    path = voc_root / "Annotations" / "000009.xml"
    path.write_text(path.read_text().replace("<xmax>13</xmax>", "<xmax>abc</xmax>"))
    with pytest.raises(ImportFailed, match=r"000009\.xml: object 1: <bndbox/xmax> is 'abc'"):
        voc_to_coco(voc_root, tmp_path / "voc.json")
    path.write_text(path.read_text().replace("<height>480</height>", ""))
    with pytest.raises(ImportFailed, match=r"000009\.xml: missing or empty <size/height>"):
        voc_to_coco(voc_root, tmp_path / "voc.json")


def test_voc_zero_size_falls_back_to_the_image_file(voc_root: Path, tmp_path: Path) -> None:
    _voc_file(voc_root, "000007", (0, 0), [("dog", (1, 1, 5, 5), 0)])
    with pytest.raises(ImportFailed, match="expected positive <size>"):
        voc_to_coco(voc_root, tmp_path / "voc.json")
    _image(voc_root / "JPEGImages" / "000007.jpg", (64, 48))
    voc_to_coco(voc_root, tmp_path / "voc.json")
    image = _load(tmp_path / "voc.json")["images"][1]
    assert (image["file_name"], image["width"], image["height"]) == ("000007.jpg", 64, 48)


def test_cli_converts_both_formats(
    kitti_root: Path, voc_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kitti_out, voc_out = tmp_path / "k" / "kitti.json", tmp_path / "v" / "voc.json"
    assert main(["kitti", str(kitti_root), str(kitti_out), "--classes", "Car,Cyclist"]) == 0
    assert [c["name"] for c in _load(kitti_out)["categories"]] == ["Car", "Cyclist"]
    assert json.loads(capsys.readouterr().out)["annotations"] == 3
    assert main(["voc", str(voc_root), str(voc_out), "--image-set", "train"]) == 0
    assert len(_load(voc_out)["images"]) == 2
    assert json.loads(capsys.readouterr().out)["images"] == 2


def test_cli_reports_import_errors_on_stderr(
    voc_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (voc_root / "Annotations" / "000005.xml").write_text("not xml at all")
    assert main(["voc", str(voc_root), str(tmp_path / "voc.json")]) == 1
    err = capsys.readouterr().err
    assert "detlab-import: error:" in err and "000005.xml" in err
    assert not (tmp_path / "voc.json").exists()

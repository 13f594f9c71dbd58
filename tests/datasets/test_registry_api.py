"""Dataset registration over the API: valid datasets, every refused input, image serving."""

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from backend.datasets.service import masks_missing


@pytest.fixture
def copy_of_shapes(shapes, data_root, tmp_path_factory):
    """A private copy of the shapes dataset that a test may break."""
    root = Path(tmp_path_factory.mktemp("broken", numbered=True))
    target = data_root / f"copy_{root.name}"
    shutil.copytree(shapes.root, target)
    return target


def _payload(root: Path, name: str = "copy") -> dict:
    return {
        "name": name,
        "train_ann": str(root / "annotations/train.json"),
        "val_ann": str(root / "annotations/val.json"),
        "train_images": str(root / "train"),
        "val_images": str(root / "val"),
    }


def _problems(response) -> str:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    return (
        detail["message"]
        + " | "
        + " | ".join(
            f"{p.get('split', '')} {p['where']}: {p['problem']}" for p in detail.get("problems", [])
        )
    )


def test_register_shapes_with_statistics(client, shapes, shapes_payload):
    before = client.get("/datasets").json()["total"]  # other modules may have committed some
    response = client.post("/datasets", json=shapes_payload)
    assert response.status_code == 201, response.text
    dataset = response.json()
    train = json.loads(shapes.train_ann.read_text())
    stats = dataset["stats"]
    assert stats["train"]["images"] == len(train["images"])
    assert stats["train"]["boxes"] == len(train["annotations"])
    assert sum(stats["train"]["per_class"].values()) == len(train["annotations"])
    assert stats["train"]["small"] + stats["train"]["medium"] + stats["train"]["large"] == len(
        train["annotations"]
    )
    assert [c["name"] for c in stats["categories"]] == [c["name"] for c in train["categories"]]
    assert stats["train"]["masks"] == stats["train"]["boxes"]  # a polygon on every shape
    assert stats["val"]["masks"] == stats["val"]["boxes"] > 0
    assert masks_missing(stats) is None

    listed = client.get("/datasets").json()
    assert listed["total"] == before + 1 and listed["items"][0]["id"] == dataset["id"]
    assert client.get(f"/datasets/{dataset['id']}").json()["name"] == "shapes"
    assert client.post("/datasets", json=shapes_payload).status_code == 409


def test_image_is_served_and_confined(client, shapes_payload, shapes):
    dataset_id = client.post("/datasets", json=shapes_payload).json()["id"]
    val = json.loads(shapes.val_ann.read_text())
    image = val["images"][0]
    response = client.get(f"/datasets/{dataset_id}/images/{image['id']}")
    assert response.status_code == 200
    assert response.content == (shapes.val_images / image["file_name"]).read_bytes()
    assert client.get(f"/datasets/{dataset_id}/images/999999").status_code == 404
    assert client.get(f"/datasets/{dataset_id}/images/{image['id']}?split=test").status_code == 422


def _mutate(root: Path, split: str, change) -> None:
    path = root / "annotations" / f"{split}.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_traversal_by_file_name_and_symlink_is_refused(client, copy_of_shapes, tmp_path):
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(secret)
    os.symlink(secret, copy_of_shapes / "val" / "link.png")

    def point_outside(data):
        data["images"][0]["file_name"] = "../../../" + str(secret)
        data["images"][1]["file_name"] = "link.png"

    # registration checks file presence, so register first, then break the names
    response = client.post("/datasets", json=_payload(copy_of_shapes))
    assert response.status_code == 201, response.text
    dataset_id = response.json()["id"]
    _mutate(copy_of_shapes, "val", point_outside)
    data = json.loads((copy_of_shapes / "annotations/val.json").read_text())
    for image in data["images"][:2]:
        response = client.get(f"/datasets/{dataset_id}/images/{image['id']}")
        assert response.status_code == 404
        assert response.content != secret.read_bytes()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.pop("categories"), "missing or not a list: categories"),
        (lambda d: d["images"].append(dict(d["images"][0])), "duplicate images ids"),
        (lambda d: d["annotations"].append(dict(d["annotations"][0])), "duplicate annotations"),
        (lambda d: d["annotations"][0].update(image_id=424242), "unknown images"),
        (lambda d: d["annotations"][0].update(category_id=99), "unknown categories"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 0, 5]), "non-positive width"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, float("nan"), 5]), "non-finite"),
        (lambda d: d["annotations"][0].update(bbox=[500, 500, 40, 40]), "outside its"),
        (lambda d: d["images"][0].update(file_name="nope.png"), "1 image files missing"),
        (
            lambda d: d["categories"][1].update(name=d["categories"][0]["name"]),
            "categories share a name: 'square' (ids 1, 2)",
        ),
        (
            lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4, 5, 6, 7]]),
            "1 bad segmentations: annotation 1: polygon 0 has 7 numbers; expected an even count",
        ),
        (
            lambda d: d["annotations"][0]["segmentation"].append([1.0, 2.0, 3.0, 4.0]),
            "annotation 1: polygon 1 has 4 numbers; expected an even count of at least 6",
        ),
        (
            lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, float("inf"), 5, 6]]),
            "annotation 1: polygon 0 has a non-finite coordinate",
        ),
        (
            lambda d: d["annotations"][0].update(segmentation=[1, 2, 3, 4, 5, 6]),
            "annotation 1: polygon 0 is not a flat list of numbers",
        ),
        (
            lambda d: d["annotations"][0].update(segmentation="the dog"),
            "annotation 1: segmentation is of type str",
        ),
        (
            lambda d: d["annotations"][0].update(segmentation={"size": [64, 64], "counts": "0"}),
            "annotation 1: RLE size [64, 64] is not its image's [height, width], [128, 128]",
        ),
        (
            lambda d: d["annotations"][0].update(segmentation={"size": [128, 128], "counts": 5}),
            "annotation 1: RLE counts is of type int",
        ),
        (
            lambda d: d["annotations"][0].update(segmentation={"size": [128, 128], "counts": [9]}),
            "annotation 1: RLE counts add up to 9 pixels; expected height x width = 16384",
        ),
    ],
    ids=[
        "no-categories",
        "dup-image",
        "dup-ann",
        "unknown-image",
        "unknown-cat",
        "zero-width",
        "nan-box",
        "far-outside",
        "missing-file",
        "same-class-name",
        "odd-polygon",
        "short-polygon",
        "inf-polygon",
        "unnested-polygon",
        "string-segmentation",
        "rle-wrong-size",
        "rle-int-counts",
        "rle-short-counts",
    ],
)
def test_bad_annotations_get_a_precise_422(client, copy_of_shapes, change, expected):
    _mutate(copy_of_shapes, "train", change)
    message = _problems(client.post("/datasets", json=_payload(copy_of_shapes)))
    assert expected in message
    assert "train.json" in message or "/train" in message


def test_a_bad_segmentation_is_refused_saying_what_is_accepted(client, copy_of_shapes):
    def break_two(data):
        data["annotations"][0]["segmentation"] = [[1, 2, 3]]
        data["annotations"][4]["segmentation"] = {"counts": "0"}

    _mutate(copy_of_shapes, "val", break_two)
    message = _problems(client.post("/datasets", json=_payload(copy_of_shapes)))
    assert "val.json: 2 bad segmentations: annotation 1: polygon 0 has 3 numbers" in message
    assert "annotation 5: RLE size None is not [height, width] integers" in message
    assert "a segmentation is COCO polygons" in message and "or RLE" in message


def _rle(polygons: list[list[float]], height: int, width: int) -> dict:
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def test_masks_are_counted_on_non_crowd_boxes(client, copy_of_shapes):
    """A box without a segmentation (absent, null or []) is box-only; RLE counts as a mask."""

    def mix(data):
        anns = data["annotations"]
        del anns[0]["segmentation"]
        anns[1]["segmentation"] = []
        anns[2]["segmentation"] = None
        anns[3]["segmentation"] = _rle(anns[3]["segmentation"], 128, 128)
        # a crowd region in uncompressed RLE: neither a box nor a mask in the stats
        anns[4].update(iscrowd=1, segmentation={"size": [128, 128], "counts": [50, 9, 16325]})

    _mutate(copy_of_shapes, "train", mix)
    total = len(json.loads((copy_of_shapes / "annotations/train.json").read_text())["annotations"])
    response = client.post("/datasets", json=_payload(copy_of_shapes))
    assert response.status_code == 201, response.text
    stats = response.json()["stats"]
    assert stats["train"]["boxes"] == total - 1 and stats["train"]["crowd_boxes"] == 1
    assert stats["train"]["masks"] == total - 4
    assert stats["val"]["masks"] == stats["val"]["boxes"]
    assert masks_missing(stats) == f"train: 3 of {total - 1} boxes have no segmentation"


def test_a_box_only_dataset_has_no_masks(client, copy_of_shapes):
    def drop_segmentations(data):
        for annotation in data["annotations"]:
            del annotation["segmentation"]

    for split in ("train", "val"):
        _mutate(copy_of_shapes, split, drop_segmentations)
    response = client.post("/datasets", json=_payload(copy_of_shapes))
    assert response.status_code == 201, response.text
    stats = response.json()["stats"]
    train, val = stats["train"], stats["val"]
    assert train["masks"] == val["masks"] == 0 and train["boxes"] > 0 and val["boxes"] > 0
    assert masks_missing(stats) == (
        f"train: none of its {train['boxes']} boxes has a segmentation; "
        f"val: none of its {val['boxes']} boxes has a segmentation"
    )


def test_not_json_and_unreadable_files(client, copy_of_shapes):
    (copy_of_shapes / "annotations/train.json").write_text("{not json")
    assert "not valid JSON" in _problems(client.post("/datasets", json=_payload(copy_of_shapes)))
    (copy_of_shapes / "annotations/train.json").unlink()
    assert "file not found" in _problems(client.post("/datasets", json=_payload(copy_of_shapes)))


def test_many_missing_images_are_counted(client, copy_of_shapes):
    for png in sorted((copy_of_shapes / "val").glob("*.png"))[:7]:
        png.unlink()
    message = _problems(client.post("/datasets", json=_payload(copy_of_shapes)))
    assert "7 image files missing" in message


def test_paths_outside_the_allowed_roots(client, shapes_payload, tmp_path, data_root):
    outside = dict(shapes_payload, train_ann=str(tmp_path / "train.json"))
    message = _problems(client.post("/datasets", json=outside))
    assert "outside the allowed data roots" in message and str(data_root) in message
    sneaky = dict(shapes_payload, val_ann=str(data_root / ".." / ".." / "etc" / "passwd"))
    assert "outside the allowed data roots" in _problems(client.post("/datasets", json=sneaky))
    link = data_root / "escape"
    link.symlink_to(tmp_path)
    via_link = dict(shapes_payload, train_images=str(link))
    assert "outside the allowed data roots" in _problems(client.post("/datasets", json=via_link))


def test_kitti_and_voc_imports_register(client, data_root):
    from backend.datasets.importers import kitti_to_coco, voc_to_coco

    kitti = data_root / "kitti"
    (kitti / "image_2").mkdir(parents=True)
    (kitti / "label_2").mkdir()
    for index in range(2):
        Image.new("RGB", (200, 100)).save(kitti / "image_2" / f"00000{index}.png")
        (kitti / "label_2" / f"00000{index}.txt").write_text(
            "Car 0.0 0 -1.5 10.0 20.0 60.0 70.0 1.5 1.6 3.9 1.0 1.5 10.0 -1.5\n"
            "DontCare -1 -1 -10 100.0 10.0 150.0 40.0 -1 -1 -1 -1000 -1000 -1000 -10\n"
            "Pedestrian 0.0 0 0.2 120.0 30.0 140.0 90.0 1.7 0.6 0.8 2.0 1.6 9.0 0.1\n"
        )
    kitti_to_coco(kitti, kitti / "train.json")
    kitti_to_coco(kitti, kitti / "val.json")
    response = client.post(
        "/datasets",
        json={
            "name": "kitti",
            "train_ann": str(kitti / "train.json"),
            "val_ann": str(kitti / "val.json"),
            "train_images": str(kitti / "image_2"),
            "val_images": str(kitti / "image_2"),
        },
    )
    assert response.status_code == 201, response.text
    assert response.json()["stats"]["train"]["per_class"] == {"Car": 2, "Pedestrian": 2}
    assert response.json()["stats"]["train"]["masks"] == 0  # imports are box-only

    voc = data_root / "voc"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    Image.new("RGB", (120, 80)).save(voc / "JPEGImages" / "a.jpg")
    (voc / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>120</width><height>80</height>"
        "<depth>3</depth></size><object><name>dog</name><difficult>0</difficult><bndbox>"
        "<xmin>11</xmin><ymin>21</ymin><xmax>50</xmax><ymax>60</ymax></bndbox></object>"
        "</annotation>"
    )
    voc_to_coco(voc, voc / "all.json")
    response = client.post(
        "/datasets",
        json={
            "name": "voc",
            "train_ann": str(voc / "all.json"),
            "val_ann": str(voc / "all.json"),
            "train_images": str(voc / "JPEGImages"),
            "val_images": str(voc / "JPEGImages"),
        },
    )
    assert response.status_code == 201, response.text
    assert response.json()["stats"]["val"]["per_class"] == {"dog": 1}

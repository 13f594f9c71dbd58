"""Overlays with masks=true: a mask model's predicted masks (mmdet's segm file beside the bbox
file) and the dataset's ground-truth polygons, filled in their boxes' colours, through the API.

The scene is made by the test: one val image of the shapes dataset gets two annotations of its
own (a square and a circle, side by side, with polygon segmentations), and the job predicts
both exactly, each with a disc mask written as an RLE.
"""

import io
import json
import shutil
import tempfile
from pathlib import Path

import factories
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from backend.analysis import BOX_COLOURS
from backend.analysis.overlay import decode_mask

IMAGE_ID = 6
SQUARE, CIRCLE = 1, 3  # category ids of the shapes dataset
BOXES = {SQUARE: [8.0, 44.0, 48.0, 48.0], CIRCLE: [72.0, 44.0, 48.0, 48.0]}
DISC_RADIUS = 16
# pixels this far from a mask's edge are inside it whatever the outline's width
INTERIOR = 4


def polygon(box: list[float]) -> list[list[float]]:
    """A rectangle 6 px inside the box, as COCO polygons."""
    x, y, w, h = box
    return [[x + 6, y + 6, x + w - 6, y + 6, x + w - 6, y + h - 6, x + 6, y + h - 6]]


def disc(box: list[float], size: tuple[int, int]) -> np.ndarray:
    """A bool HxW disc centred in the box."""
    x, y, w, h = box
    rows, cols = np.mgrid[: size[0], : size[1]]
    return (cols + 0.5 - (x + w / 2)) ** 2 + (rows + 0.5 - (y + h / 2)) ** 2 <= DISC_RADIUS**2


def polygon_mask(box: list[float], size: tuple[int, int]) -> np.ndarray:
    """polygon(box) drawn as pycocotools draws GT polygons."""
    rles = mask_utils.frPyObjects(polygon(box), *size)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(encoded["size"]), "counts": encoded["counts"].decode()}


@pytest.fixture
def val(shapes) -> dict:
    """The shapes val annotations, image IMAGE_ID's replaced by the test's square and circle,
    every annotation with a polygon segmentation."""
    val = json.loads(Path(shapes.val_ann).read_text())
    annotations = [a for a in val["annotations"] if a["image_id"] != IMAGE_ID]
    for i, (category, box) in enumerate(BOXES.items()):
        annotations.append(
            {
                "id": 1000 + i,
                "image_id": IMAGE_ID,
                "category_id": category,
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": 0,
            }
        )
    for annotation in annotations:
        annotation["segmentation"] = polygon(annotation["bbox"])
    return {**val, "annotations": annotations}


def register(client, shapes, val: dict) -> int:
    """A dataset of the shapes images with these val annotations, registered through the API."""
    folder = Path(tempfile.mkdtemp(prefix="mask-overlays-", dir=Path(shapes.root)))
    shutil.copyfile(shapes.train_ann, folder / "train.json")
    (folder / "val.json").write_text(json.dumps(val))
    body = {
        "name": folder.name,
        "train_ann": str(folder / "train.json"),
        "val_ann": str(folder / "val.json"),
        "train_images": str(shapes.train_images),
        "val_images": str(shapes.val_images),
    }
    response = client.post("/datasets", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def predictions(val: dict) -> list[dict]:
    """Every annotation predicted exactly; the test image's two in the middle of the file, so
    that pairing masks by position is tested past the first entries."""
    results = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 0.9,
        }
        for a in val["annotations"]
    ]
    mine = [r for r in results if r["image_id"] == IMAGE_ID]
    others = [r for r in results if r["image_id"] != IMAGE_ID]
    return others[:10] + mine + others[10:]


def sizes(val: dict) -> dict[int, tuple[int, int]]:
    return {image["id"]: (image["height"], image["width"]) for image in val["images"]}


def mask_job(db, tmp_path, dataset_id: int, val: dict, *, segm: list | None) -> int:
    """A finished job with these predictions, and `segm` as its segm file (None: none)."""
    folder = tmp_path / f"job-{dataset_id}-{segm is not None}"
    folder.mkdir()
    bbox_path = folder / "predictions.bbox.json"
    bbox_path.write_text(json.dumps(predictions(val)))
    if segm is not None:
        (folder / "predictions.segm.json").write_text(json.dumps(segm))
    return factories.finished_job(db, dataset_id=dataset_id, predictions_path=bbox_path).id


def disc_masks(val: dict) -> list[dict]:
    """The segm file of predictions(val): each detection with a disc in its box."""
    size = sizes(val)
    return [
        {**r, "segmentation": rle(disc(r["bbox"], size[r["image_id"]]))} for r in predictions(val)
    ]


def overlay(client, job_id: int, **params) -> np.ndarray:
    response = client.get(
        f"/jobs/{job_id}/images/{IMAGE_ID}/overlay.png",
        params={"legend": "none", "score_thr": 0.5, **params},
    )
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")).astype(int)


def picture(shapes, val: dict) -> np.ndarray:
    """The test image as it is on disk."""
    name = next(image["file_name"] for image in val["images"] if image["id"] == IMAGE_ID)
    return np.asarray(Image.open(Path(shapes.val_images) / name).convert("RGB")).astype(int)


def eroded(mask: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        padded = np.pad(mask, 1)
        mask = mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask


def assert_filled(on: np.ndarray, off: np.ndarray, base: np.ndarray, mask, outcome: str):
    """Inside the mask, away from its edge and from what the box overlay draws (boxes, labels),
    each pixel is the picture's tinted part way toward the outcome's colour."""
    drawn = (off != base).any(axis=2)
    interior = eroded(mask, INTERIOR) & ~drawn
    assert interior.sum() > 200
    colour = np.array(BOX_COLOURS[outcome])
    before = np.abs(base[interior] - colour).sum(axis=1)
    after = np.abs(on[interior] - colour).sum(axis=1)
    moved = before > 30  # pixels already near the colour cannot move much toward it
    assert moved.sum() > 100
    assert (after[moved] < before[moved]).all()
    # translucent: the picture shows through (a third or so of the way to the colour)
    share = 1 - after[moved].sum() / before[moved].sum()
    assert 0.25 < share < 0.5


def test_masks_are_filled_exactly_inside_the_drawn_predictions_masks(
    client, db, shapes, val, tmp_path
):
    dataset_id = register(client, shapes, val)
    job_id = mask_job(db, tmp_path, dataset_id, val, segm=disc_masks(val))
    base = picture(shapes, val)
    size = base.shape[:2]
    discs = {category: disc(box, size) for category, box in BOXES.items()}

    off = overlay(client, job_id, show="tp")
    on = overlay(client, job_id, show="tp", masks="true")
    changed = (on != off).any(axis=2)
    assert changed.any()
    assert not (changed & ~(discs[SQUARE] | discs[CIRCLE])).any()  # nothing outside the masks
    for mask in discs.values():
        assert_filled(on, off, base, mask, "tp")
    assert (overlay(client, job_id, show="tp", masks="false") == off).all()  # the default

    # the ground truth's polygons, in the GT colour, when ground truth is drawn
    polygons = {category: polygon_mask(box, size) for category, box in BOXES.items()}
    gt_off = overlay(client, job_id, show="gt")
    gt_on = overlay(client, job_id, show="gt", masks="true")
    gt_changed = (gt_on != gt_off).any(axis=2)
    assert not (gt_changed & ~(polygons[SQUARE] | polygons[CIRCLE])).any()
    for mask in polygons.values():
        assert_filled(gt_on, gt_off, base, mask, "gt")


def test_a_class_filter_leaves_the_other_class_mask_undrawn(client, db, shapes, val, tmp_path):
    dataset_id = register(client, shapes, val)
    job_id = mask_job(db, tmp_path, dataset_id, val, segm=disc_masks(val))
    base = picture(shapes, val)
    size = base.shape[:2]
    square = disc(BOXES[SQUARE], size) | polygon_mask(BOXES[SQUARE], size)
    circle = disc(BOXES[CIRCLE], size) | polygon_mask(BOXES[CIRCLE], size)

    params = {"show": "gt,tp,errors", "class": "square"}
    off, on = overlay(client, job_id, **params), overlay(client, job_id, masks="true", **params)
    changed = (on != off).any(axis=2)
    assert changed[square].any()
    assert not (changed & ~square).any()
    assert not changed[circle].any()
    # the circle's box is not drawn either: its region is the bare picture in both
    assert (on[circle] == base[circle]).all()


def test_box_only_jobs_draw_the_same_png_with_masks(client, db, shapes, val, tmp_path):
    # a box-only model on a box-only dataset: nothing to fill, whatever is shown
    boxes_only = {**val, "annotations": [{**a} for a in val["annotations"]]}
    for annotation in boxes_only["annotations"]:
        annotation.pop("segmentation")
    job_id = mask_job(db, tmp_path, register(client, shapes, boxes_only), boxes_only, segm=None)
    for show in ("gt,tp,errors", "tp"):
        url = f"/jobs/{job_id}/images/{IMAGE_ID}/overlay.png"
        plain = client.get(url, params={"show": show})
        masked = client.get(url, params={"show": show, "masks": "true"})
        assert plain.status_code == masked.status_code == 200, masked.text
        assert masked.content == plain.content
    found = client.get(f"/jobs/{job_id}/images/{IMAGE_ID}/detections").json()
    assert [d["has_mask"] for d in found["detections"]] == [False, False]
    assert [g["has_mask"] for g in found["ground_truth"]] == [False, False]
    assert client.get(f"/jobs/{job_id}/evaluation").json()["has_masks"] is False

    # a box-only model on a dataset with polygons: only the ground truth has masks
    dataset_id = register(client, shapes, val)
    job_id = mask_job(db, tmp_path, dataset_id, val, segm=None)
    plain = overlay(client, job_id, show="tp,errors")
    assert (overlay(client, job_id, show="tp,errors", masks="true") == plain).all()
    found = client.get(f"/jobs/{job_id}/images/{IMAGE_ID}/detections").json()
    assert [d["has_mask"] for d in found["detections"]] == [False, False]
    assert [g["has_mask"] for g in found["ground_truth"]] == [True, True]


def test_detections_say_which_boxes_have_masks(client, db, shapes, val, tmp_path):
    dataset_id = register(client, shapes, val)
    segm = disc_masks(val)
    # mmdet writes a mask for every detection; one without is drawn as a box alone
    square = next(
        i for i, r in enumerate(segm) if r["image_id"] == IMAGE_ID and r["category_id"] == SQUARE
    )
    segm[square] = {k: v for k, v in segm[square].items() if k != "segmentation"}
    job_id = mask_job(db, tmp_path, dataset_id, val, segm=segm)
    assert client.get(f"/jobs/{job_id}/evaluation").json()["has_masks"] is True

    found = client.get(f"/jobs/{job_id}/images/{IMAGE_ID}/detections").json()
    flags = {d["category_id"]: d["has_mask"] for d in found["detections"]}
    assert flags == {SQUARE: False, CIRCLE: True}
    assert [g["has_mask"] for g in found["ground_truth"]] == [True, True]
    # with the overlay's filters, the flags of the boxes it draws
    filtered = client.get(
        f"/jobs/{job_id}/images/{IMAGE_ID}/detections", params={"class": "circle"}
    ).json()
    assert [(d["category"], d["has_mask"]) for d in filtered["detections"]] == [("circle", True)]

    base = picture(shapes, val)
    off = overlay(client, job_id, show="tp")
    on = overlay(client, job_id, show="tp", masks="true")
    changed = (on != off).any(axis=2)
    assert not changed[disc(BOXES[SQUARE], base.shape[:2])].any()
    assert changed[disc(BOXES[CIRCLE], base.shape[:2])].any()


def test_masks_are_scaled_with_the_picture(client, db, shapes, val, tmp_path):
    dataset_id = register(client, shapes, val)
    job_id = mask_job(db, tmp_path, dataset_id, val, segm=disc_masks(val))
    params = {"show": "tp", "min_width": 512}  # 4x, nearest neighbour
    off, on = overlay(client, job_id, **params), overlay(client, job_id, masks="true", **params)
    assert on.shape[:2] == (512, 512)
    small = disc(BOXES[CIRCLE], (128, 128))
    enlarged = small.repeat(4, axis=0).repeat(4, axis=1)
    changed = (on != off).any(axis=2)
    square = disc(BOXES[SQUARE], (128, 128)).repeat(4, axis=0).repeat(4, axis=1)
    assert not (changed & ~(enlarged | square)).any()
    assert changed[eroded(enlarged, 12)].mean() > 0.9


def test_a_segm_file_that_does_not_pair_with_the_boxes_is_refused(
    client, db, shapes, val, tmp_path
):
    dataset_id = register(client, shapes, val)
    job_id = mask_job(db, tmp_path, dataset_id, val, segm=disc_masks(val)[:-1])
    url = f"/jobs/{job_id}/images/{IMAGE_ID}/overlay.png"
    refused = client.get(url, params={"masks": "true"})
    assert refused.status_code == 422
    assert "same order" in refused.text
    assert client.get(url).status_code == 200  # boxes alone do not read the segm file


def test_decode_mask_reads_polygons_and_both_kinds_of_rle():
    box = [8.0, 44.0, 48.0, 48.0]
    drawn = polygon_mask(box, (128, 128))
    assert (decode_mask(polygon(box), 128, 128) == drawn).all()
    compressed = rle(drawn)
    assert (decode_mask(compressed, 128, 128) == drawn).all()
    # crowd regions come as uncompressed RLE: run lengths, column by column
    flat = drawn.flatten(order="F").astype(np.uint8)
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    runs = np.diff(np.r_[starts, len(flat)]).tolist()
    counts = runs if flat[0] == 0 else [0, *runs]
    assert (decode_mask({"size": [128, 128], "counts": counts}, 128, 128) == drawn).all()
    assert decode_mask(None, 128, 128) is None and decode_mask([], 128, 128) is None
    with pytest.raises(ValueError, match="polygons"):
        decode_mask("not a mask", 128, 128)

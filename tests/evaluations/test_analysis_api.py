"""Error-analysis endpoints over a job whose predictions the test writes from the ground truth."""

import io
import json

import factories
import numpy as np
import pytest
from PIL import Image

from backend.analysis import BOX_COLOURS


def _finished_job(db, dataset_id: int, predictions_path, name: str) -> int:
    """A succeeded fine-tune job with an evaluation pointing at a predictions file."""
    job = factories.finished_job(
        db, dataset_id=dataset_id, predictions_path=predictions_path, name=name
    )
    return job.id


@pytest.fixture
def val(shapes):
    return json.loads(shapes.val_ann.read_text())


def _perfect(val) -> list[dict]:
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 0.9,
        }
        for a in val["annotations"]
    ]


def _other_class(val, category_id: int) -> int:
    return next(c["id"] for c in val["categories"] if c["id"] != category_id)


def test_breakdown_worst_images_detections_and_overlay(
    client, db, dataset_id, val, shapes, tmp_path
):
    results = _perfect(val)
    wrong = results[0]
    wrong["category_id"] = _other_class(val, wrong["category_id"])  # a classification error
    x, y, w, h = results[1]["bbox"]
    results.append(
        {
            "image_id": results[1]["image_id"],
            "category_id": results[1]["category_id"],
            "bbox": [x, y, w, h],
            "score": 0.5,
        }
    )  # a duplicate
    lost = results.pop(2)  # a missed object
    path = tmp_path / "predictions.bbox.json"
    path.write_text(json.dumps(results))
    job_id = _finished_job(db, dataset_id, path, "hand-made")

    evaluation = client.post(f"/jobs/{job_id}/analysis").json()
    analysis = evaluation["analysis"]
    assert analysis["counts"]["classification"] == 1
    assert analysis["counts"]["duplicate"] == 1
    # the popped annotation and the misclassified one's ground truth are not found
    assert analysis["counts"]["missed"] == 2
    assert analysis["counts"]["tp"] == len(val["annotations"]) - 2
    assert analysis["dAP"]["classification"] > 0
    labels, matrix = analysis["confusion"]["labels"], analysis["confusion"]["matrix"]
    assert labels[-1] == "background" and len(matrix) == len(labels)
    names = {c["id"]: c["name"] for c in val["categories"]}
    truth = next(
        a
        for a in val["annotations"]
        if a["bbox"] == wrong["bbox"] and a["image_id"] == wrong["image_id"]
    )
    row, col = labels.index(names[truth["category_id"]]), labels.index(names[wrong["category_id"]])
    assert matrix[row][col] >= 1

    worst = client.get(f"/jobs/{job_id}/images", params={"sort": "worst", "limit": 3}).json()
    assert worst["total"] == len(val["images"])
    assert worst["items"][0]["badness"] >= worst["items"][-1]["badness"]
    flagged = client.get(
        f"/jobs/{job_id}/images",
        params={"error_type": "classification", "class": names[wrong["category_id"]]},
    ).json()
    assert [i["image_id"] for i in flagged["items"]] == [wrong["image_id"]]
    also_by_truth = client.get(
        f"/jobs/{job_id}/images",
        params={"error_type": "classification", "class": names[truth["category_id"]]},
    ).json()
    assert [i["image_id"] for i in also_by_truth["items"]] == [wrong["image_id"]]
    missed = client.get(f"/jobs/{job_id}/images", params={"error_type": "missed"}).json()
    assert lost["image_id"] in [i["image_id"] for i in missed["items"]]

    detail = client.get(f"/jobs/{job_id}/images/{wrong['image_id']}/detections").json()
    box = next(d for d in detail["detections"] if d["error_type"] == "classification")
    assert box["category"] == names[wrong["category_id"]]
    assert box["gt_category"] == names[truth["category_id"]] and box["iou"] == pytest.approx(1.0)

    response = client.get(
        f"/jobs/{job_id}/images/{wrong['image_id']}/overlay.png",
        params={"score_thr": 0.3, "show": "gt,tp,errors"},
    )
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    overlay = Image.open(io.BytesIO(response.content))
    image = next(i for i in val["images"] if i["id"] == wrong["image_id"])
    assert overlay.size[0] >= image["width"] and overlay.size[1] >= image["height"]
    small = client.get(
        f"/jobs/{job_id}/images/{wrong['image_id']}/overlay.png", params={"max_width": 64}
    )
    assert small.status_code == 200
    assert Image.open(io.BytesIO(small.content)).size[0] < overlay.size[0]
    # The shapes images are 128 px: the default legend goes in a strip below the picture;
    # "none" gives exactly the image's size; an unknown place is a 422 naming the accepted ones.
    assert overlay.size == (image["width"], overlay.size[1]) and overlay.size[1] > image["height"]
    bare = client.get(
        f"/jobs/{job_id}/images/{wrong['image_id']}/overlay.png", params={"legend": "none"}
    )
    assert Image.open(io.BytesIO(bare.content)).size == (image["width"], image["height"])
    refused = client.get(
        f"/jobs/{job_id}/images/{wrong['image_id']}/overlay.png", params={"legend": "left"}
    )
    assert refused.status_code == 422
    assert "legend: unknown value 'left'; accepted: auto, inside, below, none" in refused.text
    # min_width enlarges a small image (nearest neighbour) and draws the boxes at the new scale
    big = client.get(
        f"/jobs/{job_id}/images/{wrong['image_id']}/overlay.png",
        params={"min_width": 4 * image["width"], "legend": "none", "show": "classification"},
    )
    enlarged = np.asarray(Image.open(io.BytesIO(big.content)).convert("RGB"))
    assert enlarged.shape[:2] == (4 * image["height"], 4 * image["width"])
    x, y, w, h = (round(4 * v) for v in wrong["bbox"])
    edge = enlarged[y + h // 2, x : x + 2]
    assert {tuple(c) for c in edge} == {BOX_COLOURS["classification"]}
    with Image.open(shapes.val_images / image["file_name"]) as original:
        plain = np.asarray(original.convert("RGB"))
    # nearest neighbour: outside the one box and its label, each pixel is the original's 4x4
    assert (enlarged[::4, ::4] == plain).all(axis=2).mean() > 0.9
    capped = client.get(
        f"/jobs/{job_id}/images/{wrong['image_id']}/overlay.png", params={"min_width": 4096}
    )
    assert Image.open(io.BytesIO(capped.content)).size[0] == 8 * image["width"]
    crossed = client.get(
        f"/jobs/{job_id}/images/{wrong['image_id']}/overlay.png",
        params={"min_width": 512, "max_width": 256},
    )
    assert crossed.status_code == 422 and "min_width (512) must not exceed" in crossed.text
    refused = client.get(
        f"/jobs/{job_id}/images/{wrong['image_id']}/overlay.png", params={"show": "gt,boxes"}
    )
    assert refused.status_code == 422
    assert refused.json()["detail"]["message"].startswith("show: unknown value 'boxes'; accepted: ")

    download = client.get(f"/jobs/{job_id}/predictions")
    assert download.status_code == 200 and download.json() == results


def test_compare_lists_images_one_job_gets_wrong(client, db, dataset_id, val, tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_perfect(val)))
    results = _perfect(val)
    results[0]["category_id"] = _other_class(val, results[0]["category_id"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(results))
    job_a = _finished_job(db, dataset_id, good, "good")
    job_b = _finished_job(db, dataset_id, bad, "bad")
    for job_id in (job_a, job_b):
        client.post(f"/jobs/{job_id}/analysis")
    compared = client.get(f"/jobs/{job_a}/compare/{job_b}/images").json()
    assert compared["total"] == 1
    assert compared["items"][0]["image_id"] == results[0]["image_id"]
    assert compared["items"][0]["better"] == "a"


def test_bad_inputs_are_clear_4xx(client, db, dataset_id, val, tmp_path, shapes):
    unknown = tmp_path / "unknown.json"
    unknown.write_text(
        json.dumps([{"image_id": 987654, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.5}])
    )
    job_id = _finished_job(db, dataset_id, unknown, "unknown-image")
    response = client.post(f"/jobs/{job_id}/analysis")
    assert response.status_code == 422 and "987654" in response.text

    nan = tmp_path / "nan.json"
    first = val["images"][0]["id"]
    nan.write_text(
        f'[{{"image_id": {first}, "category_id": 1, "bbox": [1, 1, 5, 5], "score": NaN}}]'
    )
    job_id = _finished_job(db, dataset_id, nan, "nan")
    response = client.post(f"/jobs/{job_id}/analysis")
    assert response.status_code == 422 and "score" in response.text

    queued = factories.job(db, dataset_id=dataset_id)
    response = client.get(f"/jobs/{queued.id}/images/1/detections")
    assert response.status_code == 409 and "no predictions yet" in response.text
    assert client.get(f"/jobs/{queued.id}/evaluation").status_code == 404

    other = factories.dataset(db, shapes=shapes, name="other").id
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_perfect(val)))
    mine = _finished_job(db, dataset_id, good, "a")
    theirs = _finished_job(db, other, good, "b")
    response = client.get(f"/jobs/{mine}/compare/{theirs}/images")
    assert response.status_code == 422 and "different datasets" in response.text
    assert client.get(f"/jobs/{mine}/images", params={"error_type": "nope"}).status_code == 422


def _by_name(val) -> dict[str, int]:
    return {c["name"]: c["id"] for c in val["categories"]}


def _gt_box(val, image_id: int, category: int) -> list[float]:
    return next(
        a["bbox"]
        for a in val["annotations"]
        if a["image_id"] == image_id and a["category_id"] == category
    )


def _scored(image_id: int, category: int, bbox, score: float) -> dict:
    return {"image_id": image_id, "category_id": category, "bbox": list(bbox), "score": score}


def _analysed_job(client, db, dataset_id, tmp_path, results, name: str) -> int:
    path = tmp_path / f"{name}.bbox.json"
    path.write_text(json.dumps(results))
    job_id = _finished_job(db, dataset_id, path, name)
    assert client.post(f"/jobs/{job_id}/analysis").status_code == 200
    return job_id


def _pixel(png: bytes, x: float, y: float) -> tuple[int, ...]:
    return tuple(np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[int(y), int(x)])


def test_class_filter_decides_what_is_listed_counted_and_drawn(
    client, db, dataset_id, val, tmp_path
):
    # image 12 of the shapes val split: an ellipse, a square and a rectangle. A circle is
    # predicted on the square (a classification error that does not involve ellipses) and an
    # ellipse on empty background; everything else is predicted right.
    ids = _by_name(val)
    results = [r for r in _perfect(val) if not (r["image_id"] == 12 and r["category_id"] == 1)]
    square = _gt_box(val, 12, ids["square"])
    results.append(_scored(12, ids["circle"], square, 0.9))
    results.append(_scored(12, ids["ellipse"], [100, 100, 20, 20], 0.8))
    job_id = _analysed_job(client, db, dataset_id, tmp_path, results, "class-filter")

    page = client.get(f"/jobs/{job_id}/images", params={"class": "ellipse"}).json()
    assert [(i["image_id"], i["selected"]) for i in page["items"]] == [(12, 1)]
    assert page["selected_label"] == "errors involving ellipse"
    assert page["selected_score_thr"] == page["score_thr"] == 0.05
    # the classification error involves the square through its ground truth: counted there
    page = client.get(f"/jobs/{job_id}/images", params={"class": "square"}).json()
    assert [(i["image_id"], i["selected"]) for i in page["items"]] == [(12, 2)]  # + missed

    everything = client.get(f"/jobs/{job_id}/images/12/detections").json()
    assert ("circle", "square") in {
        (d["category"], d["gt_category"]) for d in everything["detections"]
    }
    drawn = {"show": "gt,tp,errors", "score_thr": 0.05, "class": "ellipse"}
    listed = client.get(f"/jobs/{job_id}/images/12/detections", params=drawn).json()
    assert sorted((d["category"], d["error_type"]) for d in listed["detections"]) == [
        ("ellipse", "background"),
        ("ellipse", "tp"),
    ]
    assert {g["category"] for g in listed["ground_truth"]} == {"ellipse"}
    for box in listed["detections"]:  # no other class's error
        assert "ellipse" in (box["category"], box["gt_category"])

    # the overlay draws that list: the circle on the square is there without the filter only
    unfiltered = {k: v for k, v in drawn.items() if k != "class"}
    plain = client.get(
        f"/jobs/{job_id}/images/12/overlay.png", params={**unfiltered, "legend": "none"}
    ).content
    filtered = client.get(
        f"/jobs/{job_id}/images/12/overlay.png", params={**drawn, "legend": "none"}
    ).content
    x, y, _, h = square
    assert _pixel(plain, x, y + h / 2) == BOX_COLOURS["classification"]
    assert _pixel(filtered, x, y + h / 2) not in set(BOX_COLOURS.values())
    assert _pixel(filtered, 100, 110) == BOX_COLOURS["background"]

    # a confusion cell: the images behind it add up to the matrix's count, and its box list
    # holds the cell's predictions only
    evaluation = client.get(f"/jobs/{job_id}/evaluation").json()
    labels = evaluation["analysis"]["confusion"]["labels"]
    matrix = evaluation["analysis"]["confusion"]["matrix"]
    cell = {"gt_class": "square", "predicted_class": "circle"}
    page = client.get(f"/jobs/{job_id}/images", params={**cell, "limit": 500}).json()
    assert page["selected_label"] == "square boxes predicted as circle"
    assert page["selected_score_thr"] == evaluation["analysis"]["confusion"]["score_thr"]
    assert 12 in [i["image_id"] for i in page["items"]]
    assert (
        sum(i["selected"] for i in page["items"])
        == (matrix[labels.index("square")][labels.index("circle")])
    )
    listed = client.get(
        f"/jobs/{job_id}/images/12/detections", params={**cell, "show": "gt,tp,errors"}
    ).json()
    assert [d["category"] for d in listed["detections"]] == ["circle"]
    assert {g["category"] for g in listed["ground_truth"]} == {"square"}
    missed = client.get(
        f"/jobs/{job_id}/images", params={"gt_class": "square", "predicted_class": "background"}
    ).json()
    assert missed["selected_label"] == "square boxes with no square prediction on them"
    assert 12 in [i["image_id"] for i in missed["items"]]

    for params in (
        {"gt_class": "square"},
        {"gt_class": "square", "predicted_class": "hexagon"},
        {**cell, "error_type": "classification"},
        {"class": "hexagon"},
    ):
        refused = client.get(f"/jobs/{job_id}/images", params=params)
        assert refused.status_code == 422, params


def test_worst_first_sorts_by_the_chosen_error_type(client, db, dataset_id, val, tmp_path):
    ids = _by_name(val)
    results = _perfect(val)
    # image 6: one duplicate and four confident false positives (the worst image overall)
    ellipse6 = _gt_box(val, 6, ids["ellipse"])
    results.append(_scored(6, ids["ellipse"], ellipse6, 0.5))
    for box in ([105, 105, 10, 10], [105, 60, 10, 10], [0, 60, 10, 10], [60, 110, 10, 10]):
        results.append(_scored(6, ids["circle"], box, 0.9))
    # image 8: four duplicates, one of them of a square
    results.append(_scored(8, ids["square"], [4, 79, 32, 32], 0.6))
    ellipse8 = _gt_box(val, 8, ids["ellipse"])
    results += [_scored(8, ids["ellipse"], ellipse8, 0.6)] * 3
    # image 10: two duplicates of a square, barely scored
    results += [_scored(10, ids["square"], [52, 106, 18, 18], 0.1)] * 2
    job_id = _analysed_job(client, db, dataset_id, tmp_path, results, "duplicates")

    def order(**params):
        page = client.get(f"/jobs/{job_id}/images", params=params).json()
        return [(i["image_id"], i["selected"]) for i in page["items"]]

    assert order(sort="worst")[0] == (6, None)  # no filter: by badness
    assert order(error_type="duplicate") == [(8, 4), (10, 2), (6, 1)]
    assert order(error_type="duplicate", sort="best") == [(6, 1), (10, 2), (8, 4)]
    # with a class, by that class's duplicates: image 10 has more square ones than image 8
    assert order(error_type="duplicate", **{"class": "square"}) == [(10, 2), (8, 1)]
    page = client.get(
        f"/jobs/{job_id}/images", params={"error_type": "duplicate", "class": "square"}
    ).json()
    assert page["selected_label"] == "duplicate errors involving square"

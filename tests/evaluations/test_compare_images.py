"""Comparing two imperfect jobs image by image, on predictions the test writes from the shapes
val split's ground truth, so that every count can be checked by hand."""

import json

import factories
import pytest

# image 6 holds one ellipse; image 12 an ellipse, a square and a rectangle; image 10 a square
# at [52, 106, 18, 18] that overlaps nothing
ELLIPSE, CIRCLE = 4, 3


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


def _job(client, db, dataset_id, tmp_path, results, name: str) -> int:
    path = tmp_path / f"{name}.bbox.json"
    path.write_text(json.dumps(results))
    job = factories.finished_job(db, dataset_id=dataset_id, predictions_path=path, name=name)
    assert client.post(f"/jobs/{job.id}/analysis").status_code == 200
    return job.id


def _without(results, image_id: int, category_id: int) -> list[dict]:
    return [
        r for r in results if not (r["image_id"] == image_id and r["category_id"] == category_id)
    ]


@pytest.fixture
def two_imperfect_jobs(client, db, dataset_id, val, tmp_path) -> tuple[int, int]:
    """A misses image 12's ellipse; B calls image 6's ellipse a circle; both miss image 10's
    square. Everything else both predict right."""
    both = _without(_perfect(val), 10, 1)
    a = _without(both, 12, ELLIPSE)
    b = [dict(r, category_id=CIRCLE) if r["image_id"] == 6 else r for r in both]
    return _job(client, db, dataset_id, tmp_path, a, "a"), _job(
        client, db, dataset_id, tmp_path, b, "b"
    )


def test_compare_lists_the_images_two_imperfect_jobs_differ_on_both_ways(
    client, two_imperfect_jobs
):
    a, b = two_imperfect_jobs
    compared = client.get(f"/jobs/{a}/compare/{b}/images").json()
    assert compared["by"] == "errors" and compared["score_thr"] == 0.05
    assert (compared["images"], compared["better_in_a"], compared["better_in_b"]) == (12, 1, 1)
    assert compared["same"] == 10  # image 10 among them: both miss its square
    first, second = compared["items"]
    # image 6: A gets its ellipse, B makes a classification error and so misses the ellipse
    assert (first["image_id"], first["better"], first["difference"]) == (6, "a", 2)
    assert (first["a"]["tp"], first["a"]["errors"]) == (1, 0)
    assert (first["b"]["tp"], first["b"]["classification"], first["b"]["missed"]) == (0, 1, 1)
    assert first["changed"] == {"tp": -1, "classification": 1, "missed": 1}
    # image 12: A misses the ellipse B finds
    assert (second["image_id"], second["better"], second["difference"]) == (12, "b", 1)
    assert (second["a"]["tp"], second["a"]["missed"], second["b"]["tp"]) == (2, 1, 3)
    assert compared["sentence"] == (
        f"Job {a} has fewer errors (every type, missed objects included) on 1 val image, job "
        f"{b} on 1, and 10 are even (12 val images compared, counting predictions with score "
        ">= 0.05)"
    )

    only_a = client.get(f"/jobs/{a}/compare/{b}/images", params={"better": "a"}).json()
    assert [i["image_id"] for i in only_a["items"]] == [6] and only_a["total"] == 1
    only_b = client.get(f"/jobs/{a}/compare/{b}/images", params={"better": "b"}).json()
    assert [i["image_id"] for i in only_b["items"]] == [12] and only_b["total"] == 1
    by_tp = client.get(f"/jobs/{a}/compare/{b}/images", params={"by": "tp"}).json()
    assert [(i["image_id"], i["better"], i["difference"]) for i in by_tp["items"]] == [
        (6, "a", 1),
        (12, "b", 1),
    ]
    by_missed = client.get(f"/jobs/{a}/compare/{b}/images", params={"by": "missed"}).json()
    assert (by_missed["better_in_a"], by_missed["better_in_b"]) == (1, 1)
    assert client.get(f"/jobs/{a}/compare/{b}/images", params={"by": "nope"}).status_code == 422
    assert client.get(f"/jobs/{a}/compare/{b}/images", params={"better": "c"}).status_code == 422


def test_compare_names_the_confusions_that_changed(client, two_imperfect_jobs):
    a, b = two_imperfect_jobs
    confusion = client.get(f"/jobs/{a}/compare/{b}/images").json()["confusion"]
    evaluation = client.get(f"/jobs/{a}/evaluation").json()["analysis"]["confusion"]
    assert (confusion["score_thr"], confusion["iou_thr"]) == (
        evaluation["score_thr"],
        evaluation["iou_thr"],
    )
    labels = evaluation["labels"]
    before = evaluation["matrix"][labels.index("ellipse")][labels.index("circle")]
    # B's circle on image 6's ellipse is the one new confusion; both jobs lose one ellipse
    # (A image 12's, B image 6's), so "ellipse not found" is unchanged
    assert confusion["changes"] == [
        {
            "gt": "ellipse",
            "predicted": "circle",
            "label": "ellipse boxes predicted as circle",
            "a": before,
            "b": before + 1,
        }
    ]


def test_compare_of_runs_that_do_not_differ_says_what_was_compared(
    client, db, dataset_id, val, tmp_path
):
    results = _without(_perfect(val), 10, 1)
    a = _job(client, db, dataset_id, tmp_path, results, "same-a")
    b = _job(client, db, dataset_id, tmp_path, results, "same-b")
    compared = client.get(f"/jobs/{a}/compare/{b}/images", params={"by": "tp"}).json()
    assert compared["items"] == [] and (compared["better_in_a"], compared["better_in_b"]) == (0, 0)
    assert compared["sentence"] == (
        f"No val image differs in its number of true positives between job {a} and job {b} "
        "(12 val images compared, counting predictions with score >= 0.05); they may still differ "
        "in other figures or in the scores of their boxes"
    )
    assert compared["confusion"]["changes"] == []

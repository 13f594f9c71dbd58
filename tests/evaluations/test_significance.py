"""Is a difference real? The paired comparison of two jobs, and the leaderboard's ties with its
leader, through the API on predictions the tests write from the ground truth."""

from __future__ import annotations

import json

import factories
import pytest

from backend.analysis.tables import METRIC_KEYS, METRICS

RESAMPLES = {"resamples": 300}


@pytest.fixture
def val(shapes) -> dict:
    return json.loads(shapes.val_ann.read_text())


def _predictions(val: dict, *, damaged_images: int = 0) -> list[dict]:
    """Every val box found; on the first `damaged_images` images every box is moved off its
    object (IoU < 0.5), so those images have only misses and false positives."""
    damaged = {image["id"] for image in val["images"][:damaged_images]}
    results = []
    for i, ann in enumerate(val["annotations"]):
        x, y, w, h = ann["bbox"]
        if ann["image_id"] in damaged:
            x += w  # side by side with its object: no overlap
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": [x, y, w, h],
                "score": 0.9 - 0.001 * i,
            }
        )
    return results


def _scored_job(client, db, dataset_id, tmp_path, name: str, results: list[dict]) -> int:
    path = tmp_path / f"{name}.bbox.json"
    path.write_text(json.dumps(results))
    job = factories.finished_job(db, dataset_id=dataset_id, predictions_path=path, name=name)
    assert client.post(f"/jobs/{job.id}/analysis", params=RESAMPLES).status_code == 200
    return job.id


def test_a_run_compared_with_its_twin_differs_by_nothing(client, db, dataset_id, val, tmp_path):
    results = _predictions(val, damaged_images=3)
    a = _scored_job(client, db, dataset_id, tmp_path, "a", results)
    b = _scored_job(client, db, dataset_id, tmp_path, "b", results)

    found = client.get(f"/jobs/{a}/compare/{b}", params=RESAMPLES).json()

    assert set(found["metrics"]) == {m.key for m in METRICS}  # box-only runs: box figures
    masks = client.get(f"/jobs/{a}/compare/{b}", params={**RESAMPLES, "metric": "segm_mAP"})
    assert masks.status_code == 422 and "no mask predictions" in masks.json()["detail"]["message"]
    mean_ap = found["metrics"]["bbox_mAP"]
    assert mean_ap["estimate"] == 0 and mean_ap["p_value"] == 1
    assert found["sentence"].startswith("no significant difference in mAP between a and b")
    assert found["resamples"] == 300 and found["seed"] == 0


def test_a_run_with_damaged_images_is_significantly_worse(client, db, dataset_id, val, tmp_path):
    good = _scored_job(client, db, dataset_id, tmp_path, "good", _predictions(val))
    bad = _scored_job(client, db, dataset_id, tmp_path, "bad", _predictions(val, damaged_images=6))

    found = client.get(f"/jobs/{good}/compare/{bad}", params=RESAMPLES).json()

    mean_ap = found["metrics"]["bbox_mAP"]
    assert mean_ap["estimate"] < 0 and mean_ap["high"] < 0 and mean_ap["p_value"] < 0.05
    assert found["sentence"].startswith("good beats bad by ")
    assert "95% CI" in found["sentence"]
    # the same comparison the other way round mirrors it
    back = client.get(f"/jobs/{bad}/compare/{good}", params=RESAMPLES).json()
    assert back["metrics"]["bbox_mAP"]["estimate"] == pytest.approx(-mean_ap["estimate"])
    assert back["sentence"].startswith("good beats bad by ")


def test_jobs_on_different_val_splits_are_a_422(client, db, dataset_id, val, shapes, tmp_path):
    mine = _scored_job(client, db, dataset_id, tmp_path, "mine", _predictions(val))
    other = factories.dataset(db, shapes=shapes, name="other")
    other_val = tmp_path / "other_val.json"
    fewer = {**val, "images": val["images"][:-1]}
    fewer["annotations"] = [
        a for a in val["annotations"] if a["image_id"] != val["images"][-1]["id"]
    ]
    other_val.write_text(json.dumps(fewer))
    other.val_ann = str(other_val)
    db.commit()
    theirs = _scored_job(client, db, other.id, tmp_path, "theirs", _predictions(fewer))

    response = client.get(f"/jobs/{mine}/compare/{theirs}", params=RESAMPLES)

    assert response.status_code == 422
    assert "different val splits" in response.json()["detail"]["message"]


def test_the_leaderboard_shows_intervals_and_which_rows_tie_with_the_leader(
    client, db, dataset_id, val, tmp_path
):
    best = _scored_job(client, db, dataset_id, tmp_path, "best", _predictions(val))
    twin = _scored_job(client, db, dataset_id, tmp_path, "twin", _predictions(val))
    worse = _scored_job(
        client, db, dataset_id, tmp_path, "worse", _predictions(val, damaged_images=6)
    )

    board = client.get("/leaderboard", params={"dataset": dataset_id, "significance": True}).json()

    rows = {row["job_id"]: row for row in board["items"]}
    assert [row["job_id"] for row in board["items"]][-1] == worse
    for row in rows.values():
        interval = row["interval"]
        assert interval["metric"] == "bbox_mAP"
        assert interval["low"] <= row["bbox_mAP"] <= interval["high"] or row["bbox_mAP"] == 1.0
        # every metric COCO defines on this split carries its interval, not only the ranked one
        defined = {key for key in METRIC_KEYS if row[key] is not None}
        assert set(row["intervals"]) == defined and "bbox_mAP_50" in defined
        assert row["intervals"]["bbox_mAP"] == {"low": interval["low"], "high": interval["high"]}
    leader = board["items"][0]["job_id"]
    assert leader in (best, twin) and rows[leader]["vs_leader"] == {"leader": True}
    tied = rows[twin if leader == best else best]["vs_leader"]
    assert tied["tied_with_leader"] and tied["p_value"] == 1
    beaten = rows[worse]["vs_leader"]
    assert not beaten["tied_with_leader"] and beaten["p_holm"] >= beaten["p_value"]
    assert beaten["difference"] < 0

    plain = client.get("/leaderboard", params={"dataset": dataset_id}).json()
    assert all(row["vs_leader"] is None for row in plain["items"])
    assert client.get("/leaderboard", params={"significance": True}).status_code == 422

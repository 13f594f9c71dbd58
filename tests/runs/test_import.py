"""Importing predictions made elsewhere: scored like DetLab's own runs, refused precisely."""

from __future__ import annotations

import json
from pathlib import Path

import factories
import pytest

from backend.analysis.tables import METRICS
from backend.config import get_settings
from backend.jobs.models import Job


@pytest.fixture
def val(shapes) -> dict:
    return json.loads(shapes.val_ann.read_text())


def _predictions(val: dict) -> list[dict]:
    """A detector that finds most boxes, calls one class another, and adds a few strays."""
    results = []
    for i, a in enumerate(val["annotations"]):
        if i % 7 == 3:
            continue  # missed
        x, y, w, h = a["bbox"]
        category = a["category_id"] if i % 5 else 1 + a["category_id"] % 4  # confused
        results.append(
            {
                "image_id": a["image_id"],
                "category_id": category,
                "bbox": [x + 1, y, w, h],
                "score": round(0.95 - 0.01 * (i % 50), 3),
            }
        )
    results.append(
        {"image_id": val["images"][0]["id"], "category_id": 1, "bbox": [2, 2, 10, 10], "score": 0.4}
    )
    return results


def _upload(client, dataset_id: int, content: bytes, **form):
    return client.post(
        "/runs/import",
        data={"dataset_id": str(dataset_id), "name": "from elsewhere", **form},
        files={"file": ("results.bbox.json", content, "application/json")},
    )


def test_an_imported_file_is_scored_exactly_as_the_same_run_trained_here(
    client, db, dataset_id, val, tmp_path
):
    results = _predictions(val)
    path = tmp_path / "predictions.bbox.json"
    path.write_text(json.dumps(results))
    trained = factories.finished_job(db, dataset_id=dataset_id, predictions_path=path)
    own = client.post(f"/jobs/{trained.id}/analysis").json()

    response = _upload(
        client, dataset_id, path.read_bytes(), source='{"model": "r50", "from": "detectron2"}'
    )
    assert response.status_code == 201, response.text
    imported = response.json()
    job, evaluation = imported["job"], imported["evaluation"]
    assert job["kind"] == "import" and job["status"] == "succeeded"
    assert job["spec"]["source"] == {"model": "r50", "from": "detectron2"}
    for metric in METRICS:
        assert evaluation[metric.key] == own[metric.key], metric.key
    assert evaluation["intervals"] == own["intervals"]
    assert evaluation["analysis"]["counts"] == own["analysis"]["counts"]
    assert evaluation["record"]["predictions_sha256"] == own["record"]["predictions_sha256"]
    # it is a run like any other: its evaluation, images and overlays are served
    assert client.get(f"/jobs/{job['id']}/evaluation").json()["bbox_mAP"] == own["bbox_mAP"]
    images = client.get(f"/jobs/{job['id']}/images").json()
    assert images["total"] == len(val["images"])
    image_id = images["items"][0]["image_id"]
    overlay = client.get(f"/jobs/{job['id']}/images/{image_id}/overlay.png")
    assert overlay.status_code == 200 and overlay.content[:4] == b"\x89PNG"
    board = client.get("/leaderboard", params={"dataset": dataset_id}).json()["items"]
    row = next(r for r in board if r["job_id"] == job["id"])
    assert row["kind"] == "import" and row["init"] == "imported" and row["backbone"] is None
    assert row["source"] == {"model": "r50", "from": "detectron2"}
    assert row["bbox_mAP"] == own["bbox_mAP"]
    only = client.get("/leaderboard", params={"dataset": dataset_id, "init": "imported"}).json()
    assert [r["job_id"] for r in only["items"]] == [job["id"]]
    stored = Path(get_settings().artifact_root) / "jobs" / str(job["id"])
    assert (stored / "predictions.bbox.json").read_bytes() == path.read_bytes()


def _refused(client, db, dataset_id, content: bytes, status: int = 422) -> str:
    before = db.query(Job).count()
    response = _upload(client, dataset_id, content)
    assert response.status_code == status, response.text
    assert db.query(Job).count() == before  # nothing left behind
    detail = response.json()["detail"]
    return detail["message"] + " " + " ".join(detail.get("problems", []))


def test_bad_files_are_refused_naming_the_problem_and_leave_nothing(client, db, dataset_id, val):
    good = _predictions(val)
    assert "empty (0 bytes)" in _refused(client, db, dataset_id, b"")
    assert "not JSON" in _refused(client, db, dataset_id, b"[{'image_id': 1,")
    assert "a JSON dict, not a list" in _refused(client, db, dataset_id, b'{"results": []}')
    unknown = [dict(r, image_id=10_000 + i) for i, r in enumerate(good[:12])]
    message = _refused(client, db, dataset_id, json.dumps(good + unknown).encode())
    assert "12 entries name 12 image ids not in the val split: 10000, 10001" in message
    assert "10009, ..." in message
    foreign = [dict(good[0], category_id=99)]
    assert "category ids not in the dataset (1, 2, 3, 4): 99" in _refused(
        client, db, dataset_id, json.dumps(good + foreign).encode()
    )
    missing = [{k: v for k, v in good[0].items() if k != "score"}]
    assert "1 entries have no 'score' (at 0)" in _refused(
        client, db, dataset_id, json.dumps(missing).encode()
    )
    text = json.dumps([dict(good[0], score=float("nan")), dict(good[1], bbox=[1, 2, -3, 4])])
    message = _refused(client, db, dataset_id, text.encode())
    assert "1 entries hold NaN or Infinity (at 0)" in message
    assert "1 entries have a negative width or height (at 1)" in message
    assert "source" in _refused_form(client, dataset_id, source="[1]")
    assert "dataset 4242 not found" in _refused_form(client, 4242)


def _refused_form(client, dataset_id, **form) -> str:
    response = _upload(client, dataset_id, b"[]", **form)
    assert response.status_code == 422, response.text
    return response.json()["detail"]["message"]


def test_an_upload_over_the_limit_is_a_413_and_leaves_nothing(
    client, db, dataset_id, val, monkeypatch
):
    monkeypatch.setenv("DETLAB_MAX_UPLOAD_BYTES", "2048")
    get_settings.cache_clear()
    try:
        jobs = list(Path(get_settings().artifact_root, "jobs").glob("*"))
        message = _refused(client, db, dataset_id, json.dumps(_predictions(val)).encode(), 413)
        assert "over the limit of 2048 bytes (DETLAB_MAX_UPLOAD_BYTES)" in message
        assert list(Path(get_settings().artifact_root, "jobs").glob("*")) == jobs
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()

"""Replicate groups through the API: submission with repeats, group summaries, grouped
leaderboard rows and group comparisons (rows built by factories, predictions by the tests)."""

from __future__ import annotations

import json

import factories
import pytest

from backend.evaluations.models import Evaluation
from backend.jobs.models import Job, JobStatus

RESAMPLES = {"resamples": 200}


@pytest.fixture
def val(shapes) -> dict:
    return json.loads(shapes.val_ann.read_text())


def test_repeats_submits_one_job_per_seed_in_one_group(client, dataset_id):
    spec = {"dataset_id": dataset_id, "iterations": 10, "seed": 3, "repeats": 3}

    created = client.post("/jobs", json=spec)

    assert created.status_code == 201, created.text
    ids = created.json()["group_job_ids"]
    members = client.get("/jobs", params={"group": ids[0]}).json()["items"]
    assert sorted(job["id"] for job in members) == ids
    assert sorted(job["spec"]["seed"] for job in members) == [3, 4, 5]
    assert {job["spec"]["repeats"] for job in members} == {1}
    assert {job["group_id"] for job in members} == {ids[0]}
    single = client.post("/jobs", json={"dataset_id": dataset_id, "iterations": 10}).json()
    assert single["group_id"] is None and single["group_job_ids"] == [single["id"]]
    too_many = client.post("/jobs", json={**spec, "repeats": 50})
    assert too_many.status_code == 422 and "repeats" in too_many.text


def _group(db, dataset_id, values: list[float], width: float) -> int:
    """A finished replicate group whose runs scored `values` with intervals `width` wide."""
    jobs = [
        factories.finished_job(
            db, dataset_id=dataset_id, metrics={"bbox_mAP": value}, spec={"seed": seed}
        )
        for seed, value in enumerate(values)
    ]
    for job in jobs:
        job.group_id = jobs[0].id
    for job, value in zip(jobs, values, strict=True):
        evaluation = db.query(Evaluation).filter_by(job_id=job.id).one()
        interval = {"estimate": value, "low": value - width / 2, "high": value + width / 2}
        evaluation.intervals = {"metrics": {"bbox_mAP": interval}, "per_class": {}}
    db.commit()
    return jobs[0].id


def test_a_group_summary_gives_mean_spread_and_where_the_spread_comes_from(client, db, dataset_id):
    group = _group(db, dataset_id, [0.30, 0.32, 0.34], width=0.0392)

    found = client.get(f"/groups/{group}").json()

    mean_ap = found["metrics"]["bbox_mAP"]
    assert mean_ap["n"] == 3 and mean_ap["mean"] == pytest.approx(0.32)
    assert mean_ap["std"] == pytest.approx(0.02)
    assert mean_ap["low"] < 0.32 < mean_ap["high"]
    assert mean_ap["val_se"] == pytest.approx(0.01, rel=1e-4)
    assert mean_ap["seed_share"] == pytest.approx(0.8, rel=1e-3)  # 0.02^2 / (0.02^2 + 0.01^2)
    assert [run["seed"] for run in found["runs"]] == [0, 1, 2] and found["level"] == 0.95
    assert client.get("/groups/999999").status_code == 404


def test_the_grouped_leaderboard_ranks_groups_by_their_mean(client, db, dataset_id):
    low = _group(db, dataset_id, [0.20, 0.22], width=0.02)
    high = _group(db, dataset_id, [0.40, 0.44, 0.42], width=0.02)
    lone = factories.finished_job(db, dataset_id=dataset_id, metrics={"bbox_mAP": 0.30})

    board = client.get("/leaderboard", params={"dataset": dataset_id, "group": True}).json()

    assert [row["job_id"] for row in board["items"]] == [high, lone.id, low]
    top = board["items"][0]
    assert top["bbox_mAP"] == pytest.approx(0.42) and top["replicates"]["n"] == 3
    assert top["interval"]["low"] < 0.42 < top["interval"]["high"]
    assert board["items"][1]["replicates"]["n"] == 1 and board["total"] == 3
    both = client.get(
        "/leaderboard", params={"dataset": dataset_id, "group": True, "significance": True}
    )
    assert both.status_code == 422 and "/groups/" in both.text


def _predicted_group(client, db, dataset_id, val, tmp_path, name, shift_images) -> int:
    """Two scored runs whose boxes are moved off their objects on `shift_images` images."""
    ids = []
    for seed in range(2):
        damaged = {image["id"] for image in val["images"][: shift_images + seed]}
        results = [
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "bbox": [a["bbox"][0] + (a["bbox"][2] if a["image_id"] in damaged else 0)]
                + a["bbox"][1:],
                "score": 0.9,
            }
            for a in val["annotations"]
        ]
        path = tmp_path / f"{name}{seed}.json"
        path.write_text(json.dumps(results))
        job = factories.finished_job(
            db, dataset_id=dataset_id, predictions_path=path, status=JobStatus.succeeded
        )
        ids.append(job.id)
        assert client.post(f"/jobs/{job.id}/analysis", params=RESAMPLES).status_code == 200
    for job_id in ids:
        db.get(Job, job_id).group_id = ids[0]
    db.commit()
    return ids[0]


def test_groups_are_compared_over_val_images_and_seeds(client, db, dataset_id, val, tmp_path):
    good = _predicted_group(client, db, dataset_id, val, tmp_path, "good", 0)
    bad = _predicted_group(client, db, dataset_id, val, tmp_path, "bad", 6)

    found = client.get(f"/groups/{good}/compare/{bad}", params=RESAMPLES).json()

    assert found["a"]["runs"] == 2 and found["b"]["runs"] == 2
    assert found["metrics"]["bbox_mAP"]["estimate"] < 0
    assert found["sentence"].startswith(f"group {good} beats group {bad} by ")
    assert "seeds" in found["method"]
    itself = client.get(f"/groups/{good}/compare/{good}", params=RESAMPLES).json()
    assert itself["metrics"]["bbox_mAP"]["p_value"] == 1

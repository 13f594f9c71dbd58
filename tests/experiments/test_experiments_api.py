"""Experiments over the API (issue 17): a grid as one request, checked whole, its matrix, its
report, cancelling it; re-runs and whether they reproduce."""

from __future__ import annotations

import csv
import io
import statistics

import factories
import pytest
from sqlalchemy import func, select

from backend.config import get_settings
from backend.jobs.models import Job, JobKind, JobStatus


def _grid(dataset_id: int, **changes) -> dict:
    """An experiment body: TINY_TRAINING as the base, less the fields its axes vary."""
    body = {"name": "grid", "axes": {"lr": [0.005, 0.01], "batch_size": [2, 4]}, "repeats": 2}
    body.update(changes)
    base = {"dataset_id": dataset_id, "iterations": 10, **factories.TINY_TRAINING}
    body.setdefault("base", {k: v for k, v in base.items() if k not in body["axes"]})
    return body


def _jobs(db) -> int:
    return db.scalar(select(func.count(Job.id)))


def test_a_grid_is_one_request_with_a_replicate_group_per_cell(client, db, dataset_id):
    created = client.post("/experiments", json=_grid(dataset_id))
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["jobs"] == 8 and body["status_counts"] == {"queued": 8}
    assert [c["label"] for c in body["cells"]] == [
        "lr=0.005, batch_size=2",
        "lr=0.005, batch_size=4",
        "lr=0.01, batch_size=2",
        "lr=0.01, batch_size=4",
    ]
    for cell in body["cells"]:
        jobs = [client.get(f"/jobs/{i}").json() for i in cell["job_ids"]]
        assert len(jobs) == 2 and {j["experiment_id"] for j in jobs} == {body["id"]}
        assert {j["group_id"] for j in jobs} == {cell["group_id"]} and cell["group_id"]
        assert [j["spec"]["seed"] for j in jobs] == [0, 1]
        for axis, value in cell["values"].items():
            assert {j["spec"][axis] for j in jobs} == {value}
        assert all(f"grid [{cell['label']}]" == j["name"] for j in jobs)
    matrix = body["matrix"]
    assert (matrix["rows"], matrix["cols"]) == ("lr", "batch_size")
    assert matrix["slices"] == [{"fixed": {}, "cells": [[0, 1], [2, 3]]}]
    listed = client.get("/experiments").json()
    assert listed["items"][0]["id"] == body["id"] and listed["items"][0]["jobs"] == 8


def test_one_refused_cell_queues_nothing(client, db, dataset_id):
    before = _jobs(db)
    body = _grid(dataset_id, axes={"init": ["scratch", {"weights_id": 999_999}]}, repeats=1)
    refused = client.post("/experiments", json=body)
    assert refused.status_code == 422
    detail = refused.json()["detail"]
    assert "1 of 2 cells are refused; nothing was queued" in detail["message"]
    (problem,) = detail["problems"]
    assert problem["cell"] == {"init": {"weights_id": 999_999}}
    assert "999999" in problem["problem"]
    # a cell the spec itself refuses, named with its field
    invalid = client.post(
        "/experiments", json=_grid(dataset_id, axes={"lr": [0.01, -1]}, repeats=1)
    )
    assert invalid.status_code == 422
    assert invalid.json()["detail"]["problems"][0]["cell"] == {"lr": -1}
    assert "lr" in invalid.json()["detail"]["problems"][0]["problem"]
    assert _jobs(db) == before


@pytest.mark.parametrize(
    ("axes", "message"),
    [
        ({"colour": ["red"]}, "not a field a finetune experiment can vary"),
        ({"seed": [0, 1]}, "not a field"),
        ({"lr": [0.01, 0.01]}, "lists a value twice"),
        ({"lr": []}, "needs 1 to 50 values"),
    ],
)
def test_axes_that_are_not_accepted_are_named(client, dataset_id, axes, message):
    refused = client.post("/experiments", json=_grid(dataset_id, axes=axes))
    assert refused.status_code == 422
    assert message in str(refused.json()["detail"])


def test_a_field_both_in_base_and_an_axis_is_refused(client, dataset_id):
    body = _grid(dataset_id)
    body["base"]["lr"] = 0.02
    refused = client.post("/experiments", json=body)
    assert refused.status_code == 422
    assert "both in base and an axis" in str(refused.json()["detail"])


def test_the_job_count_limit(client, db, dataset_id, monkeypatch, request):
    monkeypatch.setenv("DETLAB_MAX_JOBS_PER_EXPERIMENT", "5")
    get_settings.cache_clear()
    request.addfinalizer(get_settings.cache_clear)
    before = _jobs(db)
    refused = client.post("/experiments", json=_grid(dataset_id))
    assert refused.status_code == 422
    message = refused.json()["detail"]["message"]
    assert "makes 8 jobs (4 cells x 2 repeats)" in message
    assert "limit of 5" in message and "DETLAB_MAX_JOBS_PER_EXPERIMENT" in message
    assert _jobs(db) == before


def _score(db, job_id: int, value: float, low: float, high: float) -> None:
    job = db.get(Job, job_id)
    job.status = JobStatus.succeeded
    db.commit()
    stored = factories.evaluation(db, job_id=job_id, metrics={"bbox_mAP": value})
    stored.intervals = {"metrics": {"bbox_mAP": {"low": low, "high": high}}}
    db.commit()


def test_the_matrix_holds_the_jobs_own_numbers(client, db, dataset_id):
    body = client.post("/experiments", json=_grid(dataset_id)).json()
    values = {}
    for index, cell in enumerate(body["cells"]):
        for seed, job_id in enumerate(cell["job_ids"]):
            if index == 3 and seed == 1:
                continue  # one run of the last cell is still queued
            value = 0.1 * (index + 1) + 0.01 * seed
            values.setdefault(index, []).append(value)
            _score(db, job_id, value, value - 0.02, value + 0.03)
            # every run on mmdet 3.3.0 but one, in the second cell
            db.get(Job, job_id).record = {"mmdet": "3.4.0" if (index, seed) == (1, 0) else "3.3.0"}
            db.commit()
    got = client.get(f"/experiments/{body['id']}", params={"rows": "batch_size"}).json()
    for index, cell in enumerate(got["cells"]):
        assert cell["n"] == len(values[index])
        assert cell["mean"] == pytest.approx(statistics.mean(values[index]))
    two, one = got["cells"][0], got["cells"][3]
    assert two["interval"] == "seeds" and two["low"] < two["mean"] < two["high"]
    assert two["std"] == pytest.approx(statistics.stdev(values[0]))
    # a single run's interval is its own bootstrap interval over val images
    assert one["interval"] == "val images"
    assert (one["low"], one["high"]) == pytest.approx((0.38, 0.43))
    assert one["status_counts"] == {"succeeded": 1, "queued": 1}
    assert got["status_counts"] == {"succeeded": 7, "queued": 1}
    # rows by batch size now: the transposed layout
    assert got["matrix"]["slices"][0]["cells"] == [[0, 2], [1, 3]]
    assert [cell["record_differs"] for cell in got["cells"]] == [[], ["mmdet"], [], []]
    unknown = client.get(f"/experiments/{body['id']}", params={"rows": "colour"})
    assert unknown.status_code == 422 and "not an axis" in unknown.text


def test_the_report_lists_every_cell(client, db, dataset_id):
    body = client.post("/experiments", json=_grid(dataset_id)).json()
    first = body["cells"][0]["job_ids"]
    _score(db, first[0], 0.30, 0.28, 0.32)
    _score(db, first[1], 0.34, 0.31, 0.36)
    markdown = client.get(f"/experiments/{body['id']}/report")
    assert markdown.status_code == 200
    assert markdown.headers["content-type"].startswith("text/markdown")
    text = markdown.text
    assert text.startswith("# grid")
    table = [line for line in text.splitlines() if line.startswith("| 0.0")]
    assert len(table) == 4 + 2  # every cell, then the matrix: a row per lr
    assert "| 0.005 | 2 | 2 | 32.0 [" in text  # n = 2, mean 32.0 % with its interval
    assert "## bbox_mAP: lr x batch_size" in text
    assert "## Record" in text
    rows = list(
        csv.reader(
            io.StringIO(
                client.get(f"/experiments/{body['id']}/report", params={"format": "csv"}).text
            )
        )
    )
    assert rows[0][:4] == ["lr", "batch_size", "n", "bbox_mAP_mean"]
    assert len(rows) == 5
    assert float(rows[1][3]) == pytest.approx(0.32)


def test_cancelling_an_experiment_cancels_its_open_jobs(client, client_as, db, dataset_id):
    member, secret = factories.user(db, role="member")
    theirs = client_as(secret).post("/experiments", json=_grid(dataset_id, repeats=1))
    assert theirs.status_code == 201, theirs.text
    experiment_id = theirs.json()["id"]
    other, other_secret = factories.user(db, role="member")
    refused = client_as(other_secret).post(f"/experiments/{experiment_id}/cancel")
    assert refused.status_code == 403 and f"belongs to {member.name}" in refused.text
    done = theirs.json()["cells"][0]["job_ids"][0]
    _score(db, done, 0.3, 0.2, 0.4)
    cancelled = client_as(secret).post(f"/experiments/{experiment_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status_counts"] == {"succeeded": 1, "cancelled": 3}
    assert cancelled.json()["cancelled_at"]
    again = client_as(secret).post(f"/experiments/{experiment_id}/cancel")
    assert again.status_code == 409


def test_templates_fill_the_form_for_the_studies(client, db, dataset_id):
    weights = factories.weights(db, architecture="resnet50")
    other = factories.weights(db, architecture="resnet18")
    found = {t["name"]: t for t in client.get("/experiments/templates").json()}
    whole = factories.weights(db, architecture="resnet50", method="aligndet")
    whole.kind, whole.detector = "detector", "faster_rcnn"
    db.commit()
    found = {t["name"]: t for t in client.get("/experiments/templates").json()}
    assert set(found) == {
        "init-study",
        "backbone-study",
        "low-data-study",
        "ssl-benchmark",
        "aligndet-study",
    }
    init = found["init-study"]
    assert init["base"]["epochs"] == 12 and init["base"]["lr"] == 0.0025
    assert init["axes"]["init"] == ["scratch", "imagenet", {"weights_id": weights.id}]
    assert {"weights_id": other.id} not in init["axes"]["init"]  # not a ResNet-50
    assert found["backbone-study"]["axes"]["backbone"] == [
        "resnet50",
        "resnet101",
        "resnext101_32x4d",
        "swin_t",
    ]
    low = found["low-data-study"]
    assert low["axes"]["data_fraction"] == [0.01, 0.05, 0.1, 1.0]
    body = {
        "name": "low data",
        "base": {**low["base"], "dataset_id": dataset_id},
        "axes": {**low["axes"], "init": ["scratch", "imagenet"]},
        "repeats": low["repeats"],
        "template": low["name"],
    }
    created = client.post("/experiments", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["jobs"] == 4 * 2 * 3 and created.json()["template"] == "low-data-study"

    # the self-supervised benchmark protocol: Mask R-CNN on FPN and C4, SyncBN, 0.02 at 16
    ssl = found["ssl-benchmark"]
    assert ssl["base"]["detector"] == "mask_rcnn" and ssl["base"]["norm"] == "syncbn"
    assert ssl["base"]["lr"] * ssl["base"]["gpus"] == 0.02
    assert ssl["base"]["batch_size"] * ssl["base"]["gpus"] == 16
    assert ssl["axes"]["backbone"] == ["resnet50", "resnet50_c4"]
    assert ssl["axes"]["init"] == ["imagenet", {"weights_id": weights.id}]
    body = {
        "name": "ssl benchmark",
        "base": {**ssl["base"], "dataset_id": dataset_id},
        "axes": ssl["axes"],
        "repeats": ssl["repeats"],
        "template": ssl["name"],
    }
    created = client.post("/experiments", json=body)
    assert created.status_code == 201, created.text  # the shapes data carry polygons
    assert created.json()["jobs"] == 2 * 2

    # AlignDet's study: image-domain starts against a whole pretrained detector, by data share
    aligned = found["aligndet-study"]
    assert aligned["axes"]["data_fraction"] == [0.01, 0.1, 1.0]
    assert aligned["axes"]["init"] == [
        "imagenet",
        {"weights_id": weights.id},
        {"weights_id": whole.id},
    ]
    assert {"weights_id": whole.id} not in found["init-study"]["axes"]["init"]  # a detector
    body = {
        "name": "aligndet",
        "base": {**aligned["base"], "dataset_id": dataset_id},
        "axes": aligned["axes"],
        "repeats": 1,
        "template": aligned["name"],
    }
    created = client.post("/experiments", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["jobs"] == 3 * 3


def test_a_rerun_queues_the_same_spec_and_says_if_it_reproduced(client, db, dataset_id):
    spec = {"dataset_id": dataset_id, "iterations": 10, "seed": 7, **factories.TINY_TRAINING}
    submitted = client.post("/jobs", json=spec).json()
    original = db.get(Job, submitted["id"])
    original.record = {"config_sha256": "a" * 64, "mmdet": "3.3.0"}
    _score(db, original.id, 0.5, 0.45, 0.55)
    rerun = client.post(f"/jobs/{original.id}/rerun")
    assert rerun.status_code == 201, rerun.text
    again = rerun.json()
    assert again["rerun_of_id"] == original.id and again["status"] == "queued"
    assert again["spec"]["seed"] == 7
    assert {k: v for k, v in again["spec"].items() if k != "name"} == {
        k: v for k, v in original.spec.items() if k != "name"
    }
    pending = client.get(f"/jobs/{again['id']}/reproduction").json()
    assert pending["inside"] is None and "no bbox_mAP yet" in pending["verdict"]
    job = db.get(Job, again["id"])
    job.record = {"config_sha256": "a" * 64, "mmdet": "3.4.0"}
    db.commit()
    _score(db, job.id, 0.52, 0.47, 0.57)
    checked = client.get(f"/jobs/{job.id}/reproduction").json()
    assert checked["inside"] is True and checked["verdict"].startswith("reproduced")
    assert checked["config_same"] is True and checked["record_differs"] == ["mmdet"]
    assert checked["original"] == {"value": 0.5, "low": 0.45, "high": 0.55}
    not_a_rerun = client.get(f"/jobs/{original.id}/reproduction")
    assert not_a_rerun.status_code == 409
    imported = factories.job(db, dataset_id=dataset_id, kind=JobKind.imported, spec={})
    assert client.post(f"/jobs/{imported.id}/rerun").status_code == 409


def test_the_axes_keep_the_order_given(client, dataset_id):
    # Postgres' JSONB would give {"lr", "data_fraction"} back shortest key first
    body = _grid(dataset_id, axes={"data_fraction": [0.5, 1.0], "lr": [0.005, 0.01]}, repeats=1)
    created = client.post("/experiments", json=body).json()
    assert list(created["axes"]) == ["data_fraction", "lr"]
    assert created["cells"][0]["label"] == "data_fraction=0.5, lr=0.005"
    assert (created["matrix"]["rows"], created["matrix"]["cols"]) == ("data_fraction", "lr")
    again = client.get(f"/experiments/{created['id']}").json()
    assert list(again["axes"]) == ["data_fraction", "lr"]
    job = client.get(f"/jobs/{again['cells'][0]['job_ids'][0]}").json()
    assert job["name"] == "grid [data_fraction=0.5, lr=0.005]"


def test_a_metric_coco_could_not_compute_is_no_figure(client, db, dataset_id):
    body = client.post("/experiments", json=_grid(dataset_id, repeats=2)).json()
    first, second = body["cells"][0]["job_ids"]
    for job_id, small in ((first, -1.0), (second, 0.2)):  # -1: no small objects in val
        db.get(Job, job_id).status = JobStatus.succeeded
        db.commit()
        stored = factories.evaluation(db, job_id=job_id, metrics={"bbox_mAP_s": small})
        stored.intervals = {"metrics": {"bbox_mAP_s": {"low": small - 0.1, "high": small + 0.1}}}
        db.commit()
    cell = client.get(f"/experiments/{body['id']}", params={"metric": "bbox_mAP_s"}).json()
    first_cell = cell["cells"][0]
    assert first_cell["n"] == 1 and first_cell["mean"] == pytest.approx(0.2)
    assert (first_cell["low"], first_cell["high"]) == pytest.approx((0.1, 0.3))

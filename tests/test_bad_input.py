"""Inputs a fuzzer sends: each is a 4xx that names what was wrong, never a 500."""

from __future__ import annotations

import json

import pytest

TOO_BIG = 2**31  # one past what an id column holds


@pytest.mark.parametrize(
    ("url", "field"),
    [
        (f"/jobs/{TOO_BIG}", "job_id"),
        (f"/jobs/{TOO_BIG}/evaluation", "job_id"),
        (f"/jobs/1/images/{TOO_BIG}/detections", "image_id"),
        (f"/datasets/{TOO_BIG}", "dataset_id"),
        (f"/weights/{TOO_BIG}", "weights_id"),
        (f"/groups/{TOO_BIG}", "group_id"),
        (f"/jobs?offset={2**63}", "offset"),
        (f"/jobs?dataset={TOO_BIG}", "dataset"),
        (f"/leaderboard?dataset={TOO_BIG}", "dataset"),
    ],
)
def test_ids_and_offsets_beyond_the_columns_are_a_422_naming_them(client, url, field):
    response = client.get(url)
    assert response.status_code == 422, response.text
    assert field in json.dumps(response.json()["detail"])


@pytest.mark.parametrize(
    ("body", "content_type"),
    [("null", "application/json"), ("[1, 2]", "application/json"), ("true", "application/json")]
    + [("dataset_id=1", "text/plain")],
)
def test_a_job_spec_that_is_not_an_object_is_a_422(client, body, content_type):
    response = client.post("/jobs", content=body, headers={"content-type": content_type})
    assert response.status_code == 422, response.text
    assert "JSON object" in response.text


def test_nan_in_a_body_gets_a_readable_422(client, dataset_id):
    body = f'{{"dataset_id": {dataset_id}, "iterations": 10, "lr": NaN}}'
    response = client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"][-1] == "lr" and error["input"] == "nan"


def test_nul_bytes_are_refused(client, dataset_id):
    response = client.get("/leaderboard", params={"detector": "faster\x00rcnn"})
    assert response.status_code == 422 and "NUL" in response.text
    spec = {"dataset_id": dataset_id, "iterations": 10, "name": "bad\x00name"}
    response = client.post("/jobs", json=spec)
    assert response.status_code == 422 and "NUL" in response.text


def test_home_folder_paths_are_refused_not_expanded(client, shapes_payload):
    payload = {**shapes_payload, "name": "tilde", "train_ann": "~nobody-here/train.json"}
    response = client.post("/datasets", json=payload)
    assert response.status_code == 422
    assert "starts with '~'" in response.text

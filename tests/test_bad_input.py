"""Inputs a fuzzer sends: each is a 4xx that names what was wrong, never a 500; and the OpenAPI
document lists each status a route can send."""

from __future__ import annotations

import inspect
import json
import shutil
import time

import httpx
import pytest

from backend.config import get_settings

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


@pytest.mark.parametrize("body", ["null", "[1, 2]", "true"])
def test_a_job_spec_that_is_not_an_object_is_a_422(client, body):
    response = client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert "JSON object" in response.text


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_a_body_that_is_not_json_is_a_415(client, content_type):
    response = client.post("/jobs", content="dataset_id=1", headers={"content-type": content_type})
    assert response.status_code == 415, response.text
    assert "application/json" in response.json()["detail"]["message"]


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


def test_the_frameworks_own_refusals_have_the_error_shape_too(client):
    body = b'{"name": "\xff\xfe"}'  # not UTF-8
    response = client.post("/weights", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "JSON in UTF-8" in response.json()["detail"]["message"]
    assert client.get("/no-such-route").json() == {"detail": {"message": "Not Found"}}
    assert client.delete("/leaderboard").json()["detail"]["message"] == "Method Not Allowed"


def test_home_folder_paths_are_refused_not_expanded(client, shapes_payload):
    payload = {**shapes_payload, "name": "tilde", "train_ann": "~nobody-here/train.json"}
    response = client.post("/datasets", json=payload)
    assert response.status_code == 422
    assert "starts with '~'" in response.text


LIMIT = 1024 * 1024  # DETLAB_MAX_JSON_BODY_BYTES's default
TEN_MB = 10 * 1024 * 1024


def _too_large(response: httpx.Response) -> str:
    assert response.status_code == 413, response.text[:300]
    message = response.json()["detail"]["message"]
    assert str(LIMIT) in message and "DETLAB_MAX_JSON_BODY_BYTES" in message
    return message


def _chunks(body: bytes, size: int = 64 * 1024):
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_a_body_over_the_limit_is_a_413_before_it_is_parsed(client, dataset_id):
    body = json.dumps({"dataset_id": dataset_id, "name": "x" * TEN_MB}).encode()
    started = time.monotonic()
    response = client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert f"is {len(body)} bytes" in _too_large(response)
    assert time.monotonic() - started < 5
    # not JSON at all, and still a 413: the body was refused before anything parsed it
    json_type = {"content-type": "application/json"}
    assert _too_large(client.post("/datasets", content=b"{" * (LIMIT + 1), headers=json_type))
    small = client.post("/jobs", json={"dataset_id": dataset_id, "name": "small"})
    assert small.status_code == 422 and "exactly one of 'epochs' or 'iterations'" in small.text


def test_a_chunked_body_is_counted_as_it_arrives(client, dataset_id):
    big = json.dumps({"dataset_id": dataset_id, "name": "x" * TEN_MB}).encode()
    json_type = {"content-type": "application/json"}
    assert "at least" in _too_large(client.post("/jobs", content=_chunks(big), headers=json_type))
    # a chunked body within the limit reaches the route whole
    spec = json.dumps({"dataset_id": dataset_id, "iterations": 10, "name": "y" * 300}).encode()
    response = client.post(
        "/jobs", content=_chunks(spec, 50), headers={"content-type": "application/json"}
    )
    assert response.status_code == 422 and "name" in response.text  # at most 200 characters


def test_the_body_limit_is_the_setting(client, dataset_id, monkeypatch, request):
    monkeypatch.setenv("DETLAB_MAX_JSON_BODY_BYTES", "2048")
    get_settings.cache_clear()
    request.addfinalizer(get_settings.cache_clear)  # before the variable is restored
    response = client.post("/jobs", json={"dataset_id": dataset_id, "name": "x" * 3000})
    assert response.status_code == 413 and "limit of 2048 bytes" in response.text


def test_multipart_uploads_stream_on_up_to_the_upload_limit(client, monkeypatch, request):
    monkeypatch.setenv("DETLAB_MAX_UPLOAD_BYTES", "1024")
    get_settings.cache_clear()
    request.addfinalizer(get_settings.cache_clear)  # before the variable is restored
    files = {"file": ("results.json", b"[" * (2 * LIMIT))}
    response = client.post("/jobs", files=files)  # with its Content-Length
    assert response.status_code == 413 and "DETLAB_MAX_UPLOAD_BYTES" in response.text
    body = client.build_request("POST", "/jobs", files=files)
    headers = {"content-type": body.headers["content-type"]}
    chunked = client.post("/jobs", content=_chunks(body.read()), headers=headers)
    assert chunked.status_code == 413 and "at least" in chunked.json()["detail"]["message"]
    within = {"file": ("results.json", b"[" * (LIMIT // 2))}
    assert client.post("/jobs", files=within).status_code == 422  # the route's own refusal


def test_a_big_body_over_real_http_is_refused_quickly(api):
    body = b'{"name": "' + b"x" * TEN_MB + b'"}'
    headers = {"content-type": "application/json"}
    started = time.monotonic()
    _too_large(api.post("/jobs", content=body, headers=headers))
    _too_large(api.post("/jobs", content=_chunks(body), headers=headers))
    assert time.monotonic() - started < 10
    assert api.get("/health").status_code == 200


def test_an_annotation_file_over_the_size_limit_is_refused_unread(
    client, shapes_payload, data_root
):
    huge = data_root / "huge-train.json"
    size = get_settings().max_annotation_bytes + 1
    with huge.open("wb") as handle:  # sparse: nothing is written, nothing could be read fast
        handle.truncate(size)
    try:
        started = time.monotonic()
        response = client.post(
            "/datasets", json={**shapes_payload, "name": "huge", "train_ann": str(huge)}
        )
        elapsed = time.monotonic() - started
    finally:
        huge.unlink()
    assert response.status_code == 422, response.text
    message = response.json()["detail"]["message"]
    assert str(huge) in message and f"{size} bytes" in message
    assert f"limit of {size - 1} bytes" in message and "DETLAB_MAX_ANNOTATION_BYTES" in message
    assert elapsed < 5


def test_big_annotation_files_are_checked_in_a_child_process_alike(shapes, tmp_path):
    from backend.datasets import validation

    split = ("train", shapes.train_ann, shapes.train_images)
    in_child = validation.check_split_in_child(*split)
    assert in_child == validation.check_split(*split)
    assert in_child.stats["images"] == 48 and not in_child.problems
    not_json = tmp_path / "train.json"
    not_json.write_text("{")
    (problem,) = validation.check_split_in_child("train", not_json, shapes.train_images).problems
    assert problem["where"] == str(not_json) and "not valid JSON" in problem["problem"]


def test_the_same_annotation_files_register_once(client, shapes_payload, data_root):
    first = client.post("/datasets", json={**shapes_payload, "name": "first"})
    assert first.status_code == 201, first.text
    again = client.post("/datasets", json={**shapes_payload, "name": "again"})
    assert again.status_code == 409
    message = again.json()["detail"]["message"]
    assert f"'first' (id {first.json()['id']})" in message
    # the same files through a symlink are the same files
    link = data_root / "linked-val.json"
    link.symlink_to(shapes_payload["val_ann"])
    try:
        linked = client.post(
            "/datasets", json={**shapes_payload, "name": "linked", "val_ann": str(link)}
        )
        assert linked.status_code == 409 and "'first'" in linked.text
        # another train split scored on the same val split is another dataset
        other_train = data_root / "other-train.json"
        shutil.copyfile(shapes_payload["train_ann"], other_train)
        shared_val = {**shapes_payload, "name": "shared-val", "train_ann": str(other_train)}
        assert client.post("/datasets", json=shared_val).status_code == 201
    finally:
        link.unlink()


def test_dataset_routes_are_sync_so_files_are_never_parsed_in_the_event_loop():
    from backend.datasets.router import router

    assert len(router.routes) == 4
    assert not any(inspect.iscoroutinefunction(route.endpoint) for route in router.routes)


@pytest.fixture(scope="module")
def openapi() -> dict:
    from backend.main import create_app

    return create_app(migrate=False).openapi()


def _operations(openapi: dict) -> dict[str, dict]:
    """Each operation by "METHOD /path"."""
    return {
        f"{method.upper()} {path}": operation
        for path, operations in openapi["paths"].items()
        for method, operation in operations.items()
    }


def test_the_openapi_document_lists_every_error_status(openapi):
    error_schema = {"$ref": "#/components/schemas/ErrorResponse"}
    operations = _operations(openapi)
    for name, operation in operations.items():
        if name == "GET /health":
            continue
        expected = {"401", "422", "503"}  # every route but the health check needs a token
        if "{" in name:  # an id in the path
            expected.add("404")
        if "requestBody" in operation:
            expected |= {"400", "413"}
        if not name.startswith("GET "):  # a role or an owner may refuse; the body type too
            expected |= {"403", "415"}
        responses = operation["responses"]
        assert expected <= set(responses), name
        for status in expected:
            content = responses[status]["content"]
            assert content == {"application/json": {"schema": error_schema}}, (name, status)
        assert "Retry-After" in responses["503"]["headers"], name
    for conflicting in ("POST /datasets", "POST /weights", "POST /jobs/{job_id}/cancel"):
        assert "409" in operations[conflicting]["responses"], conflicting
    assert "HTTPValidationError" not in openapi["components"]["schemas"]


def test_the_openapi_document_gives_the_media_types_sent(openapi):
    def content(name: str) -> list[str]:
        return list(_operations(openapi)[name]["responses"]["200"]["content"])

    assert content("GET /jobs/{job_id}/config") == ["text/x-python"]
    image = content("GET /datasets/{dataset_id}/images/{image_id}")
    assert image == ["image/jpeg", "image/png", "image/*"]
    assert content("GET /jobs/{job_id}/images/{image_id}/overlay.png") == ["image/png"]
    assert content("GET /jobs/{job_id}/predictions") == ["application/json"]

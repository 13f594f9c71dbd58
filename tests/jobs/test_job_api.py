"""Job submission over the API: validation errors are 422s that say what is accepted."""

import base64
import json
import os

import pytest
import redis


@pytest.fixture
def dataset_id(client, shapes_payload):
    return client.post("/datasets", json=shapes_payload).json()["id"]


def _detail(response) -> str:
    assert response.status_code == 422, response.text
    return str(response.json()["detail"])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"backbone": "vgg16"}, "resnet18"),
        ({"detector": "yolo"}, "faster_rcnn"),
        ({"optimizer": "lion"}, "adamw"),
        ({"epochs": 2, "iterations": 5}, "exactly one of 'epochs' or 'iterations'"),
        ({"epochs": None}, "exactly one of 'epochs' or 'iterations'"),
        ({"config": "import os"}, "accepted fields"),
        ({"backbone": "swin_t", "norm": "bn"}, "LayerNorm"),
        ({"init": "scratch", "norm": "frozen_bn"}, "frozen_bn cannot train from scratch"),
        ({"data_fraction": 0}, "greater than or equal to 0.01"),
        ({"image_scale": [8, 8]}, "between 32 and 4096"),
        ({"init": {"checkpoint": "/etc/passwd"}}, "outside the allowed data roots"),
        ({"init": {"checkpoint": "x", "strip": "a"}}, "accepted fields"),
        ({"init": {"weights_id": 77}}, "weights 77 not found"),
        ({"dataset_id": 4242}, "dataset 4242 not found"),
        ({"detector": "retinanet", "roi_samples_per_image": 64}, "no RoI head"),
    ],
)
def test_invalid_specs_are_422(client, dataset_id, change, expected):
    spec = {"dataset_id": dataset_id, "epochs": 1, **change}
    assert expected in _detail(client.post("/jobs", json=spec))


@pytest.fixture
def inspect_queue():
    """Route the API's jobs to a queue no worker of this session consumes, then restore."""
    from backend.config import get_settings
    from backend.queue import get_client

    original = os.environ["DETLAB_QUEUE"]
    os.environ["DETLAB_QUEUE"] = f"{original}-inspect"
    get_settings.cache_clear()
    get_client.cache_clear()
    yield os.environ["DETLAB_QUEUE"]
    os.environ["DETLAB_QUEUE"] = original
    get_settings.cache_clear()
    get_client.cache_clear()


def test_submit_queues_the_job_id_on_redis(client, dataset_id, redis_url, inspect_queue):
    broker = redis.Redis.from_url(redis_url)
    before = broker.llen(inspect_queue)
    response = client.post(
        "/jobs",
        json={"dataset_id": dataset_id, "iterations": 10, "backbone": "resnet18", "name": "probe"},
    )
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued" and job["spec"]["backbone"] == "resnet18"
    assert broker.llen(inspect_queue) == before + 1
    # take it back so no worker runs it
    message = json.loads(broker.lpop(inspect_queue))
    assert message["headers"]["task"] == "jobs.run"
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    assert args == [job["id"]]  # only the id travels

    listed = client.get("/jobs", params={"status": "queued", "dataset": dataset_id}).json()
    assert [item["id"] for item in listed["items"]] == [job["id"]]
    assert client.get("/jobs", params={"status": "running"}).json()["total"] == 0
    assert client.get("/jobs", params={"status": "bogus"}).status_code == 422

    cancelled = client.post(f"/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert client.post(f"/jobs/{job['id']}/cancel").status_code == 409
    assert client.get(f"/jobs/{job['id']}/config").status_code == 404
    assert client.get("/jobs/999999").status_code == 404


def test_options_list_the_choices(client):
    options = client.get("/jobs/options").json()
    assert "faster_rcnn" in options["detector"] and "swin_l" in options["backbone"]

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


def test_jobs_show_their_place_in_line_and_can_be_requeued(
    client, db, dataset_id, redis_url, inspect_queue
):
    from backend.jobs import service as job_service

    broker = redis.Redis.from_url(redis_url)
    spec = {"dataset_id": dataset_id, "iterations": 10, "backbone": "resnet18"}
    first, second = (client.post("/jobs", json=spec).json() for _ in range(2))
    assert (first["queue"], first["queue_position"]) == (inspect_queue, 1)
    assert second["queue_position"] == 2
    assert client.post(f"/jobs/{first['id']}/cancel").json()["queue_position"] is None
    assert client.get(f"/jobs/{second['id']}").json()["queue_position"] == 1

    sent = broker.llen(inspect_queue)
    back = client.post(f"/jobs/{first['id']}/requeue")
    assert back.status_code == 200, back.text
    assert back.json()["status"] == "queued" and back.json()["queue_position"] == 2
    assert broker.llen(inspect_queue) == sent + 1  # its message went out again
    listed = client.get("/jobs", params={"status": "queued"}).json()["items"]
    assert {job["id"]: job["queue_position"] for job in listed} == {
        first["id"]: 2,
        second["id"]: 1,
    }

    claim = job_service.claim(session=db, queue=inspect_queue, host="gpu-7")
    assert claim.job.id == second["id"]  # the oldest in line, whatever the messages say
    live = client.post(f"/jobs/{second['id']}/requeue")
    assert live.status_code == 409 and "running on gpu-7" in live.json()["detail"]["message"]
    assert client.post("/jobs/999999/requeue").status_code == 404
    broker.delete(inspect_queue)  # no worker must run these


def test_a_job_submitted_while_the_broker_is_down_stays_queued(client, db, dataset_id, monkeypatch):
    from backend.config import get_settings
    from backend.queue import get_client

    monkeypatch.setenv("DETLAB_BROKER_URL", "redis://127.0.0.1:9/0")  # nothing listens there
    get_settings.cache_clear()
    get_client.cache_clear()
    try:
        response = client.post(
            "/jobs", json={"dataset_id": dataset_id, "iterations": 10, "backbone": "resnet18"}
        )
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
        get_client.cache_clear()
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued" and job["error"] is None
    from backend.jobs.models import Job

    # marked unsent: the reconciler sends it whatever the broker says it holds
    assert db.get(Job, job["id"]).sent_at is None


def test_intervals_and_warm_up_fit_the_run_unless_given(client, dataset_id):
    def submit(**change):
        spec = {"dataset_id": dataset_id, "backbone": "resnet18", **change}
        return client.post("/jobs", json=spec)

    short = submit(iterations=200).json()["spec"]
    assert short["eval_interval"] == 20 and short["warmup_iters"] == 20
    long = submit(iterations=90_000).json()["spec"]
    assert long["eval_interval"] == 9000 and long["warmup_iters"] == 500
    assert submit(epochs=12).json()["spec"]["eval_interval"] == 1
    assert submit(epochs=100).json()["spec"]["eval_interval"] == 10
    # 48 train images at batch 2: 24 iterations an epoch
    assert submit(epochs=2, batch_size=2).json()["spec"]["warmup_iters"] == 4
    given = submit(iterations=200, eval_interval=7, warmup_iters=0).json()["spec"]
    assert given["eval_interval"] == 7 and given["warmup_iters"] == 0

    too_long = _detail(submit(iterations=200, warmup_iters=500))
    assert "warmup_iters 500 is longer than the run (200 iterations)" in too_long
    too_long = _detail(submit(epochs=2, batch_size=2, warmup_iters=100))
    assert "(2 epochs of 24 iterations = 48); give at most 48" in too_long


def test_a_job_far_longer_than_its_queue_usually_runs_is_queued_with_a_warning(
    client, db, dataset_id, inspect_queue, redis_url
):
    from datetime import timedelta

    import factories

    from backend.db import utcnow
    from backend.jobs.models import JobStatus

    spec = {"dataset_id": dataset_id, "backbone": "resnet18", "image_scale": [128, 128]}
    alone = client.post("/jobs", json={**spec, "iterations": 100}).json()
    assert alone["estimated_seconds"] is None and alone["warnings"] == []  # nothing learned yet

    # the queue's workers took 60 s for 100 iterations of batch 2 at 128 x 128
    finished = utcnow()
    factories.job(
        db,
        dataset_id=dataset_id,
        status=JobStatus.succeeded,
        spec={**spec, "iterations": 100, "batch_size": 2},
        queue=inspect_queue,  # a queue of this test's own: no other job finished on it
        started_at=finished - timedelta(seconds=60),
        finished_at=finished,
    )
    small = client.post("/jobs", json={**spec, "iterations": 200, "batch_size": 2}).json()
    assert small["estimated_seconds"] == pytest.approx(120) and small["warnings"] == []
    huge = client.post("/jobs", json={**spec, "iterations": 1_000_000, "batch_size": 4}).json()
    assert huge["status"] == "queued"
    assert huge["estimated_seconds"] == pytest.approx(1_200_000)
    (warning,) = huge["warnings"]
    assert "about 13.9 days" in warning and "from the 1 finetune job(s)" in warning
    redis.Redis.from_url(redis_url).delete(inspect_queue)  # no worker must run these

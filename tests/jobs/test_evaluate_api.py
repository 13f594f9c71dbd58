"""Submitting evaluate jobs over the API: a spec that names no model, or two, or a model that
cannot be scored, is a 422 that says what is accepted; a good one is queued."""

from __future__ import annotations

import os
from pathlib import Path

import factories
import pytest
import redis

from backend.jobs.models import JobKind, JobStatus

KNOWN_CONFIG = "faster-rcnn_r50_fpn_1x_coco"


@pytest.fixture
def checkpoint(data_root: Path) -> Path:
    """A file under the data root: the API only confines the path, the worker reads it."""
    path = data_root / "evaluate-api" / "model.pth"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"weights")
    return path


@pytest.fixture
def own_queue(redis_url):
    """Jobs submitted go to a queue of this test that no worker consumes; its messages are
    deleted afterwards."""
    from backend.config import get_settings
    from backend.queue import get_client

    original = os.environ["DETLAB_QUEUE"]
    queue = os.environ["DETLAB_QUEUE"] = f"{original}-evaluate-api"
    get_settings.cache_clear()
    get_client.cache_clear()
    yield queue
    os.environ["DETLAB_QUEUE"] = original
    get_settings.cache_clear()
    get_client.cache_clear()
    redis.Redis.from_url(redis_url).delete(queue)


def _submit(client, **spec):
    return client.post("/jobs", json={"kind": "evaluate", **spec})


def _detail(response) -> str:
    assert response.status_code == 422, response.text
    return str(response.json()["detail"])


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ({}, "name the model exactly one way"),
        (
            {"source_job_id": 1, "detector": "faster_rcnn", "backbone": "resnet18"},
            "got ['source_job_id', 'detector and backbone']",
        ),
        (
            {"mmdet_config": KNOWN_CONFIG, "detector": "faster_rcnn", "backbone": "resnet18"},
            "got ['detector and backbone', 'mmdet_config']",
        ),
        ({"detector": "faster_rcnn", "checkpoint": "x.pth"}, "give both detector and backbone"),
        ({"detector": "faster_rcnn", "backbone": "resnet18"}, "needs a checkpoint file"),
        ({"mmdet_config": KNOWN_CONFIG}, "mmdet_config needs a checkpoint file"),
        ({"mmdet_config": "../../../etc/passwd", "checkpoint": "x.pth"}, "should match pattern"),
        ({"source_job_id": 1, "image_scale": [8, 8]}, "between 32 and 4096"),
        ({"source_job_id": 1, "batch_size": 65}, "less than or equal to 64"),
        ({"source_job_id": 1, "iterations": 10}, "accepted fields"),
        ({"detector": "yolo", "backbone": "resnet18", "checkpoint": "x.pth"}, "faster_rcnn"),
    ],
)
def test_a_spec_naming_no_model_or_two_is_422(client, dataset_id, model, expected):
    assert expected in _detail(_submit(client, dataset_id=dataset_id, **model))


@pytest.mark.parametrize(
    ("kind", "status", "expected"),
    [
        (JobKind.pretrain, JobStatus.succeeded, "is not a fine-tune job"),
        (JobKind.finetune, JobStatus.queued, "is queued; only a succeeded fine-tune"),
        (JobKind.finetune, JobStatus.failed, "is failed; only a succeeded fine-tune"),
    ],
)
def test_a_source_job_that_is_not_a_succeeded_finetune_is_422(
    client, db, dataset_id, kind, status, expected
):
    source = factories.job(db, kind=kind, status=status, dataset_id=dataset_id)
    assert expected in _detail(_submit(client, dataset_id=dataset_id, source_job_id=source.id))


def test_a_missing_source_job_or_dataset_is_422(client, db, dataset_id):
    detail = _detail(_submit(client, dataset_id=dataset_id, source_job_id=424242))
    assert "424242 is not a fine-tune job" in detail and "GET /jobs?kind=finetune" in detail
    source = factories.finished_job(db, dataset_id=dataset_id)
    detail = _detail(_submit(client, dataset_id=4242, source_job_id=source.id))
    assert "dataset 4242 not found" in detail


def test_an_unknown_mmdet_config_is_422_with_the_names_close_to_it(client, dataset_id, checkpoint):
    response = _submit(
        client,
        dataset_id=dataset_id,
        mmdet_config="faster-rcnn_r50_fpn_1x_cocoo",
        checkpoint=str(checkpoint),
    )
    detail = _detail(response)
    assert "is not a config of the installed mmdet" in detail
    assert f"did you mean {KNOWN_CONFIG}" in detail


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("/etc/passwd", "outside the allowed data roots"),
        ("~/model.pth", "starts with '~'"),
        ("{data_root}/../model.pth", "outside the allowed data roots"),
        ("{data_root}/evaluate-api", "is not a file"),
        ("{data_root}/evaluate-api/missing.pth", "is not a file"),
    ],
)
def test_a_checkpoint_outside_the_roots_or_not_a_file_is_422(
    client, dataset_id, checkpoint, data_root, where, expected
):
    path = where.format(data_root=data_root)
    spec = {"detector": "faster_rcnn", "backbone": "resnet18", "checkpoint": path}
    assert expected in _detail(_submit(client, dataset_id=dataset_id, **spec))


def test_a_succeeded_finetune_is_queued_for_scoring(client, db, dataset_id, own_queue):
    source = factories.finished_job(db, dataset_id=dataset_id)
    response = _submit(client, dataset_id=dataset_id, source_job_id=source.id, name="again")
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["kind"] == "evaluate" and job["status"] == "queued"
    assert job["parent_id"] == source.id and job["dataset_id"] == dataset_id
    assert job["spec"]["batch_size"] == 1 and job["spec"]["image_scale"] is None
    assert redis.Redis.from_url(os.environ["DETLAB_BROKER_URL"]).llen(own_queue) == 1


def test_a_checkpoint_under_the_artifact_root_is_accepted_resolved(
    client, dataset_id, lab_env, own_queue
):
    artifacts = Path(lab_env["DETLAB_ARTIFACT_ROOT"])
    (artifacts / "exports").mkdir(parents=True, exist_ok=True)
    (artifacts / "exports" / "model.pth").write_bytes(b"weights")
    response = _submit(
        client,
        dataset_id=dataset_id,
        mmdet_config=KNOWN_CONFIG,
        checkpoint=f"{artifacts}/exports/../exports/model.pth",
    )
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["spec"]["checkpoint"] == str((artifacts / "exports" / "model.pth").resolve())
    assert job["spec"]["mmdet_config"] == KNOWN_CONFIG and job["parent_id"] is None

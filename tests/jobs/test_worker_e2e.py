"""Fine-tune jobs through a real Celery worker process, real Redis, Postgres and mmdet on CPU."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from importlib import metadata
from pathlib import Path

import factories
import pytest
import torch

TINY = factories.TINY_TRAINING


@pytest.fixture(scope="module")
def dataset_id(api, shapes):
    response = api.post("/datasets", json={"name": "shapes-e2e", **factories.dataset_files(shapes)})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_a_replicate_group_of_three_tiny_jobs_shows_mean_spread_and_n(
    api, worker, wait_job, dataset_id
):
    spec = {**TINY, "dataset_id": dataset_id, "iterations": 20, "eval_interval": 20}
    first = api.post("/jobs", json={**spec, "repeats": 3, "seed": 5, "name": "rep"}).json()
    ids = first["group_job_ids"]
    assert len(ids) == 3 and first["group_id"] == ids[0]
    jobs = [wait_job(job_id, until=_finished) for job_id in ids]
    assert [job["status"] for job in jobs] == ["succeeded"] * 3, [j["error"] for j in jobs]
    assert [job["spec"]["seed"] for job in jobs] == [5, 6, 7]

    group = api.get(f"/groups/{ids[0]}").json()
    mean_ap = group["metrics"]["bbox_mAP"]
    values = [run["bbox_mAP"] for run in group["runs"]]
    assert mean_ap["n"] == 3 and mean_ap["mean"] == pytest.approx(sum(values) / 3)
    assert mean_ap["std"] is not None and mean_ap["val_se"] is not None
    board = api.get("/leaderboard", params={"dataset": dataset_id, "group": True}).json()
    row = next(r for r in board["items"] if r["group_id"] == ids[0])
    assert row["replicates"]["n"] == 3 and row["replicates"]["seeds"] == [5, 6, 7]


def _finished(job: dict) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


def _series(api, job_id: int, key: str) -> dict:
    series = api.get(f"/jobs/{job_id}/metrics", params={"key": key}).json()["series"]
    assert len(series) == 1, series
    return series[0]


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_tiny_job_succeeds_with_metrics_evaluation_and_leaderboard_row(
    api, worker, wait_job, dataset_id, lab_env
):
    spec = {
        **TINY,
        "dataset_id": dataset_id,
        "iterations": 60,
        "eval_interval": 60,
        "name": "tiny-r18",
    }
    job = api.post("/jobs", json=spec).json()
    job = wait_job(job["id"], until=_finished)
    assert job["status"] == "succeeded", job["error"]
    assert job["progress_iter"] == job["progress_total"] == 60

    loss = _series(api, job["id"], "train/loss")
    assert loss["steps"] == list(range(1, 61))
    first, last = loss["values"][:10], loss["values"][-10:]
    assert sum(last) / len(last) < 0.8 * sum(first) / len(first), loss["values"]
    keys = {s["key"] for s in api.get(f"/jobs/{job['id']}/metrics").json()["series"]}
    assert {
        "train/loss_cls",
        "train/loss_bbox",
        "train/loss_rpn_cls",
        "train/lr",
        "val/bbox_mAP",
    } <= keys

    evaluation = api.get(f"/jobs/{job['id']}/evaluation").json()
    assert 0.0 <= evaluation["bbox_mAP"] <= 1.0
    assert Path(evaluation["predictions_path"]).is_file()
    assert set(evaluation["per_class_ap"]) == {"square", "rectangle", "circle", "ellipse"}

    analysis = evaluation["analysis"]
    assert sum(analysis["counts"].values()) > 0 and "classification" in analysis["dAP"]
    worst = api.get(f"/jobs/{job['id']}/images", params={"sort": "worst", "limit": 5}).json()
    assert worst["total"] == 12 and len(worst["items"]) == 5
    image_id = worst["items"][0]["image_id"]
    overlay = api.get(f"/jobs/{job['id']}/images/{image_id}/overlay.png")
    assert overlay.status_code == 200 and overlay.content[:8] == b"\x89PNG\r\n\x1a\n"

    config = api.get(f"/jobs/{job['id']}/config").text
    assert "type='FasterRCNN'" in config and "depth=18" in config
    rows = api.get("/leaderboard", params={"dataset": dataset_id}).json()["items"]
    row = next(r for r in rows if r["job_id"] == job["id"])
    assert row["backbone"] == "resnet18" and row["init"] == "scratch"
    assert row["bbox_mAP"] == evaluation["bbox_mAP"]

    # its reproducibility record: this environment, the dataset's files, the config as saved
    record = job["record"]
    assert record["torch"] == torch.__version__ and record["mmdet"] == metadata.version("mmdet")
    assert record["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    dataset = api.get(f"/datasets/{dataset_id}").json()
    assert record["train_ann_sha256"] == _sha256(dataset["train_ann"])
    assert record["val_ann_sha256"] == _sha256(dataset["val_ann"])
    assert record["train_images_sha256"] and record["val_images_sha256"]
    job_dir = Path(lab_env["DETLAB_ARTIFACT_ROOT"]).resolve() / "jobs" / str(job["id"])
    hashed = config.replace(f"{job_dir}/", "{job_dir}/").encode()
    assert record["config_sha256"] == hashlib.sha256(hashed).hexdigest()
    assert (record["seed"], record["deterministic"], record["init_weights"]) == (0, False, None)
    for field in ("detlab_version", "python", "torchvision", "mmcv", "mmengine", "mmpretrain"):
        assert record[field], field
    assert row["record_differs"] == []  # every run here ran in this one environment


def test_cancel_a_running_job_keeps_its_metrics(api, worker, wait_job, dataset_id):
    spec = {**TINY, "dataset_id": dataset_id, "iterations": 5000, "eval_interval": 5000}
    job = api.post("/jobs", json=spec).json()
    wait_job(job["id"], until=lambda j: j["status"] == "running" and j["progress_iter"] >= 3)
    asked = time.monotonic()
    assert api.post(f"/jobs/{job['id']}/cancel").json()["cancel_requested"] is True
    job = wait_job(job["id"], until=_finished, timeout=60)
    took = time.monotonic() - asked
    assert job["status"] == "cancelled", job
    assert took < 15, f"cancel took {took:.1f}s"
    assert len(_series(api, job["id"], "train/loss")["values"]) >= 3


def test_corrupt_checkpoint_fails_with_a_message(api, worker, wait_job, dataset_id, data_root):
    corrupt = data_root / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 this is not a checkpoint" * 10)
    spec = {
        **TINY,
        "dataset_id": dataset_id,
        "iterations": 5,
        "warmup_iters": 1,
        "norm": "bn",
        "init": {"checkpoint": str(corrupt), "prefix": "module.encoder_q."},
    }
    job = wait_job(api.post("/jobs", json=spec).json()["id"], until=_finished, timeout=120)
    assert job["status"] == "failed"
    assert "backbone init failed" in job["error"] and "corrupt.pth" in job["error"]


def test_killed_worker_child_resumes_from_checkpoint(api, worker, wait_job, dataset_id, lab_env):
    spec = {
        **TINY,
        "dataset_id": dataset_id,
        "iterations": 40,
        "eval_interval": 40,
        "checkpoint_interval": 10,
    }
    job = api.post("/jobs", json=spec).json()
    checkpoint = Path(lab_env["DETLAB_ARTIFACT_ROOT"]) / "jobs" / str(job["id"]) / "work"
    wait_job(
        job["id"],
        until=lambda j: j["progress_iter"] >= 14 and (checkpoint / "iter_10.pth").is_file(),
    )
    children = subprocess.run(["pgrep", "-P", str(worker.pid)], capture_output=True, text=True)
    pids = [int(pid) for pid in children.stdout.split()]
    assert pids, "the worker has no child process running the job"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)  # the training process dies without any cleanup
    job = wait_job(job["id"], until=_finished)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2
    steps = _series(api, job["id"], "train/loss")["steps"]
    # resumed at iteration 10: steps 1..10 were written once, never by a restart from zero,
    # and the steps the killed attempt wrote after its checkpoint were replaced, not doubled
    assert steps == list(range(1, 41))


def test_jobs_whose_messages_were_lost_all_run_once_when_a_worker_starts(
    api, wait_job, dataset_id, lab_env, lab_home, redis_url
):
    """Jobs queued, the broker's data deleted before any worker took them, then a worker is
    started: its reconciler sends their messages again and each job runs exactly once."""
    import uuid

    import redis
    from celery import Celery
    from conftest import start_worker, stop_worker

    from backend.config import Settings
    from backend.db import session_factory
    from backend.jobs import service as job_service
    from backend.jobs.spec import FinetuneSpec
    from backend.queue import TASK_NAME, celery_config

    queue = f"lost-{uuid.uuid4().hex[:8]}"
    env = {**lab_env, "DETLAB_QUEUE": queue}
    spec = FinetuneSpec.model_validate(
        {**TINY, "dataset_id": dataset_id, "iterations": 2, "warmup_iters": 1}
    )
    with session_factory()() as session:
        ids = [
            job.id
            for _ in range(2)
            for job in job_service.create(session=session, spec=spec, roots=[], queue=queue)
        ]
    producer = Celery("lost-test")
    producer.conf.update(celery_config(Settings(queue=queue)))
    for job_id in ids:
        producer.send_task(TASK_NAME, args=[job_id])
    broker = redis.Redis.from_url(redis_url)
    assert broker.llen(queue) == 2
    broker.delete(queue)  # the broker loses its data
    time.sleep(2.5)  # older than the reconciler's grace for messages on their way

    process = start_worker(env, lab_home / "worker-lost.log", "lost")
    try:
        jobs = [wait_job(job_id, until=_finished, timeout=300) for job_id in ids]
    finally:
        stop_worker(process)
    assert [job["status"] for job in jobs] == ["succeeded"] * 2, [j["error"] for j in jobs]
    assert [job["attempts"] for job in jobs] == [1, 1]  # each ran once
    started = [job["started_at"] for job in jobs]
    assert started == sorted(started)  # in submission order
    log = (lab_home / "worker-lost.log").read_text()
    assert "sent 2 message(s) the broker lacked" in log

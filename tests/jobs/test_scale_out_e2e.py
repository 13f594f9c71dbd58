"""Scaling out on CPU: two real Celery workers on a queue of their own, jobs across processes.

The workers here are CPU workers (no GPU on CI): a job of `gpus: 2` trains as 2 gloo processes
through mmengine's pytorch launcher, and two workers each run one job at once. Jobs are queued
through the jobs service on this module's queue (so the session's own worker never takes them)
and left unsent: the workers' reconciler sends their messages, as it does for any lost message.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import factories
import pytest
from conftest import start_worker, stop_worker
from sqlalchemy.orm import sessionmaker

from backend.jobs import service as job_service
from backend.jobs.spec import FinetuneSpec

TINY = factories.TINY_TRAINING


@pytest.fixture(scope="module")
def fleet_env(lab_env):
    return {**lab_env, "DETLAB_QUEUE": f"detlab-fleet-{uuid.uuid4().hex[:8]}"}


@pytest.fixture(scope="module")
def fleet(fleet_env, lab_home, pg_url, redis_url):
    """Two CPU workers, w1 and w2, on the module's queue."""
    workers = {
        name: start_worker(fleet_env, lab_home / f"fleet-{name}.log", name) for name in ("w1", "w2")
    }
    yield workers
    for process in workers.values():
        if process.poll() is None:
            stop_worker(process)


@pytest.fixture(scope="module")
def fleet_dataset(api, shapes):
    response = api.post(
        "/datasets", json={"name": "shapes-fleet", **factories.dataset_files(shapes)}
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.fixture(scope="module")
def submit(pg_engine, fleet_env, lab_env):
    """submit(**spec): a committed fine-tune job on the module's queue, left for the workers'
    reconciler to send; its id."""
    sessions = sessionmaker(bind=pg_engine, expire_on_commit=False)

    def make(**fields) -> int:
        spec = FinetuneSpec.model_validate({**TINY, **fields})
        with sessions() as session:
            (job,) = job_service.create(
                session=session,
                spec=spec,
                roots=[Path(lab_env["DETLAB_DATA_ROOTS"])],
                queue=fleet_env["DETLAB_QUEUE"],
            )
            job_service.mark_unsent(session=session, job_ids=[job.id])
            return job.id

    return make


def _finished(job: dict) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


def test_two_workers_run_two_jobs_at_once_and_list_themselves(
    api, fleet, fleet_dataset, submit, wait_job
):
    ids = [submit(dataset_id=fleet_dataset, iterations=20, eval_interval=20) for _ in range(2)]
    together = set()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        jobs = [api.get(f"/jobs/{job_id}").json() for job_id in ids]
        if all(job["status"] == "running" for job in jobs):
            together = {job["worker_host"] for job in jobs}
            break
        assert not any(_finished(job) for job in jobs), "a job ended before both ran at once"
        time.sleep(0.3)
    assert len(together) == 2 and {name.split("@")[0] for name in together} == {"w1", "w2"}
    assert all(job["devices"] == ["cpu"] for job in jobs)

    workers = api.get("/workers").json()["items"]
    mine = {w["name"].split("@")[0]: w for w in workers if w["name"] in together}
    assert set(mine) == {"w1", "w2"}
    for worker in mine.values():
        assert worker["state"] == "alive" and worker["heartbeat_age_s"] < 15
        assert worker["gpus"] == [] and worker["max_job_gpus"] == 8
        assert [job["id"] for job in worker["jobs"]] in ([ids[0]], [ids[1]])

    # two jobs share the cores: on a busy 2-core machine that is slow
    finished = [wait_job(job_id, until=_finished, timeout=900) for job_id in ids]
    assert [job["status"] for job in finished] == ["succeeded"] * 2, [j["error"] for j in finished]
    assert all(job["devices"] is None for job in finished)  # released at the end


def test_a_two_process_job_survives_its_worker_and_resumes_in_both_processes(
    api, fleet, fleet_dataset, submit, wait_job, fleet_env, lab_home, lab_env
):
    """A `gpus: 2` job trains as 2 gloo processes; killing its worker mid-run kills both, and
    the other worker resumes it in 2 processes from the last checkpoint, each step once."""
    job_id = submit(
        dataset_id=fleet_dataset,
        iterations=30,
        eval_interval=30,
        checkpoint_interval=10,
        gpus=2,
        lr=0.004,
    )
    work = Path(lab_env["DETLAB_ARTIFACT_ROOT"]) / "jobs" / str(job_id) / "work"
    job = wait_job(
        job_id,
        until=lambda j: j["progress_iter"] >= 14 and (work / "iter_10.pth").is_file(),
        timeout=900,
    )
    victim = job["worker_host"].split("@")[0]
    survivor = "w2" if victim == "w1" else "w1"
    process = fleet[victim]
    children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True)
    for pid in [process.pid, *map(int, children.stdout.split())]:
        os.kill(pid, signal.SIGKILL)  # the whole worker dies without any cleanup
    process.wait()
    # its two training processes die with it (PR_SET_PDEATHSIG), leaving nothing on the cores
    first = f"worker.rank {work}/ranks-attempt1/"
    deadline = time.monotonic() + 30
    while subprocess.run(["pgrep", "-f", first], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "a rank of the killed worker is still running"
        time.sleep(0.5)

    done = wait_job(job_id, until=_finished, timeout=900)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2 and done["worker_host"].split("@")[0] == survivor
    series = api.get(f"/jobs/{job_id}/metrics", params={"key": "train/loss"}).json()["series"]
    assert series[0]["steps"] == list(range(1, 31))  # rank 0 alone wrote them, none twice
    for attempt in (1, 2):  # two processes trained in each attempt
        assert (work / f"ranks-attempt{attempt}" / "task.json").is_file()
    assert sorted(p.name for p in (work / "ranks-attempt2").glob("outcome*.json")) == [
        "outcome0.json",
        "outcome1.json",
    ]
    config = api.get(f"/jobs/{job_id}/config").text
    assert "world_size = 2" in config and "launcher = 'pytorch'" in config
    assert "backend='gloo'" in config and "total_batch_size=4" in config
    assert "lr=0.008" in config  # 2 x 0.004: linear in the total batch
    assert api.get(f"/jobs/{job_id}/evaluation").json()["bbox_mAP"] >= 0

    workers = api.get("/workers").json()["items"]
    states = {w["name"].split("@")[0]: w["state"] for w in workers if "@" in w["name"]}
    assert states[victim] == "stale" and states[survivor] == "alive"
    fleet[victim] = start_worker(fleet_env, lab_home / f"fleet-{victim}-2.log", victim)


def test_cancelling_a_two_process_job_stops_every_process(
    api, fleet, fleet_dataset, submit, wait_job, lab_env
):
    job_id = submit(dataset_id=fleet_dataset, iterations=400, eval_interval=400, gpus=2)
    wait_job(job_id, until=lambda j: j["progress_iter"] >= 2)
    assert api.post(f"/jobs/{job_id}/cancel").status_code == 200
    job = wait_job(job_id, until=_finished, timeout=120)
    assert job["status"] == "cancelled" and "cancelled by request" in job["error"]
    task = Path(lab_env["DETLAB_ARTIFACT_ROOT"]) / "jobs" / str(job_id) / "work"
    ranks = subprocess.run(["pgrep", "-f", f"worker.rank {task}"], capture_output=True, text=True)
    assert ranks.stdout.strip() == ""  # neither rank is left training

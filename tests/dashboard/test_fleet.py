"""The Fleet page with AppTest against a real API process: a section per worker with its state
(a stale one marked), its GPUs busy or idle with the job on each linked to its run, a CPU
worker's running jobs, and stopped workers shown only when asked.

Workers register themselves (there is no route to add one), so the workers and their running
jobs are written to the session's database as the workers' service and the jobs' worker leave
them, on a queue no worker serves (no reconciler touches them), and removed afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import factories
import pytest
from dashboard_seed import open_page, texts
from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from backend.db import utcnow
from backend.jobs.models import Job, JobStatus
from backend.workers import service
from backend.workers.models import Worker

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there
# no worker serves it: the running jobs below are left alone by every reconciler
IDLE_QUEUE = f"fleet-idle-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Fleet:
    gpu: str  # two GPUs, GPU 1 running `gpu_job`
    cpu: str  # running `cpu_job`
    stale: str  # last heartbeat long ago
    stopped: str  # shut down cleanly
    gpu_job: Job
    cpu_job: Job


@pytest.fixture
def fleet(pg_engine) -> Iterator[Fleet]:
    tag = uuid.uuid4().hex[:6]
    names = {kind: f"{kind}-{tag}@node" for kind in ("gpu", "cpu", "stale", "stopped")}
    gpus = [{"index": i, "name": "NVIDIA H200", "memory_mb": 143771} for i in range(2)]
    with Session(pg_engine, expire_on_commit=False) as session:
        for kind, name in names.items():
            service.register(
                session=session,
                name=name,
                host=f"node-{kind}",
                pid=4242,
                gpus=[] if kind == "cpu" else gpus,
                queues=[IDLE_QUEUE],
                slots=1 if kind == "cpu" else 2,
                max_job_gpus=2,
                version="0.1.0",
            )
        session.execute(
            update(Worker)
            .where(Worker.name == names["stale"])
            .values(heartbeat_at=utcnow() - timedelta(hours=1))
        )
        session.commit()
        service.stop(session=session, name=names["stopped"])
        running = {"status": JobStatus.running, "queue": IDLE_QUEUE}
        gpu_job = factories.job(
            session,
            name=f"fleet-gpu-{tag}",
            worker_host=names["gpu"],
            devices=["1"],
            progress_iter=12,
            progress_total=30,
            **running,
        )
        cpu_job = factories.job(
            session, name=f"fleet-cpu-{tag}", worker_host=names["cpu"], devices=["cpu"], **running
        )
    yield Fleet(**names, gpu_job=gpu_job, cpu_job=cpu_job)
    with pg_engine.begin() as connection:
        connection.execute(delete(Job).where(Job.id.in_([gpu_job.id, cpu_job.id])))
        connection.execute(delete(Worker).where(Worker.name.in_(names.values())))


@pytest.fixture
def signed_in(api, admin_token, monkeypatch) -> None:
    monkeypatch.setenv("DETLAB_API_URL", str(api.base_url))
    monkeypatch.setenv("DETLAB_API_TOKEN", admin_token)


def headings(at) -> dict[str, str]:
    """Worker name -> its section's heading."""
    return {
        str(m.value).split()[1]: str(m.value)
        for m in at.markdown
        if str(m.value).startswith("#### ")
    }


def runs(table) -> list[str | None]:
    """A GPU table's run links (None: idle)."""
    return [link if isinstance(link, str) else None for link in table["run"]]


def links(at) -> dict[str, str]:
    return {
        link.proto.label: f"{link.proto.page}?{link.proto.query_string}"
        for link in at.get("page_link")
    }


def test_fleet_shows_each_worker_its_gpus_and_what_runs_there(signed_in, fleet):
    at = open_page("fleet")
    assert not at.exception and not at.error
    shown = headings(at)
    assert "alive" in shown[fleet.gpu] and "alive" in shown[fleet.cpu]
    assert "stale" in shown[fleet.stale] and "alive" not in shown[fleet.stale]
    assert fleet.stopped not in shown  # stopped: hidden unless asked
    assert f"host node-gpu · pid 4242 · version 0.1.0 · queues {IDLE_QUEUE}" in texts(at.caption)
    assert any("No heartbeat for 1 h 00 min" in str(w.value) for w in at.warning)

    # the GPU worker's table: GPU 0 idle, GPU 1 busy with its job, linked to the run page
    busy = [None, f"run?job={fleet.gpu_job.id}"]
    (table,) = [t.value for t in at.dataframe if runs(t.value) == busy]
    assert list(table["GPU"]) == [0, 1]
    assert list(table["state"]) == ["idle", "busy"]
    assert list(table["job"]) == ["", fleet.gpu_job.name]
    assert list(table["memory"]) == ["140 GiB", "140 GiB"]
    assert "1 of 2 GPUs busy" in texts(at.caption)

    # what runs where: each running job links to its run, the CPU worker's on its CPU
    found = links(at)
    for job in (fleet.gpu_job, fleet.cpu_job):
        assert found[f"#{job.id} · {job.name}"].endswith(f"run?job={job.id}")
    assert "1 process(es) on GPU 1 · iteration 12 / 30" in texts(at.caption)
    assert "1 process(es) on CPU · starting…" in texts(at.caption)
    assert "CPU worker: up to 1 job(s) at once, each of up to 2 process(es)" in texts(at.caption)

    at.toggle(key="fleet-stopped").set_value(True).run()
    assert "stopped" in headings(at)[fleet.stopped]


def test_fleet_says_plainly_when_the_api_is_unreachable(monkeypatch):
    monkeypatch.setenv("DETLAB_API_URL", UNREACHABLE)
    monkeypatch.setenv("DETLAB_API_TOKEN", "dl_any")  # signed in: the page itself reads
    at = open_page("fleet")
    assert not at.exception
    message = texts(at.error)
    assert f"the DetLab API at `{UNREACHABLE}` did not answer" in message
    assert f"URL tried: `{UNREACHABLE}/workers" in message

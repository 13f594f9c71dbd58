"""The fleet (issue 18): workers register, beat and stop; GET /workers says which are alive,
stale or stopped, which GPU runs which job; hosts_that_fit says where a job could start now."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import factories
import pytest
from sqlalchemy import delete, event, func, select, update
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db import utcnow
from backend.jobs.models import JobStatus
from backend.workers import service
from backend.workers.models import Worker

H200 = {"name": "NVIDIA H200", "memory_mb": 143771}


def _name(prefix: str = "detlab") -> str:
    """A worker name no other test (nor the session's own worker) has."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}@node"


def _register(db: Session, name: str, *, gpus: int = 2, **changes) -> Worker:
    """A worker of `gpus` H200s (0: a CPU worker of one slot) on the queue "train"."""
    fields = {
        "host": "node",
        "pid": 100,
        "gpus": [{"index": i, **H200} for i in range(gpus)],
        "queues": ["train"],
        "slots": max(gpus, 1),
        "max_job_gpus": max(gpus, 1),
        "version": "0.1.0",
        **changes,
    }
    return service.register(session=db, name=name, **fields)


def _age(db: Session, name: str, seconds: float) -> None:
    """Make the worker's last heartbeat `seconds` old."""
    db.execute(
        update(Worker)
        .where(Worker.name == name)
        .values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
    )
    db.commit()


def _running(db: Session, worker: str, devices: list[str], **columns):
    return factories.job(
        db,
        status=JobStatus.running,
        worker_host=worker,
        devices=devices,
        gpus=len(devices),
        **columns,
    )


def _listed(client, **params) -> dict[str, dict]:
    response = client.get("/workers", params=params)
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["total"] == len(page["items"])
    return {worker["name"]: worker for worker in page["items"]}


def test_a_worker_registers_and_a_restart_reuses_its_row(client, db):
    name = _name()
    first = _register(db, name, pid=100, version="0.1.0")
    service.stop(session=db, name=name)
    again = _register(db, name, pid=200, version="0.2.0", queues=["train", "eval"])
    assert again.id == first.id
    assert db.scalar(select(func.count()).where(Worker.name == name)) == 1

    shown = _listed(client)[name]
    assert (shown["pid"], shown["version"], shown["queues"]) == (200, "0.2.0", ["train", "eval"])
    assert shown["state"] == "alive" and shown["stopped_at"] is None  # the restart cleared it
    assert shown["host"] == "node" and shown["slots"] == 2 and shown["max_job_gpus"] == 2
    assert shown["gpus"] == [
        {"index": 0, **H200, "job_id": None},
        {"index": 1, **H200, "job_id": None},
    ]
    assert shown["jobs"] == [] and 0 <= shown["heartbeat_age_s"] < 5


def test_registering_the_same_name_at_once_leaves_one_row(pg_engine):
    """Committed from several connections at once, as restarted processes would: a lookup
    then an insert would fail here on the unique name."""
    names = [_name("race") for _ in range(5)]
    threads = 8
    barrier = threading.Barrier(threads)

    def register(pid: int) -> list[int]:
        ids = []
        with Session(pg_engine, expire_on_commit=False) as session:
            for name in names:
                session.connection()  # connected before the start, so all start together
                barrier.wait(timeout=10)
                ids.append(_register(session, name, pid=pid).id)
        return ids

    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = list(pool.map(register, range(1, threads + 1)))
        with Session(pg_engine) as session:
            rows = session.scalars(select(Worker).where(Worker.name.in_(names))).all()
        assert sorted(row.name for row in rows) == sorted(names)
        for position, row in enumerate(sorted(rows, key=lambda r: names.index(r.name))):
            assert {ids[position] for ids in results} == {row.id}
            assert 1 <= row.pid <= threads
    finally:
        with pg_engine.begin() as connection:
            connection.execute(delete(Worker).where(Worker.name.in_(names)))


def test_a_worker_without_heartbeat_is_stale_until_it_beats(client, db):
    stale_s = get_settings().heartbeat_stale_s
    name = _name()
    _register(db, name)
    _age(db, name, stale_s + 5)
    shown = _listed(client)[name]
    assert shown["state"] == "stale"
    assert shown["heartbeat_age_s"] >= stale_s + 5

    assert service.beat(session=db, name=name) is True
    assert _listed(client)[name]["state"] == "alive"
    # a worker whose row is gone is told to register again
    assert service.beat(session=db, name=_name("unknown")) is False


def test_stopped_workers_are_listed_only_when_asked(client, db):
    running, stopped = _name("running"), _name("stopped")
    _register(db, running)
    _register(db, stopped)
    service.stop(session=db, name=stopped)

    default = _listed(client)
    assert running in default and stopped not in default
    everyone = _listed(client, include_stopped=True)
    assert everyone[stopped]["state"] == "stopped" and everyone[stopped]["stopped_at"]
    assert everyone[running]["state"] == "alive"


def test_a_running_job_makes_its_gpu_busy_and_is_listed(client, db):
    name, other = _name(), _name("other")
    _register(db, name, gpus=2)
    _register(db, other, gpus=2)
    owner, _ = factories.user(db, role="member")
    job = _running(db, name, ["1"], owner_id=owner.id, progress_iter=7, progress_total=30)
    # neither a finished job of this worker nor a running job of another counts
    factories.job(db, status=JobStatus.succeeded, worker_host=name, devices=["0"])
    elsewhere = _running(db, other, ["0"])

    shown = _listed(client)
    gpus = {gpu["index"]: gpu["job_id"] for gpu in shown[name]["gpus"]}
    assert gpus == {0: None, 1: job.id}
    assert shown[name]["jobs"] == [
        {
            "id": job.id,
            "name": job.name,
            "kind": "finetune",
            "gpus": 1,
            "devices": ["1"],
            "progress_iter": 7,
            "progress_total": 30,
            "owner": owner.name,
        }
    ]
    assert {gpu["index"]: gpu["job_id"] for gpu in shown[other]["gpus"]} == {
        0: elsewhere.id,
        1: None,
    }


def test_a_cpu_worker_lists_its_running_jobs(client, db):
    name = _name("cpu")
    _register(db, name, gpus=0)
    job = _running(db, name, ["cpu"])
    shown = _listed(client)[name]
    assert shown["gpus"] == []
    assert [(j["id"], j["devices"]) for j in shown["jobs"]] == [(job.id, ["cpu"])]


def test_the_fleet_is_read_in_two_queries_however_many_workers(db):
    names = [_name() for _ in range(4)]
    for name in names:
        _register(db, name)
        owner, _ = factories.user(db, role="member")
        _running(db, name, ["0"], owner_id=owner.id)
    db.expunge_all()  # as a request's fresh session: nothing loaded yet
    statements: list[str] = []
    connection = db.connection()
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(connection, "before_cursor_execute", listener)
    try:
        workers = service.list_workers(session=db, stale_s=60)
    finally:
        event.remove(connection, "before_cursor_execute", listener)
    assert len(statements) == 2, statements
    listed = {worker.name: worker for worker in workers}
    assert all(listed[name].jobs[0].owner for name in names)


def test_hosts_that_fit_counts_free_gpus(db):
    stale_s = 60
    big, small, busy = _name("big"), _name("small"), _name("busy")
    _register(db, big, gpus=4)
    _register(db, small, gpus=1)
    _register(db, busy, gpus=2)
    _running(db, big, ["0", "1"])  # two of its four GPUs free
    _running(db, busy, ["0"])
    _running(db, busy, ["1"])  # none free

    def fit(gpus: int, **kwargs) -> set[str]:
        found = service.hosts_that_fit(
            session=db, queue="train", gpus=gpus, stale_s=stale_s, **kwargs
        )
        return set(found) & {big, small, busy}

    assert fit(1) == {big, small}
    assert fit(2) == {big}
    assert fit(3) == set()
    assert fit(1, exclude=big) == {small}
    assert service.hosts_that_fit(session=db, queue="other", gpus=1, stale_s=stale_s) == []

    _age(db, small, stale_s + 1)  # stale: it may be dead
    assert fit(1) == {big}
    service.stop(session=db, name=big)
    assert fit(1) == set()


def test_hosts_that_fit_on_cpu_workers_counts_slots_and_processes(db):
    one, two = _name("cpu-one"), _name("cpu-two")
    _register(db, one, gpus=0, slots=1, max_job_gpus=1)
    _register(db, two, gpus=0, slots=2, max_job_gpus=4, queues=["train", "eval"])

    def fit(gpus: int, queue: str = "train", **kwargs) -> set[str]:
        found = service.hosts_that_fit(session=db, queue=queue, gpus=gpus, stale_s=60, **kwargs)
        return set(found) & {one, two}

    assert fit(1) == {one, two}
    assert fit(4) == {two} and fit(5) == set()  # max_job_gpus processes at most
    assert fit(1, queue="eval") == {two}
    assert fit(1, exclude=two) == {one}
    _running(db, one, ["cpu"])
    _running(db, two, ["cpu"])
    assert fit(1) == {two}  # `one` has no slot left, `two` one of two
    _running(db, two, ["cpu"])
    assert fit(1) == set()


@pytest.mark.parametrize("role", ["viewer", "member"])
def test_every_role_reads_the_fleet_and_no_token_is_refused(db, client_as, role):
    name = _name()
    _register(db, name)
    _, token = factories.user(db, role=role)
    assert name in _listed(client_as(token))
    anonymous = client_as(None).get("/workers")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"

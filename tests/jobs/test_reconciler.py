"""The database is the queue: the reconciler makes the broker agree with it.

Real Postgres and real Redis, on a queue of the test's own (so no worker of the session takes
its messages); the jobs are committed, because the reconciler and the claims run in sessions of
their own, and removed afterwards.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from backend.config import Settings, get_settings
from backend.db import utcnow
from backend.jobs import service as job_service
from backend.jobs.models import Job, JobKind, JobStatus
from backend.jobs.reconciler import reconcile
from backend.queue import enqueue, get_client, waiting_messages


@pytest.fixture
def lab(pg_url, redis_url, monkeypatch) -> Iterator[tuple[Settings, sessionmaker[Session]]]:
    """Settings on a private queue, sessions on the test database, cleaned up afterwards."""
    from backend.db import get_engine, session_factory

    name = f"reconcile-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("DETLAB_QUEUE", name)
    for cached in (get_settings, get_client):
        cached.cache_clear()
    settings = get_settings()
    sessions = session_factory()
    yield settings, sessions
    with sessions() as session:
        session.execute(delete(Job).where(Job.queue == name))
        session.commit()
    redis.Redis.from_url(redis_url).delete(name)
    for cached in (get_settings, get_client):
        cached.cache_clear()
    get_engine().dispose()


def _queued(sessions: sessionmaker[Session], settings: Settings, n: int, age_s: float) -> list[int]:
    """n committed queued jobs of the settings' queue, queued and sent age_s ago."""
    then = utcnow() - timedelta(seconds=age_s)
    with sessions() as session:
        jobs = [
            Job(
                kind=JobKind.pretrain,
                status=JobStatus.queued,
                spec={},
                queue=settings.queue,
                queued_at=then + timedelta(milliseconds=i),
                sent_at=then,
            )
            for i in range(n)
        ]
        session.add_all(jobs)
        session.commit()
        return [job.id for job in jobs]


def _drain(sessions: sessionmaker[Session], settings: Settings, workers: int) -> list[int]:
    """Claim until nothing is left, from `workers` threads at once; every job id claimed."""
    claimed: list[int] = []

    def work(host: str) -> None:
        while True:
            with sessions() as session:
                claim = job_service.claim(session=session, queue=settings.queue, host=host)
            if claim is None:
                return
            claimed.append(claim.job.id)

    threads = [threading.Thread(target=work, args=(f"gpu-{i}",)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return claimed


def test_jobs_whose_messages_the_broker_lost_are_sent_again_and_each_runs_once(lab, redis_url):
    settings, sessions = lab
    ids = _queued(sessions, settings, 3, age_s=600)
    for job_id in ids:
        enqueue(job_id)
    assert waiting_messages(settings) == 3
    assert reconcile(sessions=sessions, settings=settings).resent == []  # nothing is missing

    redis.Redis.from_url(redis_url).delete(settings.queue)  # the broker's data is lost
    assert waiting_messages(settings) == 0
    done = reconcile(sessions=sessions, settings=settings)
    assert done.waiting == 0 and done.resent == ids
    assert waiting_messages(settings) == 3
    # a second pass right after finds the messages there and sends nothing
    assert reconcile(sessions=sessions, settings=settings).resent == []

    claimed = _drain(sessions, settings, workers=4)
    assert sorted(claimed) == ids  # all run, none twice


def test_young_jobs_are_left_to_the_message_on_its_way(lab):
    settings, sessions = lab
    _queued(sessions, settings, 2, age_s=0)
    assert reconcile(sessions=sessions, settings=settings).resent == []


def test_two_reconcilers_racing_send_each_lost_job_once(lab, redis_url):
    settings, sessions = lab
    ids = _queued(sessions, settings, 6, age_s=600)  # queued, their messages never arrived
    passes: list[list[int]] = []
    start = threading.Barrier(3)

    def one_pass() -> None:
        start.wait()
        passes.append(reconcile(sessions=sessions, settings=settings).resent)

    threads = [threading.Thread(target=one_pass) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sent = sorted(job_id for resent in passes for job_id in resent)
    assert sent == ids
    assert waiting_messages(settings) == 6
    assert sorted(_drain(sessions, settings, workers=3)) == ids


def test_a_job_whose_worker_stopped_beating_is_taken_over_on_any_host(lab):
    settings, sessions = lab
    (stale,) = _queued(sessions, settings, 1, age_s=600)
    with sessions() as session:
        old = job_service.claim(session=session, queue=settings.queue, host="gone-host")
        session.get(Job, stale).heartbeat_at = utcnow() - timedelta(
            seconds=settings.heartbeat_stale_s + 1
        )
        session.commit()

    done = reconcile(sessions=sessions, settings=settings)
    assert done.requeued == [stale] and done.resent == [stale]
    with sessions() as session:
        new = job_service.claim(session=session, queue=settings.queue, host="here")
    assert new.job.id == stale and new.resuming and new.token != old.token
    with sessions() as session:  # the old attempt, if it still lives, can no longer write
        assert not job_service.heartbeat(session=session, job_id=stale, token=old.token)


@pytest.fixture
def filesystem_broker(tmp_path, monkeypatch) -> None:
    """The embedded broker (kombu's filesystem transport), as the demo runs it."""
    monkeypatch.setenv("DETLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DETLAB_BROKER_URL", "filesystem://")


def test_jobs_run_in_submission_order_whatever_order_the_broker_delivers(filesystem_broker, lab):
    settings, sessions = lab
    settings.prepare_folders()
    ids = _queued(sessions, settings, 5, age_s=0)
    for job_id in reversed(ids):  # the messages arrive newest first
        enqueue(job_id)
    assert waiting_messages(settings) == 5

    order = []
    with get_client().connection_for_read() as connection:
        channel = connection.default_channel
        while (message := channel.basic_get(settings.queue)) is not None:
            named = message.decode()[0][0]  # the job the message names
            with sessions() as session:
                claim = job_service.claim(session=session, queue=settings.queue, host="w")
            order.append((named, claim.job.id))
            message.ack()
    assert [claimed for _, claimed in order] == ids  # oldest first, on every message
    assert [named for named, _ in order] != ids  # though the messages came in another order
    assert waiting_messages(settings) == 0


def test_a_worker_that_cannot_fit_what_waits_wakes_one_that_can(lab, tmp_path):
    """A 1-GPU worker woken for a 4-GPU job leaves it queued and sends the wake on, because
    the fleet shows a live worker with 4 free GPUs; with no such worker it sends nothing."""
    from backend.workers import service as workers_service
    from backend.workers.models import Worker
    from worker import runner
    from worker.devices import Gpu, WorkerDevices

    settings, sessions = lab
    (job_id,) = _queued(sessions, settings, 1, age_s=0)
    with sessions() as session:
        session.execute(Job.__table__.update().where(Job.id == job_id).values(gpus=4))
        session.commit()
    one_gpu = WorkerDevices(gpus=[Gpu("0", "test GPU", 1000)], lock_folder=tmp_path)
    key = f"{settings.worker_gpus}/{settings.worker_cpu_slots}"
    saved = runner._devices.get(key)
    runner._devices[key] = one_gpu
    try:
        assert runner.run_job(job_id, settings=settings, sessions=sessions, host="small@a") is None
        assert waiting_messages(settings) == 0  # nobody could take it: no spare wake
        with sessions() as session:
            workers_service.register(
                session=session,
                name="big@b",
                host="b",
                pid=1,
                gpus=[{"index": i, "name": "test GPU", "memory_mb": 1000} for i in range(4)],
                queues=[settings.queue],
                slots=4,
                max_job_gpus=4,
                version="test",
            )
        assert runner.run_job(job_id, settings=settings, sessions=sessions, host="small@a") is None
        assert waiting_messages(settings) == 1  # the wake went on, for big@b to take
        with sessions() as session:
            assert session.get(Job, job_id).status == JobStatus.queued
    finally:
        runner._devices.pop(key)
        if saved is not None:
            runner._devices[key] = saved
        with sessions() as session:
            session.execute(delete(Worker).where(Worker.name == "big@b"))
            session.commit()

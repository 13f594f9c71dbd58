"""A worker's writes ride out a dropped database connection, and give up after the grace.

Fault injection on the real Postgres: the backend process serving the worker's pooled
connection is terminated between two writes (pg_terminate_backend), as a database restart or
a network cut would; the pool is left without pre-ping so the next write meets the dead
connection.
"""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import create_engine, delete, select, text
from sqlalchemy.orm import Session, sessionmaker

from backend.jobs import service as job_service
from backend.jobs.models import Job, JobKind, JobStatus, MetricPoint
from worker.db_writes import DatabaseUnreachable, retrying


@pytest.fixture
def worker_sessions(pg_url):
    """A worker's sessions on a one-connection pool, and a committed running job."""
    engine = create_engine(pg_url, pool_size=1, max_overflow=0, pool_pre_ping=False)
    sessions = sessionmaker(bind=engine, expire_on_commit=False)
    with sessions() as session:
        job = Job(kind=JobKind.pretrain, status=JobStatus.running, spec={})
        session.add(job)
        session.commit()
    yield sessions, job.id
    with sessions() as session:  # committed rows must not leak into other tests
        session.execute(delete(MetricPoint).where(MetricPoint.job_id == job.id))
        session.execute(delete(Job).where(Job.id == job.id))
        session.commit()
    engine.dispose()


def _kill_pooled_connection(sessions: sessionmaker[Session], pg_url: str) -> None:
    with sessions() as session:
        pid = session.scalar(text("SELECT pg_backend_pid()"))
    admin_url = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def _write_points(sessions: sessionmaker[Session], job_id: int, steps: range):
    def write() -> bool:
        with sessions() as session:
            points = [{"key": "train/loss", "step": s, "epoch": None, "value": 1.0} for s in steps]
            return job_service.record_progress(session=session, job_id=job_id, points=points)

    return write


def test_a_metric_write_survives_a_dropped_connection(worker_sessions, pg_url):
    sessions, job_id = worker_sessions
    retrying(_write_points(sessions, job_id, range(1, 3)), grace_s=30, what="recording progress")
    _kill_pooled_connection(sessions, pg_url)

    # the first attempt meets the dead connection; the retry reconnects and writes
    retrying(_write_points(sessions, job_id, range(3, 5)), grace_s=30, what="recording progress")

    with sessions() as session:
        steps = session.scalars(
            select(MetricPoint.step).where(MetricPoint.job_id == job_id).order_by(MetricPoint.step)
        ).all()
    assert steps == [1, 2, 3, 4]


def test_past_the_grace_the_write_fails_naming_why(worker_sessions, pg_url):
    sessions, job_id = worker_sessions
    retrying(_write_points(sessions, job_id, range(1, 2)), grace_s=30, what="recording progress")
    _kill_pooled_connection(sessions, pg_url)

    with pytest.raises(DatabaseUnreachable, match="unreachable for more than 0 s while recording"):
        retrying(_write_points(sessions, job_id, range(2, 3)), grace_s=0, what="recording progress")


def test_a_bad_statement_is_not_retried():
    calls = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("not a connection problem")

    with pytest.raises(ValueError):
        retrying(broken, grace_s=30, what="testing")
    assert calls == [1]

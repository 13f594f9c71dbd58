"""Shared fixtures: a Postgres database built by the migrations, real Redis, a shapes dataset.

Postgres and Redis are required: when either is unreachable the run fails, it never skips.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN = os.environ.get(
    "DETLAB_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("DETLAB_TEST_REDIS", "redis://127.0.0.1:6379/15")


def _clear_caches() -> None:
    from backend.config import get_settings
    from backend.db import get_engine, session_factory
    from backend.queue import get_client

    for cached in (get_settings, get_engine, session_factory, get_client):
        cached.cache_clear()


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis is required at {REDIS_URL} and is unreachable: {exc}. Start it with: "
            "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save ''",
            pytrace=False,
        )
    redis.Redis.from_url(REDIS_URL).flushdb()
    return REDIS_URL


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh Postgres database for this test session, schema created by `alembic upgrade`."""
    name = f"detlab_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"Postgres is required at {POSTGRES_ADMIN} and is unreachable: {exc}. Start "
            "it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main "
            "start",
            pytrace=False,
        )
    admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    url = f"{base}/{name}"
    from backend.migrate import upgrade_head

    upgrade_head(url)
    yield url
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="session")
def lab_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("detlab")


@pytest.fixture(scope="session")
def data_root(lab_home: Path) -> Path:
    root = lab_home / "data"
    root.mkdir()
    return root


@pytest.fixture(scope="session", autouse=True)
def lab_env(lab_home: Path, data_root: Path, pg_url: str, redis_url: str) -> Iterator[dict]:
    """DETLAB_* variables for this process and for the worker processes tests start."""
    env = {
        "DETLAB_HOME": str(lab_home / "var"),
        "DETLAB_DATABASE_URL": pg_url,
        "DETLAB_BROKER_URL": redis_url,
        "DETLAB_DATA_ROOTS": str(data_root),
        "DETLAB_ARTIFACT_ROOT": str(lab_home / "artifacts"),
        # a queue of this session's own, so no other worker on the same Redis takes its jobs
        "DETLAB_QUEUE": f"detlab-test-{uuid.uuid4().hex[:8]}",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    _clear_caches()
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _clear_caches()


@pytest.fixture(scope="session")
def shapes(data_root: Path):
    """A small shapes dataset (128 px) under the allowed data root."""
    from backend.datasets.shapes import generate_shapes

    return generate_shapes(
        data_root / "shapes", seed=3, num_train=48, num_val=12, image_size=(128, 128), num_classes=4
    )


@pytest.fixture
def db(pg_url: str) -> Iterator[Session]:
    """A session inside a transaction that is rolled back after the test."""
    engine = create_engine(pg_url)
    with engine.connect() as connection:
        transaction = connection.begin()
        session = Session(
            bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
        )
        yield session
        session.close()
        transaction.rollback()
    engine.dispose()


@pytest.fixture
def client(db: Session):
    """The API over HTTP (in process), its requests in the test's rolled-back transaction."""
    from fastapi.testclient import TestClient

    from backend.db import get_session
    from backend.main import create_app

    app = create_app(migrate=False)
    app.dependency_overrides[get_session] = lambda: db
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def shapes_payload(shapes) -> dict[str, str]:
    """POST /datasets body for the shapes dataset."""
    return {
        "name": "shapes",
        "train_ann": str(shapes.train_ann),
        "val_ann": str(shapes.val_ann),
        "train_images": str(shapes.train_images),
        "val_images": str(shapes.val_images),
    }


@pytest.fixture(scope="session")
def worker(lab_env, lab_home):
    """A Celery worker process, as `celery -A worker.celery_app worker` starts it."""
    log_path = lab_home / "worker.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.celery_app",
            "worker",
            "--loglevel=INFO",
            "--hostname",
            "e2e@%h",
        ],
        cwd=ROOT,
        env={**os.environ, **lab_env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while "ready." not in log_path.read_text():
        assert process.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, "worker did not start:\n" + log_path.read_text()
        time.sleep(0.5)
    yield process
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


@pytest.fixture(scope="session")
def api(lab_env):
    """The API in its own process, as uvicorn serves it."""
    with socket.socket() as probe:  # a free port, so a stray server cannot answer instead
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "backend.main:app", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, **lab_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    deadline = time.monotonic() + 60
    while True:
        try:
            if client.get("/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, "API did not start"
        time.sleep(0.3)
    yield client
    process.terminate()
    process.wait(timeout=30)


FINISHED = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="session")
def wait_job(api):
    """wait_job(job_id, until=..., timeout=...): poll GET /jobs/{id} until the condition holds."""

    def wait(job_id: int, *, until=lambda job: job["status"] in FINISHED, timeout: float = 420):
        deadline = time.monotonic() + timeout
        while True:
            job = api.get(f"/jobs/{job_id}").json()
            if until(job):
                return job
            assert time.monotonic() < deadline, f"job {job_id} stuck: {job}"
            time.sleep(0.5)

    return wait

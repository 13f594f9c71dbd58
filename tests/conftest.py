"""Shared fixtures, in tiers.

Library tests need no service: every test gets DETLAB_* settings that point into a temporary
folder, and nothing here connects anywhere until a test asks for it. Tests that need Postgres
(`pg_url`, `db`, `client`, `dataset_id`) or Redis (`redis_url`, `client`) get a database created
once per session by the migrations and a transaction rolled back after each test; when either
server is unreachable those tests fail, they never skip.

The `worker` (a Celery worker process that trains) and `api` (uvicorn in its own process)
fixtures start processes; a test that uses either, directly or through another fixture, is
marked `e2e` at collection, so `-m "not e2e"` starts no process.
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
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN = os.environ.get(
    "DETLAB_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("DETLAB_TEST_REDIS", "redis://127.0.0.1:6379/15")
# The session's database: named up front so the settings can point at it, created only when a
# test asks for `pg_url`. Code that reaches for the database without asking fails on its absence.
TEST_DATABASE = f"detlab_test_{uuid.uuid4().hex[:10]}"
TEST_DATABASE_URL = (
    POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    + f"/{TEST_DATABASE}"
)
# The fixtures below that start processes; a test using either is e2e.
PROCESS_FIXTURES = ("api", "worker")


def _starts_a_process(item: pytest.Item) -> bool:
    """Whether the test uses this file's `api` or `worker`, however deep in its fixtures (a
    module's own fixture of the same name, such as test_weights_api's `api`, does not count)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    for name in PROCESS_FIXTURES:
        used = info.name2fixturedefs.get(name)
        if used and used[-1].func.__module__ == __name__:
            return True
    return False


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _starts_a_process(item):
            item.add_marker(pytest.mark.e2e)


def _clear_caches() -> None:
    from backend.config import get_settings
    from backend.db import get_engine, session_factory
    from backend.queue import get_client

    for cached in (get_settings, get_engine, session_factory, get_client):
        cached.cache_clear()


@pytest.fixture(scope="session")
def lab_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("detlab")


@pytest.fixture(scope="session")
def data_root(lab_home: Path) -> Path:
    root = lab_home / "data"
    root.mkdir()
    return root


@pytest.fixture(scope="session", autouse=True)
def lab_env(lab_home: Path, data_root: Path) -> Iterator[dict]:
    """DETLAB_* variables for this process and the processes tests start; connects nowhere.

    Autouse so that no test writes into the checkout (the default DETLAB_HOME is ./var).
    """
    env = {
        "DETLAB_HOME": str(lab_home / "var"),
        "DETLAB_DATABASE_URL": TEST_DATABASE_URL,
        "DETLAB_BROKER_URL": REDIS_URL,
        "DETLAB_DATA_ROOTS": str(data_root),
        "DETLAB_ARTIFACT_ROOT": str(lab_home / "artifacts"),
        # a queue of this session's own, so no other worker on the same Redis takes its jobs
        "DETLAB_QUEUE": f"detlab-test-{uuid.uuid4().hex[:8]}",
        # a dead attempt is taken over after 15 s without a heartbeat, checked every 2 s
        "DETLAB_HEARTBEAT_INTERVAL_S": "1",
        "DETLAB_HEARTBEAT_STALE_S": "15",
        "DETLAB_RECONCILE_INTERVAL_S": "2",
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
def redis_url() -> str:
    """The test Redis database; the test fails when Redis is unreachable.

    Never flushed: test sessions running at the same time share it, each on a queue of its own
    (DETLAB_QUEUE), and a flush would drop the jobs another session has queued.
    """
    problem = None
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        problem = str(exc)
    if problem is not None:  # failed outside the except block: one message, no traceback chain
        pytest.fail(
            f"Redis is required at {REDIS_URL} and is unreachable ({problem}). Start it with: "
            "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save ''",
            pytrace=False,
        )
    return REDIS_URL


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """The session's Postgres database, schema created by `alembic upgrade`; fails when
    Postgres is unreachable."""
    problem = None
    try:
        admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        problem = " ".join(str(exc).split())
    if problem is not None:
        pytest.fail(
            f"Postgres is required at {POSTGRES_ADMIN} and is unreachable ({problem}). Start "
            "it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main "
            "start",
            pytrace=False,
        )
    admin.execute(f'CREATE DATABASE "{TEST_DATABASE}"')
    from backend.migrate import upgrade_head

    upgrade_head(TEST_DATABASE_URL)
    yield TEST_DATABASE_URL
    from backend.users.callers import stop_all

    stop_all()  # this process's token-cache listeners, which would reconnect to a dropped database
    admin.execute(f'DROP DATABASE IF EXISTS "{TEST_DATABASE}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="session")
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = create_engine(pg_url)
    yield engine
    engine.dispose()


def _new_user(engine: Engine, role: str, name: str | None = None) -> tuple[str, str]:
    """A committed user of role with a fresh token: (name, token)."""
    from backend.users import service
    from backend.users.models import Role

    name = name or f"{role}-{uuid.uuid4().hex[:8]}"
    with Session(engine, expire_on_commit=False) as session:
        user = service.create_user(session=session, name=name, role=Role(role))
        _, secret = service.create_token(session=session, user=user, name="tests")
    return name, secret


@pytest.fixture(scope="session")
def admin_token(pg_engine: Engine) -> str:
    """The token of the session's admin, whom `client` and `api` act as."""
    return _new_user(pg_engine, "admin", "tests-admin")[1]


@pytest.fixture(scope="session")
def make_user(pg_engine: Engine):
    """make_user(role, name=None) -> (name, token): a committed user with a fresh token."""
    return lambda role, name=None: _new_user(pg_engine, role, name)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def db(pg_engine: Engine) -> Iterator[Session]:
    """A session inside a transaction that is rolled back after the test."""
    with pg_engine.connect() as connection:
        transaction = connection.begin()
        session = Session(
            bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
        )
        yield session
        session.close()
        transaction.rollback()


@pytest.fixture
def client_as(db: Session, redis_url: str):
    """client_as(token): the API over HTTP (in process) with that token (None: without one),
    its requests in the test's rolled-back transaction."""
    from fastapi.testclient import TestClient

    from backend.db import get_lazy_session, get_session
    from backend.main import create_app

    app = create_app(migrate=False)
    app.dependency_overrides[get_session] = lambda: db
    app.dependency_overrides[get_lazy_session] = lambda: db
    clients: list[TestClient] = []

    def make(token: str | None) -> TestClient:
        test_client = TestClient(app, headers=bearer(token) if token else {})
        clients.append(test_client.__enter__())
        return test_client

    yield make
    for test_client in clients:
        test_client.__exit__(None, None, None)


@pytest.fixture
def client(client_as, admin_token: str):
    """The API over HTTP (in process) as the session's admin, its requests in the test's
    rolled-back transaction."""
    return client_as(admin_token)


@pytest.fixture(scope="session")
def shapes(data_root: Path):
    """A small shapes dataset (128 px) under the allowed data root."""
    from backend.datasets.shapes import generate_shapes

    return generate_shapes(
        data_root / "shapes", seed=3, num_train=48, num_val=12, image_size=(128, 128), num_classes=4
    )


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


@pytest.fixture
def dataset_id(db: Session, shapes) -> int:
    """The shapes dataset, registered in the test's transaction."""
    import factories

    return factories.dataset(db, shapes=shapes).id


def start_worker(env: dict[str, str], log_path: Path, name: str) -> subprocess.Popen:
    """A Celery worker process, as `celery -A worker.celery_app worker` starts it, once ready."""
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
            f"{name}@%h",
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 120
    while "ready." not in log_path.read_text():
        assert process.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, "worker did not start:\n" + log_path.read_text()
        time.sleep(0.5)
    return process


def stop_worker(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="session")
def worker(lab_env, lab_home, pg_url, redis_url):
    """The session's Celery worker process, on the session's queue."""
    process = start_worker(lab_env, lab_home / "worker.log", "e2e")
    yield process
    stop_worker(process)


@pytest.fixture(scope="session")
def api(lab_env, pg_url, redis_url, admin_token):
    """The API in its own process, as uvicorn serves it; the client acts as the admin."""
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
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", timeout=30, headers=bearer(admin_token)
    )
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

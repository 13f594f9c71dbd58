"""The live API fuzzed by schemathesis: each operation of the OpenAPI document gets generated
requests, valid and invalid, and each response must be no 5xx, a documented status, a documented
media type and a body that matches the documented schema.

The API runs in a uvicorn process of this module's own, on a database, a queue and an artifact
folder of its own: the fuzzer cancels, requeues, re-analyses and imports whatever ids it finds,
which must not touch the session's rows or files, and the jobs it submits wait on a queue that
no worker takes from. The database holds one of each row the paths name (a dataset, two
analysed jobs in a replicate group, a queued job, weights), so generated ids find rows as well
as miss them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import factories
import httpx
import psycopg
import pytest
import redis
import requests
import schemathesis
from conftest import POSTGRES_ADMIN, ROOT, TEST_DATABASE, TEST_DATABASE_URL, bearer
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from backend.jobs.models import JobStatus
from backend.main import create_app

pytestmark = pytest.mark.e2e  # starts the API process

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 25  # per operation and phase: about 2,700 requests in all


@pytest.fixture(scope="module")
def fuzz_database(pg_url) -> Iterator[str]:
    """A database of this module's own, migrated; dropped afterwards."""
    from backend.migrate import upgrade_head

    name = f"{TEST_DATABASE}_fuzz"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = TEST_DATABASE_URL.rsplit("/", 1)[0] + f"/{name}"
    upgrade_head(url)
    yield url
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def fuzz_token(fuzz_database) -> str:
    """An admin's token in the fuzz database: the fuzzer may do anything a person can."""
    from backend.users import service
    from backend.users.models import Role

    engine = create_engine(fuzz_database)
    with Session(engine, expire_on_commit=False) as session:
        admin = service.create_user(session=session, name="fuzz-admin", role=Role.admin)
        _, secret = service.create_token(session=session, user=admin, name="fuzz")
    engine.dispose()
    return secret


@pytest.fixture(scope="module")
def fuzzed_api(
    lab_env, fuzz_database, fuzz_token, redis_url, shapes, tmp_path_factory
) -> Iterator[str]:
    """The base URL of an API process on the fuzz database and queue, its rows seeded."""
    token = fuzz_token
    queue = f"detlab-fuzz-{uuid.uuid4().hex[:8]}"
    home = tmp_path_factory.mktemp("fuzz")
    env = {
        **os.environ,
        **lab_env,
        "DETLAB_DATABASE_URL": fuzz_database,
        "DETLAB_QUEUE": queue,
        # its job ids are the session's too: files it writes for them go elsewhere
        "DETLAB_HOME": str(home / "var"),
        "DETLAB_ARTIFACT_ROOT": str(home / "artifacts"),
    }
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "backend.main:app", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base_url, timeout=60, headers=bearer(token)) as client:
            _wait_until_up(client, process)
            _seed(client, fuzz_database, shapes, home)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=30)
        broker = redis.Redis.from_url(redis_url)  # the messages of the jobs it submitted
        broker.delete(queue, *broker.scan_iter(f"*{queue}*"))


def _wait_until_up(client: httpx.Client, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, "API did not start"
        time.sleep(0.3)


def _detections(val: dict, moved: int) -> list[dict]:
    """The val boxes as detections, those of the first `moved` images shifted off their object."""
    damaged = {image["id"] for image in val["images"][:moved]}
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": [a["bbox"][0] + (a["bbox"][2] if a["image_id"] in damaged else 0)]
            + a["bbox"][1:],
            "score": 0.9,
        }
        for a in val["annotations"]
    ]


def _seed(client: httpx.Client, database_url: str, shapes, folder: Path) -> None:
    created = client.post("/datasets", json={"name": "fuzz", **factories.dataset_files(shapes)})
    assert created.status_code == 201, created.text
    dataset_id = created.json()["id"]
    val = json.loads(shapes.val_ann.read_text())
    engine = create_engine(database_url)
    with Session(engine, expire_on_commit=False) as session:
        runs = []
        for moved in (0, 3):
            predictions = folder / f"moved-{moved}.bbox.json"
            predictions.write_text(json.dumps(_detections(val, moved)))
            runs.append(
                factories.finished_job(
                    session,
                    dataset_id=dataset_id,
                    predictions_path=predictions,
                    spec={"seed": moved},
                    config_text="model = dict(type='FasterRCNN')\n",
                )
            )
        for run in runs:
            run.group_id = runs[0].id
        session.commit()
        factories.job(session, dataset_id=dataset_id, status=JobStatus.queued)
        factories.weights(session)
    engine.dispose()
    for run in runs:  # metrics, intervals and per-image rows, as after training
        analysed = client.post(f"/jobs/{run.id}/analysis", params={"resamples": 100})
        assert analysed.status_code == 200, analysed.text


@pytest.fixture(scope="module")
def http(fuzzed_api, fuzz_token) -> Iterator[requests.Session]:
    """Connections to the fuzzed API as its admin, which serves the document the requests come
    from."""
    session = requests.Session()
    session.headers.update(bearer(fuzz_token))
    assert session.get(f"{fuzzed_api}/openapi.json").json() == schema.raw_schema
    yield session
    session.close()


# The document as the app builds it (the process serves the same, as `http` checks), read at
# collection so that each operation is a test of its own.
schema = schemathesis.openapi.from_dict(create_app(migrate=False).openapi())


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same requests every run: a failure here is a bug, not bad luck
    database=None,
    suppress_health_check=list(HealthCheck),  # a live server is slow by Hypothesis' measure
)
def test_every_response_is_documented_and_none_is_a_server_error(case, fuzzed_api, http):
    case.call_and_validate(base_url=fuzzed_api, session=http, checks=CHECKS, timeout=120)

"""GET /leaderboard answers again from the API's kept answers only while nothing it shows has
changed: every change to a ranked job, an evaluation or a weights entry makes the next answer
new, whoever writes it (the test's own transaction, or another connection as a worker's or a
second API process's); submissions, progress and heartbeats of unfinished jobs keep it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import factories
import pytest
from conftest import bearer
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, delete, event, select, text
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.datasets.models import Dataset
from backend.db import get_engine, session_factory
from backend.evaluations import service as evaluation_service
from backend.evaluations.models import Evaluation
from backend.jobs import service as job_service
from backend.jobs.models import Job, JobKind, JobStatus
from backend.leaderboard import service as leaderboard_service
from backend.leaderboard.cache import AnswerCache, answers, database_version
from backend.leaderboard.router import router
from backend.main import create_app
from backend.migrate import upgrade_head
from backend.users import callers

TRIGGERS = {
    "leaderboard_job_inserted",
    "leaderboard_job_updated",
    "leaderboard_job_deleted",
    "leaderboard_evaluation_inserted",
    "leaderboard_evaluation_updated",
    "leaderboard_evaluation_deleted",
    "leaderboard_weights_updated",
    "leaderboard_weights_deleted",
}


def ranked(db: Session, dataset_id: int, mAP: float, **fields: Any) -> Job:
    return factories.finished_job(
        db, dataset_id=dataset_id, metrics={"bbox_mAP": mAP}, name=f"run-{mAP}", **fields
    )


def get_board(client, dataset_id: int, **params: Any):
    response = client.get("/leaderboard", params={"dataset": dataset_id, **params})
    assert response.status_code == 200, response.text
    return response


def test_an_unchanged_board_is_answered_again_byte_for_byte(client, db, dataset_id):
    ranked(db, dataset_id, 0.4)
    running = factories.job(db, dataset_id=dataset_id, status=JobStatus.running)
    first = get_board(client, dataset_id)
    hits = answers.hits

    # what a busy lab does all the time changes no row of the board
    factories.job(db, dataset_id=dataset_id)  # a submission
    running.progress_iter, running.heartbeat_at = 10, running.created_at
    db.commit()
    job_service.record_progress(session=db, job_id=running.id, progress_iter=20)
    again = get_board(client, dataset_id)

    assert answers.hits == hits + 1
    assert again.content == first.content
    assert again.headers["content-type"] == "application/json"


# the request's parameters, and the same query as the service takes it
QUERIES = [
    ({}, {}),
    ({"group": "true"}, {"grouped": True}),
    (
        {"backbone": "resnet50", "order": "asc", "metric": "bbox_mAP_50"},
        {"filters": {"backbone": "resnet50"}, "descending": False, "metric": "bbox_mAP_50"},
    ),
]


@pytest.mark.parametrize(("params", "query"), QUERIES)
def test_kept_answers_are_the_bytes_fastapi_sends_for_the_rows(
    client, db, dataset_id, params, query
):
    weights = factories.weights(db, name="moco", architecture="resnet50")
    for mAP, seed in ((0.3, 0), (0.5, 1)):
        ranked(db, dataset_id, mAP, spec={"seed": seed, "init": {"weights_id": weights.id}})
    ranked(db, dataset_id, 0.2, record={"mmdet": "3.3.0"})
    ranked(db, dataset_id, 0.1, record={"mmdet": "3.2.0"})
    computed = get_board(client, dataset_id, **params).content
    kept = get_board(client, dataset_id, **params).content

    # what FastAPI sends for the rows as a dict: its response model's validation and JSON
    (route,) = [r for r in router.routes if isinstance(r, APIRoute)]
    items, total = leaderboard_service.rows(session=db, dataset_id=dataset_id, **query)
    metric = query.get("metric", "bbox_mAP")
    answer = {"dataset_id": dataset_id, "metric": metric, "items": items, "total": total}
    value, errors = route.response_field.validate(answer, {}, loc=("response",))
    assert errors == []
    assert computed == kept == route.response_field.serialize_json(value)


def _finish(db: Session, job: Job, _: Job, __: Any) -> None:
    job_service.finish(session=db, job_id=job.id, status=JobStatus.succeeded)


def _rename(db: Session, job: Job, _: Job, __: Any) -> None:
    job.name = "renamed"
    db.commit()


def _delete(db: Session, _: Job, ranked_job: Job, __: Any) -> None:
    job_service.discard(session=db, job_id=ranked_job.id)


def _rescore(db: Session, _: Job, ranked_job: Job, __: Any) -> None:
    evaluation_service.store(
        session=db,
        job_id=ranked_job.id,
        metrics={"bbox_mAP": 0.9},
        per_class_ap={},
        predictions_path="/nowhere/again.bbox.json",
    )


def _drop_evaluation(db: Session, _: Job, ranked_job: Job, __: Any) -> None:
    db.delete(db.scalars(select(Evaluation).where(Evaluation.job_id == ranked_job.id)).one())
    db.commit()


def _unrank(db: Session, _: Job, ranked_job: Job, __: Any) -> None:
    ranked_job.status = JobStatus.failed  # an admin's correction
    db.commit()


def _regroup(db: Session, job: Job, ranked_job: Job, __: Any) -> None:
    ranked_job.group_id = job.id
    job.group_id = job.id
    db.commit()


def _new_record(db: Session, _: Job, ranked_job: Job, __: Any) -> None:
    ranked_job.record = {"mmdet": "2.0.0"}
    db.commit()


def _rename_weights(db: Session, _: Job, __: Job, weights: Any) -> None:
    weights.name = "moco-renamed"
    db.commit()


# each change, and what the next answer shows of it
CHANGES: dict[str, tuple[Callable[[Session, Job, Job, Any], None], Callable[[dict], bool]]] = {
    "a job finishes": (_finish, lambda board: board["total"] == 3),
    "a job is renamed": (_rename, lambda board: "renamed" in [r["name"] for r in board["items"]]),
    "a job is deleted": (_delete, lambda board: board["total"] == 1),
    "a job is scored again": (_rescore, lambda board: board["items"][0]["bbox_mAP"] == 0.9),
    "an evaluation is deleted": (_drop_evaluation, lambda board: board["total"] == 1),
    "a job leaves succeeded": (_unrank, lambda board: board["total"] == 1),
    "jobs join a group": (_regroup, lambda board: board["total"] == 1),
    "a record changes": (
        _new_record,
        lambda board: all(r["record_differs"] == ["mmdet"] for r in board["items"]),
    ),
    "weights are renamed": (
        _rename_weights,
        lambda board: board["items"][-1]["init"] == "weights:moco-renamed (mocov2)",
    ),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_every_change_to_what_the_board_shows_is_in_the_next_answer(client, db, dataset_id, change):
    weights = factories.weights(db, name="moco", architecture="resnet50", method="mocov2")
    ranked_job = ranked(db, dataset_id, 0.5, record={"mmdet": "3.3.0"})
    job = ranked(
        db, dataset_id, 0.3, spec={"init": {"weights_id": weights.id}}, record={"mmdet": "3.3.0"}
    )
    running = factories.job(db, dataset_id=dataset_id, status=JobStatus.running)
    factories.evaluation(db, job_id=running.id, metrics={"bbox_mAP": 0.1})
    params = {"group": "true"} if change == "jobs join a group" else {}
    before = get_board(client, dataset_id, **params)
    assert get_board(client, dataset_id, **params).content == before.content  # kept
    assert before.json()["total"] == 2

    apply, shows = CHANGES[change]
    apply(db, running if change == "a job finishes" else job, ranked_job, weights)
    after = get_board(client, dataset_id, **params).json()

    assert shows(after), after


@pytest.fixture
def app_sessions(monkeypatch, admin_token) -> Iterator[tuple[TestClient, list[str]]]:
    """The API in process with sessions of its own (as it serves), and the statements its
    engine sends."""
    for cached in (get_settings, get_engine, session_factory):
        cached.cache_clear()
    client = TestClient(create_app(migrate=False), headers=bearer(admin_token))
    client.__enter__()
    statements: list[str] = []

    def seen(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(get_engine(), "before_cursor_execute", seen)
    yield client, statements
    event.remove(get_engine(), "before_cursor_execute", seen)
    client.__exit__(None, None, None)
    get_engine().dispose()
    for cached in (get_settings, get_engine, session_factory):
        cached.cache_clear()


def test_a_kept_board_is_sent_from_the_event_loop(app_sessions, pg_engine, shapes):
    """With sessions of its own on Postgres, a kept answer costs the route no session, no
    route thread and no statement on the API's engine (its version is read over the loop's
    own connection); a change committed elsewhere is still in the very next answer."""
    client, statements = app_sessions
    threads = []

    def counting_run_sync(*args, **kwargs):  # type: ignore[no-untyped-def]
        threads.append(args[0])
        return real_run_sync(*args, **kwargs)

    real_run_sync = anyio.to_thread.run_sync
    _a_change_committed_elsewhere_is_in_the_next_answer(client, pg_engine, shapes)
    with Session(pg_engine, expire_on_commit=False) as other:
        dataset = factories.dataset(other, shapes=shapes)
        try:
            ranked(other, dataset.id, 0.5)
            other.commit()
            get_board(client, dataset.id)
            _wait_until_callers_are_kept()  # else the access rule looks the token up
            get_board(client, dataset.id)
            statements.clear()
            hits = answers.hits
            anyio.to_thread.run_sync = counting_run_sync
            try:
                for _ in range(3):
                    get_board(client, dataset.id)
            finally:
                anyio.to_thread.run_sync = real_run_sync
            assert answers.hits == hits + 3
            assert statements == [] and threads == [], (statements, threads)
        finally:
            other.rollback()
            other.execute(delete(Job).where(Job.dataset_id == dataset.id))
            other.execute(delete(Dataset).where(Dataset.id == dataset.id))
            other.commit()


def _wait_until_callers_are_kept() -> None:
    with session_factory()() as session:
        cache = callers.cache_for(session)
    assert cache is not None
    deadline = time.monotonic() + 10
    while not cache.listening:
        assert time.monotonic() < deadline, "the token cache's listener did not connect"
        time.sleep(0.02)


def test_a_change_committed_by_another_connection_is_in_the_next_answer(client, pg_engine, shapes):
    """As a worker or a second API process writes: committed on a connection of its own."""
    _a_change_committed_elsewhere_is_in_the_next_answer(client, pg_engine, shapes)


def _a_change_committed_elsewhere_is_in_the_next_answer(client, pg_engine, shapes) -> None:
    with Session(pg_engine, expire_on_commit=False) as other:
        other.execute(text("SET lock_timeout = '10s'"))
        dataset = factories.dataset(other, shapes=shapes)
        try:
            job = ranked(other, dataset.id, 0.5)
            first = get_board(client, dataset.id).json()
            assert [row["name"] for row in first["items"]] == ["run-0.5"]
            hits = answers.hits
            assert get_board(client, dataset.id).json() == first
            assert answers.hits == hits + 1

            job.name = "renamed by a worker"
            other.commit()
            assert [r["name"] for r in get_board(client, dataset.id).json()["items"]] == [
                "renamed by a worker"
            ]
            job_service.finish(
                session=other,
                job_id=factories.finished_job(
                    other, dataset_id=dataset.id, status=JobStatus.running
                ).id,
                status=JobStatus.succeeded,
            )
            assert get_board(client, dataset.id).json()["total"] == 2
        finally:
            other.rollback()
            other.execute(delete(Job).where(Job.dataset_id == dataset.id))
            other.execute(delete(Dataset).where(Dataset.id == dataset.id))
            other.commit()


def test_the_version_changes_at_commit_and_is_never_reused(pg_engine):
    with Session(pg_engine) as writer, Session(pg_engine) as reader:
        writer.execute(text("SET lock_timeout = '10s'"))
        start = database_version(reader)
        writer.add(Job(kind=JobKind.finetune, status=JobStatus.succeeded, spec={}))
        writer.flush()
        mine = database_version(writer)  # the transaction's own change counts at once
        assert mine != start
        assert database_version(reader) == start  # not committed: not seen by the others
        writer.rollback()

        weights = factories.weights(writer, name=f"weights-{start}")  # commits
        weights.name = f"weights-{start}-renamed"
        writer.commit()
        after = database_version(reader)
        writer.delete(weights)
        writer.commit()
    # a rolled-back change's version is not given to a later one
    assert after not in (start, mine)


def test_answers_are_kept_within_their_byte_budget(db):
    cache = AnswerCache(max_bytes=10)
    for key, body in (("a", b"123456"), ("b", b"abcdef")):
        assert cache.answer(session=db, key=key, compute=lambda body=body: body) == body
    assert cache.answer(session=db, key="b", compute=lambda: b"new") == b"abcdef"
    assert cache.answer(session=db, key="a", compute=lambda: b"new") == b"new"  # evicted
    assert cache.answer(session=db, key="huge", compute=lambda: b"x" * 11) == b"x" * 11
    assert cache.answer(session=db, key="huge", compute=lambda: b"y") == b"y"  # never kept


@pytest.mark.parametrize("database", ["postgres", "sqlite"])
def test_the_triggers_are_in_place_at_head(database, pg_url, tmp_path, shapes):
    """A SQLite migration that rebuilds jobs, evaluations or weights (batch mode) drops their
    triggers: it must create them again, or this fails."""
    url = pg_url if database == "postgres" else f"sqlite:///{tmp_path / 'detlab.db'}"
    if database == "sqlite":
        upgrade_head(url)
    engine = create_engine(url)
    with engine.connect() as connection:
        found = {
            name
            for table in ("jobs", "evaluations", "weights")
            for name in _trigger_names(connection, table)
        }
    assert TRIGGERS <= found
    if database == "sqlite":  # and they work there: a finished job changes the version
        with Session(engine) as session:
            dataset = factories.dataset(session, shapes=shapes)
            before = database_version(session)
            factories.job(session, dataset_id=dataset.id)
            assert database_version(session) == before
            ranked(session, dataset.id, 0.5)
            assert database_version(session) != before
    engine.dispose()


def _trigger_names(connection, table: str) -> set[str]:
    if connection.dialect.name == "sqlite":
        rows = connection.execute(
            text("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t"),
            {"t": table},
        )
        return set(rows.scalars())
    rows = connection.execute(
        text("SELECT tgname FROM pg_trigger WHERE tgrelid = CAST(:t AS regclass)"), {"t": table}
    )
    return set(rows.scalars())

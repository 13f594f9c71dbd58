"""Callers kept per API process (backend/users/callers.py): served without a query while the
database announces no change, forgotten when a user or a token changes, whoever changes it,
and never served while the process cannot hear the announcements.

The app runs in process on the session's Postgres database with its own sessions and real
commits (the test's rolled-back transaction would hold back the notifications)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import psycopg
import pytest
from conftest import bearer
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, event, text, update
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db import get_engine, libpq_url, session_factory, utcnow
from backend.main import create_app
from backend.users import callers, service
from backend.users.callers import Caller, CallerCache
from backend.users.models import ApiToken, Role, User

WITHIN_S = 10  # a notification takes milliseconds; a loaded machine may take longer


def _forget_settings() -> None:
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    for cached in (get_settings, get_engine, session_factory):
        cached.cache_clear()


def _eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WITHIN_S
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WITHIN_S} s: {what}")
        time.sleep(0.02)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., TestClient]]:
    """api(token): the app in process with its own sessions, as that token's holder."""
    monkeypatch.setenv("DETLAB_TOKEN_CACHE_S", "30")
    _forget_settings()
    app = create_app(migrate=False)
    clients: list[TestClient] = []

    def make(token: str) -> TestClient:
        client = TestClient(app, headers=bearer(token))
        clients.append(client.__enter__())
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
    _forget_settings()


@pytest.fixture
def token_queries() -> Iterator[list[str]]:
    """The statements the app's engine sends that read or write api_tokens."""
    seen: list[str] = []

    def listen(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if "api_tokens" in statement:
            seen.append(statement)

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", listen)
    yield seen
    event.remove(engine, "before_cursor_execute", listen)


@pytest.fixture
def other_connection(pg_url: str) -> Iterator[Engine]:
    """Another process's view of the database: changes committed here reach the app only
    through the database."""
    engine = create_engine(pg_url)
    yield engine
    engine.dispose()


def _cache() -> CallerCache:
    with session_factory()() as session:
        cache = callers.cache_for(session)
    assert cache is not None
    return cache


def _kept_and_listening(client: TestClient) -> None:
    """Requests until the process listens, and the caller is kept."""

    def listening() -> bool:
        assert client.get("/users/me").status_code == 200
        return _cache().listening

    _eventually(listening, "the token cache's listener connects")
    assert client.get("/users/me").status_code == 200  # looked up and kept


def test_a_kept_caller_is_served_without_a_query(api, make_user, token_queries):
    name, token = make_user("member")
    client = api(token)
    _kept_and_listening(client)
    token_queries.clear()
    for _ in range(5):
        me = client.get("/users/me")
        assert me.status_code == 200 and me.json()["name"] == name
    assert client.get("/jobs").status_code == 200
    assert token_queries == []


@pytest.mark.parametrize(
    "change, refusal",
    [
        (update(ApiToken).values(revoked_at=utcnow()), (401, "revoked")),
        (update(ApiToken).values(expires_at=utcnow() - timedelta(seconds=1)), (401, "expired")),
        ("deactivate", (401, "deactivated")),
        ("demote", (403, "viewer")),
    ],
    ids=["revoked", "expired", "deactivated", "demoted"],
)
def test_a_change_committed_elsewhere_ends_the_kept_caller(
    api, make_user, other_connection, change, refusal
):
    name, token = make_user("member")
    client = api(token)
    _kept_and_listening(client)
    assert client.get("/jobs?owner=me").status_code == 200
    with Session(other_connection) as session:
        user_id = session.query(User.id).filter(User.name == name).scalar()
        if change == "deactivate":
            session.execute(update(User).where(User.id == user_id).values(active=False))
        elif change == "demote":
            session.execute(update(User).where(User.id == user_id).values(role=Role.viewer))
        else:
            session.execute(change.where(ApiToken.user_id == user_id))
        session.commit()
    status, words = refusal
    # a member's route: a viewer is refused it with 403
    route = "/jobs/2147483647/cancel"  # no such job: 404 while the caller is accepted

    def refused() -> bool:
        answer = client.post(route)
        return answer.status_code == status and words in answer.text

    _eventually(refused, f"the change is in force ({status} saying {words!r})")


def test_revoking_through_the_api_is_in_force_on_the_next_request(api, make_user):
    _, token = make_user("member")
    client = api(token)
    _kept_and_listening(client)
    token_id = client.get("/tokens").json()[0]["id"]
    assert client.delete(f"/tokens/{token_id}").status_code == 200
    refused = client.get("/users/me")  # no waiting: this process cleared its own cache
    assert refused.status_code == 401 and "revoked" in refused.text


def test_without_its_listener_a_process_looks_every_token_up(
    api, make_user, token_queries, other_connection
):
    _, token = make_user("member")
    client = api(token)
    _kept_and_listening(client)
    cache = _cache()
    with other_connection.connect() as connection:
        name = connection.scalar(
            text("SELECT application_name FROM pg_stat_activity WHERE pid = :pid"),
            {"pid": cache.backend_pid},
        )
        assert name == callers.LISTENER_NAME
        ended = connection.scalar(
            text("SELECT pg_terminate_backend(:pid)"), {"pid": cache.backend_pid}
        )
    assert ended
    _eventually(lambda: not cache.listening, "the process notices its listener is gone")
    token_queries.clear()
    assert client.get("/users/me").status_code == 200
    assert token_queries, "a caller was served from the cache while nothing was listening"
    # it reconnects, and keeps callers again
    _eventually(lambda: cache.listening, "the listener reconnects")


def test_nothing_is_kept_for_sqlite_or_a_session_of_a_connection(tmp_path, pg_engine):
    sqlite = create_engine(f"sqlite:///{tmp_path / 'lab.db'}")
    with Session(sqlite) as session:
        assert callers.cache_for(session) is None
    with pg_engine.connect() as connection, Session(bind=connection) as session:
        assert callers.cache_for(session) is None
    with Session(pg_engine) as session:
        assert callers.cache_for(session) is not None


def _caller() -> Caller:
    return Caller(id=1, name="ada", role=Role.member, active=True, created_at=utcnow())


def _conninfo(pg_url: str) -> str:
    return pg_url.replace("postgresql+psycopg://", "postgresql://", 1)


def test_a_kept_caller_ends_with_its_age_its_token_or_a_newer_generation(pg_url):
    cache = CallerCache(_conninfo(pg_url))
    _eventually(lambda: cache.get("warm-up", max_age_s=30) is None and cache.listening, "listen")
    caller = _caller()
    generation = cache.generation
    cache.keep("a", caller, generation=generation, token_expires_at=None)
    assert cache.get("a", max_age_s=30) == caller
    assert cache.get("a", max_age_s=0) is None  # older than the setting allows
    cache.keep("b", caller, generation=generation, token_expires_at=utcnow())
    assert cache.get("b", max_age_s=30) is None  # its token has expired since
    cache.clear()  # a change announced while "c" was being looked up
    cache.keep("c", caller, generation=generation, token_expires_at=None)
    assert cache.get("c", max_age_s=30) is None


def test_the_migration_installs_the_announcing_triggers(pg_url):
    with psycopg.connect(_conninfo(pg_url), autocommit=True) as conn:
        conn.execute(f"LISTEN {callers.CHANNEL}")
        with Session(create_engine(pg_url)) as session:
            user = service.create_user(session=session, name="announced", role=Role.viewer)
            service.create_token(session=session, user=user, name="t")
            # using a token writes last_used_at: no announcement for that
            session.execute(
                update(ApiToken).where(ApiToken.user_id == user.id).values(last_used_at=utcnow())
            )
            session.commit()
            assert list(conn.notifies(timeout=0.5)) == []
            session.execute(update(User).where(User.id == user.id).values(active=False))
            session.commit()
        tables = [notice.payload for notice in conn.notifies(timeout=5, stop_after=1)]
        assert tables == ["users"]


def test_a_stopped_cache_stops_listening_and_keeps_nothing(other_connection):
    """stop() (the process ends, or its database is dropped): the listener's connection closes
    instead of reconnecting, and no caller is kept from then on."""
    cache = CallerCache(libpq_url(other_connection))  # a cache of its own, not the process's
    cache.get("digest", max_age_s=60)  # starts the listener
    _eventually(lambda: cache.listening, "the listener connects")
    pid = cache.backend_pid

    def connected() -> bool:
        with other_connection.connect() as connection:
            found = connection.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            )
        return bool(found)

    assert connected()
    cache.stop()
    assert not cache.listening
    caller = Caller(id=1, name="x", role=Role.member, active=True, created_at=utcnow())
    cache.keep("digest", caller, generation=cache.generation, token_expires_at=None)
    assert cache.get("digest", max_age_s=60) is None
    _eventually(lambda: not connected(), "the stopped listener closes its connection")
    assert cache._listener is not None
    cache._listener.join(timeout=10)
    assert not cache._listener.is_alive()

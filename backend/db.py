"""Database engine, sessions and the declarative base shared by every domain."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import anyio
import orjson
from anyio.lowlevel import RunVar
from sqlalchemy import JSON, Engine, MetaData, create_engine, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from backend.config import get_settings

__all__ = [
    "Base",
    "JSONType",
    "get_engine",
    "get_lazy_session",
    "get_session",
    "libpq_url",
    "make_engine",
    "session_factory",
    "session_slots",
    "as_utc",
    "utcnow",
]

# Named constraints so Alembic can drop and alter them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the models use."""
    return datetime.now(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """A stored time, timezone-aware: SQLite gives back the UTC times it holds without their
    zone, Postgres with it."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def make_engine(
    url: str,
    *,
    pool_size: int | None = None,
    max_overflow: int | None = None,
    pool_timeout_s: float | None = None,
) -> Engine:
    """An engine for url; SQLite gets foreign keys and a busy timeout for many processes.

    The pool arguments apply to Postgres (SQLAlchemy's defaults where None); SQLite keeps its
    own pool, since its writers wait on the file lock, not on connections."""
    if url.startswith("postgresql://"):  # psycopg 3 is the driver DetLab installs
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    sizes: dict[str, Any] = {
        "pool_size": pool_size,
        "max_overflow": max_overflow,
        "pool_timeout": pool_timeout_s,
    }
    return create_engine(
        url,
        json_deserializer=_json_loads,
        pool_pre_ping=True,
        **{key: value for key, value in sizes.items() if value is not None},
    )


def _json_loads(text: str | bytes) -> Any:
    """Postgres' JSON columns decoded by orjson (specs, records and intervals fill most rows
    the API lists); the standard library takes what orjson refuses (integers past 64 bits)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def libpq_url(engine: Engine) -> str:
    """The engine's database as psycopg.connect takes it, for connections outside its pool."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


@lru_cache
def get_engine() -> Engine:
    """The process-wide engine for the configured database, its pool sized by the settings."""
    settings = get_settings()
    return make_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout_s=settings.db_pool_timeout_s,
    )


@lru_cache
def session_factory() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


_SESSION_SLOTS: RunVar[anyio.CapacityLimiter] = RunVar("detlab_session_slots")


def session_slots() -> anyio.CapacityLimiter:
    """How many request sessions may be open at once in this event loop: no more than the
    threads that run the routes (DETLAB_API_THREADS) and the pool's connections."""
    try:
        return _SESSION_SLOTS.get()
    except LookupError:
        settings = get_settings()
        connections = settings.db_pool_size + settings.db_max_overflow
        slots = anyio.CapacityLimiter(min(settings.api_threads, connections))
        _SESSION_SLOTS.set(slots)
        return slots


async def get_lazy_session() -> AsyncIterator[Session]:
    """FastAPI dependency: a session that holds nothing until it is used, for async routes
    (and the access rule) that often answer without the database. Whoever uses it does so in
    a thread, within `session_slots()` (or a limiter of its own), and ends its transaction
    there (commit), so that no connection outlives the slot."""
    session = session_factory()()
    try:
        yield session
    finally:
        await _close(session)


async def _close(session: Session) -> None:
    if session.get_transaction() is None:  # nothing to roll back: no network
        session.close()
    else:
        # closing rolls back over the network: in a thread of its own, so the event loop
        # never blocks and the close never queues behind routes for a thread
        await anyio.to_thread.run_sync(session.close, limiter=anyio.CapacityLimiter(1))


async def get_session() -> AsyncIterator[Session]:
    """FastAPI dependency: one session per request, closed before the response is sent.

    A request first waits for a slot (`session_slots`), holding nothing. Its session then
    lives through the route and the validation of its response, both of which FastAPI runs in
    the threadpool, and is closed (its transaction rolled back) before the response is sent;
    SessionDep asks for `scope="function"` for that. With no more sessions than threads and
    connections, a route never waits for a connection, so the threads keep turning and a
    request holding a connection never queues behind routes blocked on the pool (issue 13:
    unbounded, they took every thread and every connection until the pool timed out).
    """
    async with session_slots():
        session = session_factory()()
        try:
            yield session
        finally:
            await _close(session)

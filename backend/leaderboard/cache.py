"""Leaderboard answers kept as JSON bytes for as long as the database's leaderboard version
stands.

Computing an answer decodes every row's spec, record and intervals, compares the records and
serialises about 1.7 KB a row: 10 ms of the API's CPU for 100 rows, the largest share of what
the API spent under load (issue 13). An answer changes only when a row it reads changes, and
the database says when: its triggers change `leaderboard_version` (migration 0013) whoever
writes, this process, another API process or a worker. So each process keeps recent answers
with the version they were computed at, and serves one again while the version is unchanged:
one small query instead of the whole computation.

The version is read before the rows. A change committed in between is then in the answer but
not in its version, and the next request computes the answer again: it may be computed once
too often, never served stale.

`answer_async` serves the route from the event loop: on Postgres it reads the version over a
connection of the loop's own (`VersionReader`, one small query, no thread and no session
slot), so a kept answer is sent without waiting behind the routes that hold every slot. Only
what must be computed goes to a route thread.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import anyio
import psycopg
from anyio.lowlevel import RunVar
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from backend.db import libpq_url, session_slots
from backend.leaderboard.models import LeaderboardVersion

__all__ = ["AnswerCache", "VersionReader", "answers", "database_version"]

log = logging.getLogger(__name__)


def database_version(session: Session) -> Hashable | None:
    """What identifies the leaderboard's contents in the session's database: its URL and the
    version its triggers set; None where the version row is missing (nothing is then kept)."""
    bind = session.get_bind()
    # a session of the engine's that has not begun a transaction has written nothing yet (one
    # on a connection of its own may be inside its caller's transaction)
    untouched = isinstance(bind, Engine) and session.get_transaction() is None
    if bind.dialect.name == "postgresql" and not untouched:
        # Postgres' triggers are deferred to commit: this makes the transaction's own pending
        # changes count
        session.execute(text("SET CONSTRAINTS ALL IMMEDIATE"))
    version = session.scalar(select(LeaderboardVersion.version).where(LeaderboardVersion.id == 1))
    return None if version is None else (bind.engine.url, version)


class AnswerCache:
    """The most recently used answers, each under its request's key with the database version
    it was computed at, up to max_bytes in all. Shared by the threads that run the routes."""

    def __init__(self, *, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._answers: OrderedDict[Hashable, tuple[Hashable, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    async def answer_async(
        self, *, session: Session, key: Hashable, compute: Callable[[], bytes]
    ) -> bytes:
        """answer(), from the event loop: a kept answer whose version the loop's own
        connection confirms is sent at once; anything else runs in a route thread, within a
        session slot, and ends the session's transaction there."""
        reader = VersionReader.of(session)
        if reader is not None:
            version = await reader.read()
            if version is not None:
                kept = self._kept(key, version, count_miss=False)  # counted by answer()
                if kept is not None:
                    return kept

        def computed() -> bytes:
            body = self.answer(session=session, key=key, compute=compute)
            session.commit()  # it only read: the connection goes back before the slot does
            return body

        async with session_slots():
            return await anyio.to_thread.run_sync(computed)

    def answer(self, *, session: Session, key: Hashable, compute: Callable[[], bytes]) -> bytes:
        """The answer kept for key if the database's version is still the one it was computed
        at; else compute(), kept for the next request."""
        version = database_version(session)
        kept = self._kept(key, version)
        if kept is not None:
            return kept
        body = compute()
        if version is not None and len(body) <= self.max_bytes:
            with self._lock:
                self._store(key, version, body)
        return body

    def _kept(
        self, key: Hashable, version: Hashable | None, *, count_miss: bool = True
    ) -> bytes | None:
        with self._lock:
            kept = self._answers.get(key)
            if version is not None and kept is not None and kept[0] == version:
                self._answers.move_to_end(key)
                self.hits += 1
                return kept[1]
            self.misses += count_miss
            return None

    def clear(self) -> None:
        with self._lock:
            self._answers.clear()
            self._bytes = 0

    def _store(self, key: Hashable, version: Hashable, body: bytes) -> None:
        replaced = self._answers.pop(key, None)
        if replaced is not None:
            self._bytes -= len(replaced[1])
        self._answers[key] = (version, body)
        self._bytes += len(body)
        while self._bytes > self.max_bytes:
            _, (_, dropped) = self._answers.popitem(last=False)
            self._bytes -= len(dropped)


class VersionReader:
    """The leaderboard's version read from the event loop, over one autocommit connection of
    this loop's own to one Postgres database: the committed version at the time of the read,
    as database_version gives it to a session that has written nothing.

    Requests share reads: each gets the result of a read that started after it asked (never
    an older one), and every request that asks while a read is on the wire shares the next.
    The connection then carries back-to-back reads however many requests wait."""

    def __init__(self, url: object, conninfo: str) -> None:
        self.url = url  # the engine's URL: versions are compared with database_version's
        self.conninfo = conninfo
        self._connection: psycopg.AsyncConnection | None = None
        self._started = 0  # reads started
        self._finished = 0  # the number of the latest read finished, and its result
        self._result: Hashable | None = None
        self._in_flight: anyio.Event | None = None  # set when the read on the wire ends

    @classmethod
    def of(cls, session: Session) -> VersionReader | None:
        """This loop's reader for the session's database; None unless the session is a
        Postgres engine's that has not begun a transaction (one on a connection of its own,
        or one that has written, must read the version itself)."""
        bind = session.get_bind()
        if (
            not isinstance(bind, Engine)
            or bind.dialect.name != "postgresql"
            or session.get_transaction() is not None
        ):
            return None
        try:
            readers = _READERS.get()
        except LookupError:
            readers = {}
            _READERS.set(readers)
        reader = readers.get(bind)
        if reader is None:
            conninfo = libpq_url(bind)
            reader = readers[bind] = cls(bind.url, conninfo)
        return reader

    async def read(self) -> Hashable | None:
        """(URL, version), or None where the version cannot be read here (no row, or the
        database unreachable: the caller then reads it through a session, as a route would)."""
        wanted = self._started + 1  # the first read that starts from now on
        while self._finished < wanted:
            if self._in_flight is not None:
                await self._in_flight.wait()
                continue
            self._started += 1
            number, done = self._started, anyio.Event()
            self._in_flight = done
            result: Hashable | None = None
            try:
                result = await self._query()
            finally:
                self._finished, self._result, self._in_flight = number, result, None
                done.set()
        return self._result

    async def _query(self) -> Hashable | None:
        for attempt in range(2):  # a connection the database dropped is opened again once
            try:
                if self._connection is None or self._connection.closed:
                    self._connection = await psycopg.AsyncConnection.connect(
                        self.conninfo, autocommit=True, connect_timeout=5
                    )
                cursor = await self._connection.execute(
                    "SELECT version FROM leaderboard_version WHERE id = 1"
                )
                row = await cursor.fetchone()
                return None if row is None else (self.url, row[0])
            except psycopg.OperationalError as exc:
                if self._connection is not None:
                    await self._connection.close()
                self._connection = None
                if attempt:
                    log.warning("leaderboard version: database unreachable (%s)", exc)
        return None


# per event loop: an async connection belongs to the loop that opened it
_READERS: RunVar[dict[Engine, VersionReader]] = RunVar("detlab_leaderboard_versions")

# 64 MB: a few hundred dashboard-sized answers (100 rows, 170 KB), or a few of 10,000 rows
answers = AnswerCache(max_bytes=64 * 2**20)

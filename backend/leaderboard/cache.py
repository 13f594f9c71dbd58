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
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from backend.leaderboard.models import LeaderboardVersion

__all__ = ["AnswerCache", "answers", "database_version"]


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

    def answer(self, *, session: Session, key: Hashable, compute: Callable[[], bytes]) -> bytes:
        """The answer kept for key if the database's version is still the one it was computed
        at; else compute(), kept for the next request."""
        version = database_version(session)
        with self._lock:
            kept = self._answers.get(key)
            if version is not None and kept is not None and kept[0] == version:
                self._answers.move_to_end(key)
                self.hits += 1
                return kept[1]
            self.misses += 1
        body = compute()
        if version is not None and len(body) <= self.max_bytes:
            with self._lock:
                self._store(key, version, body)
        return body

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


# 64 MB: a few hundred dashboard-sized answers (100 rows, 170 KB), or a few of 10,000 rows
answers = AnswerCache(max_bytes=64 * 2**20)

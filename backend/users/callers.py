"""Who a token belongs to, kept in memory while the database says nothing changed.

Every request names its caller by a token, and looking it up cost an extra query and an extra
thread hand-off a request: a sixth of the API's CPU under load (issue 13). A looked-up caller
is kept per process, for DETLAB_TOKEN_CACHE_S at most, and forgotten as soon as the database
announces a change to any user or token:

- Triggers (migration 0014) `NOTIFY detlab_auth` when a token is revoked, expires, is deleted
  or moves, and when a user's role, name or activity changes or a user is deleted. Postgres
  delivers it at commit, whoever wrote: this process, another API process, the command line
  or an admin's SQL.
- Each process listens on a connection of its own (a daemon thread). A notification bumps the
  cache's generation, which every kept caller must match; a lookup that started before it is
  not kept. While the listener is not connected (starting, or the database unreachable)
  nothing is served from the cache: every request looks its token up as before.
- Changes made through this process (`revoke_token`, `update_user`) also clear it at once, so
  the caller who made the change sees it on their very next request.

So a change is in force in every process within the time its notification takes to arrive
(milliseconds). Only Postgres has notifications: on SQLite nothing is kept. Sessions bound to
a connection of their own (a caller's transaction, as the tests use) are not the process's
database, and bypass the cache too.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime

import psycopg
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from backend.db import as_utc, libpq_url, utcnow
from backend.users.models import Role, User

__all__ = [
    "CHANNEL",
    "LISTENER_NAME",
    "Caller",
    "CallerCache",
    "cache_for",
    "clear_all",
    "stop_all",
]

log = logging.getLogger(__name__)

CHANNEL = "detlab_auth"
LISTENER_NAME = "detlab-auth-listener"  # its connection's application_name
# a process keeps at most this many callers (one a token in use); past it, it starts afresh
MAX_CALLERS = 10_000
RECONNECT_S = (0.5, 30.0)  # the listener's first and longest wait before reconnecting


@dataclass(frozen=True)
class Caller:
    """The user a request's token belongs to, as its access rule checked them."""

    id: int
    name: str
    role: Role
    active: bool
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> Caller:
        return cls(
            id=user.id,
            name=user.name,
            role=user.role,
            active=user.active,
            created_at=user.created_at,
        )


@dataclass(frozen=True)
class _Kept:
    caller: Caller
    generation: int
    kept_at: float  # time.monotonic()
    token_expires_at: datetime | None


class CallerCache:
    """Callers by token digest, for one database, valid while its generation stands."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self.generation = 0
        self.listening = False
        self.backend_pid: int | None = None  # the listening connection's server process
        self._kept: dict[str, _Kept] = {}
        self._lock = threading.Lock()
        self._listener: threading.Thread | None = None
        self._stopped = threading.Event()

    def get(self, digest: str, *, max_age_s: float) -> Caller | None:
        """The caller kept for digest, if still valid; else None (look it up)."""
        self._ensure_listener()
        with self._lock:
            kept = self._kept.get(digest)
            if kept is None or not self.listening:
                return None
            expires_at = as_utc(kept.token_expires_at)
            if (
                kept.generation != self.generation
                or time.monotonic() - kept.kept_at > max_age_s
                or (expires_at is not None and expires_at <= utcnow())
            ):
                del self._kept[digest]
                return None
            return kept.caller

    def keep(
        self, digest: str, caller: Caller, *, generation: int, token_expires_at: datetime | None
    ) -> None:
        """Keep caller, looked up when the generation was `generation`: unless something
        changed since, or the listener is down."""
        with self._lock:
            if generation != self.generation or not self.listening:
                return
            if len(self._kept) >= MAX_CALLERS:
                self._kept.clear()
            self._kept[digest] = _Kept(caller, generation, time.monotonic(), token_expires_at)

    def clear(self) -> None:
        """Forget every caller, and any lookup in progress."""
        with self._lock:
            self.generation += 1
            self._kept.clear()

    def _set_listening(self, listening: bool) -> None:
        with self._lock:
            self.listening = listening
            self.generation += 1
            self._kept.clear()

    def stop(self) -> None:
        """Stop listening for good (the process ends, or its database is dropped): nothing is
        kept from now on, and the listener exits within its 5-second poll instead of
        reconnecting."""
        self._stopped.set()
        self._set_listening(False)

    def _ensure_listener(self) -> None:
        if self._listener is not None or self._stopped.is_set():
            return
        with self._lock:
            if self._listener is None:
                self._listener = threading.Thread(
                    target=self._listen, name="detlab-auth-listener", daemon=True
                )
                self._listener.start()

    def _listen(self) -> None:
        """Forever: connect, LISTEN, clear the cache on every notification; while
        disconnected, nothing is served from the cache."""
        wait = RECONNECT_S[0]
        while not self._stopped.is_set():
            try:
                with psycopg.connect(
                    self.conninfo,
                    autocommit=True,
                    connect_timeout=10,
                    application_name=LISTENER_NAME,
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.backend_pid = conn.info.backend_pid
                    if self._stopped.is_set():
                        return
                    self._set_listening(True)  # what was looked up before is not trusted
                    wait = RECONNECT_S[0]
                    while not self._stopped.is_set():
                        for _ in conn.notifies(timeout=5.0):
                            self.clear()
                        conn.execute("SELECT 1")  # a dead connection raises here
            except Exception as exc:  # noqa: BLE001 - any failure: stop serving, reconnect
                if self._stopped.is_set():
                    return
                log.warning("token cache: listener lost (%s); reconnecting", exc)
            self._set_listening(False)
            self._stopped.wait(wait)
            wait = min(wait * 2, RECONNECT_S[1])


_caches: dict[str, CallerCache] = {}  # by database
_engines: dict[Engine, CallerCache] = {}  # the same, by engine: no URL work a request
_caches_lock = threading.Lock()


def cache_for(session: Session) -> CallerCache | None:
    """The cache of the database session is bound to; None where nothing may be kept (SQLite,
    or a session on a connection of its own)."""
    bind = session.get_bind()
    if not isinstance(bind, Engine):
        return None
    cache = _engines.get(bind)
    if cache is None and bind.dialect.name == "postgresql":
        conninfo = libpq_url(bind)
        with _caches_lock:
            cache = _caches.setdefault(conninfo, CallerCache(conninfo))
            _engines[bind] = cache
    return cache


def stop_all() -> None:
    """Stop every listener of this process (before its databases go away)."""
    for cache in list(_caches.values()):
        cache.stop()


def clear_all() -> None:
    """Forget every kept caller in this process (a user or a token changed here)."""
    for cache in list(_caches.values()):
        cache.clear()

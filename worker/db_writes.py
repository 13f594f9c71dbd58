"""A worker's database writes ride out blips: retried with backoff through reconnects."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError

from worker.outcomes import JobFailed

__all__ = ["DatabaseUnreachable", "retrying"]

log = logging.getLogger(__name__)
T = TypeVar("T")
# the errors of a lost or refused connection; a bad statement is not retried
RETRYABLE = (OperationalError, InterfaceError)
MAX_WAIT_S = 30.0


class DatabaseUnreachable(JobFailed):
    """The database stayed unreachable longer than the grace the settings allow."""


def retrying(write: Callable[[], T], *, grace_s: float, what: str) -> T:
    """Run ``write`` (a whole transaction: it opens and commits its own session) until it
    succeeds; on a connection error wait 0.5 s, 1 s, 2 s ... (at most 30 s) and try again, for
    at most ``grace_s`` seconds, then raise DatabaseUnreachable naming ``what``."""
    deadline = time.monotonic() + grace_s
    wait = 0.5
    while True:
        try:
            return write()
        except RETRYABLE as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if time.monotonic() + wait > deadline:
                raise DatabaseUnreachable(
                    f"the database was unreachable for more than {grace_s:g} s while "
                    f"{what} ({reason}); raise DETLAB_DB_GRACE_S to wait longer"
                ) from exc
            log.warning(
                "database write failed while %s (%s); retrying in %.1f s", what, reason, wait
            )
            time.sleep(wait)
            wait = min(wait * 2, MAX_WAIT_S)

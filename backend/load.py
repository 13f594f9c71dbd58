"""Load shedding: past DETLAB_MAX_REQUESTS_IN_FLIGHT requests in progress, a 503 at once.

A request the API cannot start soon is better refused in a millisecond, with Retry-After
(DETLAB_RETRY_AFTER_S), than queued until the client gives up. The limit counts the requests
between their arrival and the end of their response; `/health` is neither counted nor refused,
so a probe can tell a busy API from a dead one.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.config import get_settings

__all__ = ["ALWAYS_ANSWERED", "InFlightLimit", "unavailable"]

ALWAYS_ANSWERED = frozenset({"/health"})


def unavailable(reason: str) -> JSONResponse:
    """A 503 saying why and when to retry, with Retry-After (DETLAB_RETRY_AFTER_S)."""
    retry_after_s = get_settings().retry_after_s
    message = f"{reason}; retry after {retry_after_s} s"
    return JSONResponse(
        status_code=503,
        content={"detail": {"message": message}},
        headers={"Retry-After": str(retry_after_s)},
    )


class InFlightLimit:
    """Pure ASGI middleware that answers 503 while too many requests are in progress."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.in_flight = 0  # one event loop per process: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in ALWAYS_ANSWERED:
            await self.app(scope, receive, send)
            return
        limit = get_settings().max_requests_in_flight  # per request: the settings in force
        if self.in_flight >= limit:
            refusal = unavailable(
                f"the API is serving {limit} requests, the most it takes at once "
                "(DETLAB_MAX_REQUESTS_IN_FLIGHT)"
            )
            await refusal(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

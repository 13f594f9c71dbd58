"""The DetLab API: `uvicorn backend.main:app`. Migrates the database before serving."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from backend.config import get_settings
from backend.datasets.router import router as datasets_router
from backend.errors import DomainError
from backend.evaluations.router import groups_router, legend_router
from backend.evaluations.router import router as evaluations_router
from backend.experiments.router import router as experiments_router
from backend.jobs.router import router as jobs_router
from backend.leaderboard.router import router as leaderboard_router
from backend.limits import RefuseNul, RequestBodyLimit
from backend.load import InFlightLimit, unavailable
from backend.migrate import upgrade_head
from backend.runs.router import router as runs_router
from backend.users.access import PUBLIC
from backend.users.middleware import ConfiguredCors, HideServerPaths, RequireToken
from backend.users.router import audit_router, tokens_router, users_router
from backend.weights.router import router as weights_router
from backend.workers.router import router as workers_router

__all__ = ["create_app", "app"]


def _json_safe(value: Any) -> Any:
    """value with non-finite floats as text and anything else JSON cannot hold as its repr."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def create_app(*, migrate: bool = True) -> FastAPI:
    """Build the app; with migrate, `alembic upgrade head` runs before the first request."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        settings = get_settings()  # invalid settings stop start-up here, naming the variable
        settings.prepare_folders()
        # the threads that run the sync routes; request sessions are bounded by them
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        if migrate:
            upgrade_head(settings.database_url)
        yield

    app = FastAPI(title="DetLab", version="0.1.0", lifespan=lifespan)
    # innermost: sees the route's answer, and who asked (set by the route's access rule)
    app.add_middleware(HideServerPaths)
    # added early, so middleware added below (which refuses without reading) runs before it
    app.add_middleware(RequestBodyLimit)

    @app.exception_handler(DomainError)
    async def _domain_error(_: Request, exc: DomainError) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status_code, content={"detail": exc.to_detail()}, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own 422, made encodable: a NaN or Infinity the client sent is echoed back
        # as text (strict JSON has no such numbers, and the response would otherwise fail)
        return JSONResponse(status_code=422, content={"detail": _json_safe(exc.errors())})

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        # the framework's own refusals (no such path, a method not allowed, a body it cannot
        # parse, a body too large) in the body every other error has
        message = str(exc.detail)
        if exc.status_code == 400:  # only ever about the body
            message += "; send the body the route documents (JSON in UTF-8, or a multipart form)"
        content = {"detail": {"message": message}}
        return JSONResponse(status_code=exc.status_code, content=content, headers=exc.headers)

    @app.exception_handler(DataError)
    async def _data_error(_: Request, exc: DataError) -> JSONResponse:
        # what the database refuses to store (a NUL byte in a text, a number out of range)
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else "refused by the database"
        message = f"a value cannot be stored: {reason}; remove NUL bytes and oversized numbers"
        return JSONResponse(status_code=422, content={"detail": {"message": message}})

    @app.exception_handler(PoolTimeout)
    async def _pool_timeout(_: Request, exc: PoolTimeout) -> JSONResponse:
        # every connection busy for DETLAB_DB_POOL_TIMEOUT_S: the API is overloaded, not broken
        return unavailable(
            "no database connection came free in time; raise DETLAB_DB_POOL_SIZE (and "
            "Postgres' max_connections) or DETLAB_DB_POOL_TIMEOUT_S"
        )

    app.add_middleware(RefuseNul)

    @app.get("/health", tags=["meta"], dependencies=[PUBLIC])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    for router in (
        datasets_router,
        jobs_router,
        leaderboard_router,
        evaluations_router,
        legend_router,
        groups_router,
        weights_router,
        runs_router,
        experiments_router,
        workers_router,
        audit_router,
        # last, so the fuzzer (tests/test_fuzz_api.py) revokes its own token only at the end
        users_router,
        tokens_router,
    ):
        app.include_router(router)
    # no token, or a body a cross-site form could send: refused before the body is read
    app.add_middleware(RequireToken)
    app.add_middleware(ConfiguredCors)
    # added last, so it runs first: a refused request costs nothing more
    app.add_middleware(InFlightLimit)
    return app


app = create_app()

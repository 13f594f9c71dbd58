"""The DetLab API: `uvicorn backend.main:app`. Migrates the database before serving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from backend.config import get_settings
from backend.datasets.router import router as datasets_router
from backend.errors import DomainError
from backend.evaluations.router import groups_router, legend_router
from backend.evaluations.router import router as evaluations_router
from backend.jobs.router import router as jobs_router
from backend.leaderboard.router import router as leaderboard_router
from backend.migrate import upgrade_head
from backend.weights.router import router as weights_router

__all__ = ["create_app", "app"]


def create_app(*, migrate: bool = True) -> FastAPI:
    """Build the app; with migrate, `alembic upgrade head` runs before the first request."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        settings = get_settings()  # invalid settings stop start-up here, naming the variable
        settings.prepare_folders()
        if migrate:
            upgrade_head(settings.database_url)
        yield

    app = FastAPI(title="DetLab", version="0.1.0", lifespan=lifespan)

    @app.exception_handler(DomainError)
    async def _domain_error(_: Request, exc: DomainError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"detail": exc.to_detail()})

    @app.get("/health", tags=["meta"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    for router in (
        datasets_router,
        jobs_router,
        leaderboard_router,
        evaluations_router,
        legend_router,
        groups_router,
        weights_router,
    ):
        app.include_router(router)
    return app


app = create_app()

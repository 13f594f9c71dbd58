"""Apply the Alembic migrations: `python -m backend.migrate` (the API runs it at start-up)."""

from __future__ import annotations

import fcntl
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

__all__ = ["alembic_config", "upgrade_head", "is_up_to_date"]

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(database_url: str | None = None) -> Config:
    """Alembic config for this checkout, optionally pointed at another database."""
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    if database_url:
        config.attributes["database_url"] = database_url
    config.attributes["configure_logging"] = False
    return config


# any constant shared by every DetLab process: the key of the migrations' advisory lock
_LOCK_KEY = 0x64657463  # "detc"


def upgrade_head(database_url: str | None = None) -> None:
    """Bring the database schema to the newest revision.

    Several processes may start at once (uvicorn's workers, API replicas, workers that migrate
    a test database): on Postgres they take turns under an advisory lock, on SQLite under a
    file lock beside the database, so the second finds the schema at head instead of racing
    the first to create it."""
    url = database_url or _configured_url()
    if url.startswith("sqlite") and "///" in url:
        path = Path(url.split("///", 1)[1])
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".migrate.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            command.upgrade(alembic_config(database_url), "head")
        return
    if url.startswith("postgresql"):
        from backend.db import make_engine

        engine = make_engine(url)
        try:
            with engine.connect() as locked:
                locked.exec_driver_sql(f"SELECT pg_advisory_lock({_LOCK_KEY})")
                locked.commit()
                try:
                    command.upgrade(alembic_config(database_url), "head")
                finally:
                    locked.exec_driver_sql(f"SELECT pg_advisory_unlock({_LOCK_KEY})")
                    locked.commit()
        finally:
            engine.dispose()
        return
    command.upgrade(alembic_config(database_url), "head")


def _configured_url() -> str:
    from backend.config import get_settings

    return get_settings().database_url


def is_up_to_date(engine: Engine) -> bool:
    """True when the database is at the newest revision."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision() == head


if __name__ == "__main__":
    from backend.config import get_settings

    settings = get_settings()
    settings.prepare_folders()
    upgrade_head(settings.database_url)
    print(f"database at head: {settings.database_url}")

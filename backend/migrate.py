"""Apply the Alembic migrations: `python -m backend.migrate` (the API runs it at start-up)."""

from __future__ import annotations

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


def upgrade_head(database_url: str | None = None) -> None:
    """Bring the database schema to the newest revision."""
    command.upgrade(alembic_config(database_url), "head")


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

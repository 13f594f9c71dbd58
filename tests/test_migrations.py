"""The migrations are the only source of the schema, and they match the models."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from backend.migrate import alembic_config, is_up_to_date, upgrade_head
from backend.models import Base


def test_models_and_migrations_agree_on_postgres(pg_url):
    engine = create_engine(pg_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert differences == []


def test_postgres_is_at_head(pg_url):
    engine = create_engine(pg_url)
    assert is_up_to_date(engine)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {
        "datasets",
        "jobs",
        "metric_points",
        "evaluations",
        "image_results",
        "weights",
        "alembic_version",
    } <= tables


def test_sqlite_upgrade_downgrade_upgrade(tmp_path):
    from alembic import command

    url = f"sqlite:///{tmp_path / 'detlab.db'}"
    upgrade_head(url)
    command.downgrade(alembic_config(url), "base")
    engine = create_engine(url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    upgrade_head(url)
    assert is_up_to_date(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def test_duplicate_metric_points_are_removed_keeping_the_latest(tmp_path):
    from alembic import command
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'detlab.db'}"
    command.upgrade(alembic_config(url), "0004")
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (id, kind, status, spec, progress_iter, cancel_requested, "
                "attempts, created_at) VALUES (1, 'finetune', 'running', '{}', 0, 0, 2, "
                "'2026-11-30')"
            )
        )
        for value, step in ((1.0, 10), (2.0, 11), (2.5, 11), (3.0, 12)):
            connection.execute(
                text(
                    "INSERT INTO metric_points (job_id, key, step, value) "
                    "VALUES (1, 'train/loss', :step, :value)"
                ),
                {"step": step, "value": value},
            )
    upgrade_head(url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT step, value FROM metric_points ORDER BY step")).all()
    engine.dispose()
    assert [tuple(row) for row in rows] == [(10, 1.0), (11, 2.5), (12, 3.0)]


def test_processes_starting_together_migrate_one_after_the_other(pg_url):
    """uvicorn's workers, API replicas and workers all migrate at start-up: on a fresh database
    they must not race to create the same tables."""
    import os
    import subprocess
    import sys
    import uuid

    import psycopg

    name = f"detlab_race_{uuid.uuid4().hex[:8]}"
    admin_url = pg_url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0]
    with psycopg.connect(f"{admin_url}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{admin_url}/{name}"
    try:
        env = {**os.environ, "DETLAB_DATABASE_URL": url}
        started = [
            subprocess.Popen(
                [sys.executable, "-m", "backend.migrate"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(4)
        ]
        outputs = [process.communicate(timeout=180)[0] for process in started]
        assert [process.returncode for process in started] == [0] * 4, "\n".join(outputs)
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        assert is_up_to_date(engine)
        engine.dispose()
    finally:
        with psycopg.connect(f"{admin_url}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

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

"""the leaderboard's version: a number the database changes whenever a row the leaderboard
reads changes, so that the API can keep its answers until then

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 19:00:00

Triggers, not application code, change it: the API, the workers and anything else that writes
the database (an admin's SQL) all invalidate the API's cached leaderboards that way. They fire
for rows that can appear on a leaderboard: a job that is or was succeeded (or whose spec
changes: an evaluate job shows its source job's architecture), and every evaluation and
weights row. Submissions, progress and heartbeats of unfinished jobs leave it alone.

On Postgres the triggers are deferred constraint triggers: the version row is written at
commit, so a transaction holds its lock only while it commits (never while it goes on to lock
other rows, which could deadlock). Its values come from a sequence, never reused even by a
rolled-back transaction. SQLite has one writer at a time and no sequences: plain triggers set a
random 64-bit value. A SQLite migration that rebuilds one of these tables (batch mode) drops
its triggers: tests/leaderboard/test_leaderboard_cache.py checks they exist at head.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (name, table, event, condition): the triggers on both databases; their names are also the
# constraints that backend/leaderboard/cache.py makes immediate on Postgres
RANKED_JOB = "NEW.status = 'succeeded'"
TRIGGERS = (
    ("leaderboard_job_inserted", "jobs", "INSERT", RANKED_JOB),
    (
        "leaderboard_job_updated",
        "jobs",
        "UPDATE",
        "OLD.status = 'succeeded' OR NEW.status = 'succeeded' OR {spec_changed}",
    ),
    ("leaderboard_job_deleted", "jobs", "DELETE", "OLD.status = 'succeeded'"),
    ("leaderboard_evaluation_inserted", "evaluations", "INSERT", None),
    ("leaderboard_evaluation_updated", "evaluations", "UPDATE", None),
    ("leaderboard_evaluation_deleted", "evaluations", "DELETE", None),
    ("leaderboard_weights_updated", "weights", "UPDATE", None),
    ("leaderboard_weights_deleted", "weights", "DELETE", None),
)


def upgrade() -> None:
    op.create_table(
        "leaderboard_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_leaderboard_version")),
    )
    op.execute("INSERT INTO leaderboard_version (id, version) VALUES (1, 0)")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE SEQUENCE leaderboard_version_seq")
        op.execute(
            """
            CREATE FUNCTION leaderboard_changed() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE leaderboard_version SET version = nextval('leaderboard_version_seq');
                RETURN NULL;
            END
            $$
            """
        )
        for name, table, event, condition in TRIGGERS:
            when = _when(condition, spec_changed="OLD.spec IS DISTINCT FROM NEW.spec")
            op.execute(
                f"CREATE CONSTRAINT TRIGGER {name} AFTER {event} ON {table} "
                f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW {when}"
                "EXECUTE FUNCTION leaderboard_changed()"
            )
    else:
        for name, table, event, condition in TRIGGERS:
            when = _when(condition, spec_changed="OLD.spec IS NOT NEW.spec")
            op.execute(
                f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW {when}"
                "BEGIN UPDATE leaderboard_version SET version = random(); END"
            )


def _when(condition: str | None, *, spec_changed: str) -> str:
    return f"WHEN ({condition.format(spec_changed=spec_changed)}) " if condition else ""


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for name, table, _, _ in TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON {table}" if postgres else f"DROP TRIGGER {name}")
    if postgres:
        op.execute("DROP FUNCTION leaderboard_changed()")
        op.execute("DROP SEQUENCE leaderboard_version_seq")
    op.drop_table("leaderboard_version")

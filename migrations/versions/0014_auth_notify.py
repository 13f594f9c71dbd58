"""announce changes to users and tokens: NOTIFY detlab_auth, so that API processes forget the
callers they keep (backend/users/callers.py)

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30 21:00:00

Statement triggers on Postgres only: SQLite has no notifications, and the API keeps no callers
there. They fire for what decides whether a token is accepted and for whom: a token's hash,
owner, expiry or revocation, a user's name, role or activity, and any deletion or truncation.
A token's last_used_at, written as it is used, does not fire them.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (name, table, events)
TRIGGERS = (
    ("auth_users_changed", "users", "UPDATE OF name, role, active OR DELETE OR TRUNCATE"),
    (
        "auth_tokens_changed",
        "api_tokens",
        "UPDATE OF token_hash, user_id, expires_at, revoked_at OR DELETE OR TRUNCATE",
    ),
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION auth_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('detlab_auth', TG_TABLE_NAME);
            RETURN NULL;
        END
        $$
        """
    )
    for name, table, events in TRIGGERS:
        op.execute(
            f"CREATE TRIGGER {name} AFTER {events} ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION auth_changed()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, table, _ in TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON {table}")
    op.execute("DROP FUNCTION auth_changed()")

"""the database is the queue: claim tokens, queue names and queue times on jobs

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 08:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("claim_token", sa.String(length=32), nullable=True))
        batch.add_column(
            sa.Column("queue", sa.String(length=100), nullable=False, server_default="detlab")
        )
        batch.add_column(sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
    # jobs queued before this revision keep their place: queued when created
    op.execute("UPDATE jobs SET queued_at = created_at, sent_at = created_at")
    op.create_index("ix_jobs_queue_order", "jobs", ["status", "queue", "queued_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_queue_order", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("sent_at")
        batch.drop_column("queued_at")
        batch.drop_column("queue")
        batch.drop_column("claim_token")

"""jobs belong to replicate groups

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 06:35:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("group_id", sa.Integer(), nullable=True))
        batch.create_index("ix_jobs_group_id", ["group_id"])
        batch.create_foreign_key(
            "fk_jobs_group_id_jobs", "jobs", ["group_id"], ["id"], ondelete="SET NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("fk_jobs_group_id_jobs", type_="foreignkey")
        batch.drop_index("ix_jobs_group_id")
        batch.drop_column("group_id")

"""experiments, the jobs' reproducibility record, and re-runs

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("base_spec", JSON, nullable=False),
        sa.Column("axes", JSON, nullable=False),
        sa.Column("repeats", sa.Integer(), nullable=False),
        sa.Column("template", sa.String(length=100), nullable=True),
        sa.Column("owner_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["users.id"],
            name=op.f("fk_experiments_owner_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiments")),
    )
    op.create_index(op.f("ix_experiments_owner_id"), "experiments", ["owner_id"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("experiment_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("rerun_of_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("record", JSON, nullable=True))
        batch.create_foreign_key(
            "fk_jobs_experiment_id_experiments",
            "experiments",
            ["experiment_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_foreign_key(
            "fk_jobs_rerun_of_id_jobs", "jobs", ["rerun_of_id"], ["id"], ondelete="SET NULL"
        )
    op.create_index(op.f("ix_jobs_experiment_id"), "jobs", ["experiment_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_jobs_experiment_id"), table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("fk_jobs_rerun_of_id_jobs", type_="foreignkey")
        batch.drop_constraint("fk_jobs_experiment_id_experiments", type_="foreignkey")
        batch.drop_column("record")
        batch.drop_column("rerun_of_id")
        batch.drop_column("experiment_id")
    op.drop_index(op.f("ix_experiments_owner_id"), table_name="experiments")
    op.drop_table("experiments")

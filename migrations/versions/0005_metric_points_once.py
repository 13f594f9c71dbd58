"""each metric point once: duplicates removed (the latest kept), (job, key, step) unique

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 07:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # a resumed job used to write the steps after its checkpoint twice: keep the later write
    op.execute(
        "DELETE FROM metric_points WHERE id NOT IN "
        "(SELECT MAX(id) FROM metric_points GROUP BY job_id, key, step)"
    )
    with op.batch_alter_table("metric_points") as batch:
        batch.drop_index("ix_metric_points_job_key_step")
        batch.create_index("ix_metric_points_job_key_step", ["job_id", "key", "step"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("metric_points") as batch:
        batch.drop_index("ix_metric_points_job_key_step")
        batch.create_index("ix_metric_points_job_key_step", ["job_id", "key", "step"])

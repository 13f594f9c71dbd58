"""jobs of kinds evaluate (a checkpoint scored) and import (predictions made elsewhere)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 08:45:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _kinds(*kinds: str) -> None:
    allowed = ", ".join(f"'{kind}'" for kind in kinds)
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("job_kind", type_="check")
        batch.create_check_constraint("job_kind", f"kind IN ({allowed})")


def upgrade() -> None:
    _kinds("pretrain", "finetune", "evaluate", "import")


def downgrade() -> None:
    op.execute("DELETE FROM jobs WHERE kind IN ('evaluate', 'import')")
    _kinds("pretrain", "finetune")

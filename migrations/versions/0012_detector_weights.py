"""weights of whole detectors: a weights entry's kind (backbone or detector) and its detector

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 18:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("weights") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(length=20), server_default="backbone", nullable=False)
        )
        batch.add_column(sa.Column("detector", sa.String(length=50), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("weights") as batch:
        batch.drop_column("detector")
        batch.drop_column("kind")

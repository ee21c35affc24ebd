"""inbox events that failed deterministically are set aside, not marked applied

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inbox") as batch_op:
        batch_op.add_column(sa.Column("set_aside_at", sa.DateTime(timezone=True), nullable=True))
    # Events the old code marked applied with an error outcome were never applied: set aside.
    op.execute(
        "UPDATE inbox SET set_aside_at = applied_at, applied_at = NULL "
        "WHERE outcome LIKE 'error:%'"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE inbox SET applied_at = set_aside_at WHERE set_aside_at IS NOT NULL"
    )
    with op.batch_alter_table("inbox") as batch_op:
        batch_op.drop_column("set_aside_at")

"""what reviewers did with each review flag (confirmed / rejected) and the cycle that raised it

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("review_flags") as batch_op:
        batch_op.add_column(sa.Column("cycle_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("outcome", sa.String(16), nullable=True))
        batch_op.add_column(sa.Column("resolved_label", sa.String(500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("review_flags") as batch_op:
        batch_op.drop_column("resolved_label")
        batch_op.drop_column("outcome")
        batch_op.drop_column("cycle_id")

"""labeled selection picks wait until the bandit judges them (pooled over pushes)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("selection_picks") as batch_op:
        batch_op.add_column(
            sa.Column("judged", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    # Before this revision every labeled pick was judged by the cycle after its push.
    op.execute(sa.text("UPDATE selection_picks SET judged = TRUE WHERE state = 'labeled'"))


def downgrade() -> None:
    with op.batch_alter_table("selection_picks") as batch_op:
        batch_op.drop_column("judged")

"""the audit sample and the adaptive selection's picks and rewards

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "selection_picks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("cycle_id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.BigInteger(), nullable=False),
        sa.Column("arm", sa.String(length=32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(length=200), nullable=True),
        sa.Column("predicted", sa.String(length=500), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("label", sa.String(length=500), nullable=True),
        sa.Column("correct", sa.Boolean(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("selection_picks") as batch_op:
        batch_op.create_index(
            "ix_selection_picks_project", ["project_id", "state", "cycle_id"], unique=False
        )
        batch_op.create_index("ix_selection_picks_arm", ["project_id", "arm", "state"], unique=False)
    op.create_table(
        "selection_rewards",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("cycle_id", sa.Integer(), nullable=False),
        sa.Column("arm", sa.String(length=32), nullable=False),
        sa.Column("win", sa.Float(), nullable=False),
        sa.Column("gain", sa.Float(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("selection_rewards") as batch_op:
        batch_op.create_index(
            "ix_selection_rewards_project", ["project_id", "cycle_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("selection_rewards") as batch_op:
        batch_op.drop_index("ix_selection_rewards_project")
    op.drop_table("selection_rewards")
    with op.batch_alter_table("selection_picks") as batch_op:
        batch_op.drop_index("ix_selection_picks_arm")
        batch_op.drop_index("ix_selection_picks_project")
    op.drop_table("selection_picks")

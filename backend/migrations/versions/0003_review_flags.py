"""task data and review flags

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch_op:
        batch_op.add_column(sa.Column("data", sa.JSON(), nullable=True))
    op.create_table(
        "review_flags",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("task_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("annotated_label", sa.String(length=500), nullable=True),
        sa.Column("model_label", sa.String(length=500), nullable=True),
        sa.Column("model_confidence", sa.Float(), nullable=True),
        sa.Column("flagged_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("pushed", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("review_flags") as batch_op:
        batch_op.create_index("ix_review_flags_project", ["project_id", "kind"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("review_flags") as batch_op:
        batch_op.drop_index("ix_review_flags_project")
    op.drop_table("review_flags")
    with op.batch_alter_table("tasks") as batch_op:
        batch_op.drop_column("data")

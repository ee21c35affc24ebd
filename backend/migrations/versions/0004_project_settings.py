"""per-project settings, their history, and task image hashes

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "project_settings",
        sa.Column("project_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("overrides", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("project_id"),
    )
    op.create_table(
        "project_settings_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("token_name", sa.String(length=200), nullable=False),
        sa.Column("changes", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("project_settings_history") as batch_op:
        batch_op.create_index(
            "ix_project_settings_history_project", ["project_id", "id"], unique=False
        )
    op.create_table(
        "task_images",
        sa.Column("task_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("sha", sa.String(length=64), nullable=False),
        sa.Column("backbone", sa.String(length=200), nullable=False),
        sa.Column("embedded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("task_id"),
    )
    with op.batch_alter_table("task_images") as batch_op:
        batch_op.create_index("ix_task_images_project", ["project_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("task_images") as batch_op:
        batch_op.drop_index("ix_task_images_project")
    op.drop_table("task_images")
    with op.batch_alter_table("project_settings_history") as batch_op:
        batch_op.drop_index("ix_project_settings_history_project")
    op.drop_table("project_settings_history")
    op.drop_table("project_settings")

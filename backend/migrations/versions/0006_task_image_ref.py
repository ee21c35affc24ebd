"""task_images remember the image reference they embedded

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("task_images") as batch_op:
        batch_op.add_column(sa.Column("image_ref", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("task_images") as batch_op:
        batch_op.drop_column("image_ref")

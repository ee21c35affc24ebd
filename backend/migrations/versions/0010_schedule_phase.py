"""each recurring schedule's next run kept in loop_state; APScheduler's job table dropped

The scheduler's jobs now live in memory (they are alarm clocks for what the state database
holds), so ``apscheduler_jobs`` is no longer written. A schedule's phase is kept in
``loop_state.schedule``/``schedule_next_at``; an upgraded deployment's schedules start a new phase
once, from the first start after the upgrade.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

JOB_TABLE = "apscheduler_jobs"


def upgrade() -> None:
    with op.batch_alter_table("loop_state") as batch_op:
        batch_op.add_column(sa.Column("schedule", sa.String(length=200), nullable=True))
        batch_op.add_column(
            sa.Column("schedule_next_at", sa.DateTime(timezone=True), nullable=True)
        )
    if JOB_TABLE in sa.inspect(op.get_bind()).get_table_names():
        op.drop_table(JOB_TABLE)


def downgrade() -> None:
    with op.batch_alter_table("loop_state") as batch_op:
        batch_op.drop_column("schedule_next_at")
        batch_op.drop_column("schedule")

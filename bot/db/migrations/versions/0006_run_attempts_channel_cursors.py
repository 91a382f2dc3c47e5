"""reliability: a run's attempt number, and the last event seen in each channel

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27

- `agent_runs.attempt`: 1 for a run's first try; a run lost with its worker is tried once more
  as attempt 2 when `agent.retry_lost_runs` is on.
- `channel_cursors`: per platform and channel, the newest message the bot has seen (a Slack ts,
  a Discord message id), so after downtime it reads what it missed since then, once.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agent_runs") as batch_op:
        batch_op.add_column(sa.Column("attempt", sa.Integer(), server_default="1", nullable=False))
    op.create_table(
        "channel_cursors",
        sa.Column("platform", sa.String(length=32), primary_key=True),
        sa.Column("channel", sa.String(length=128), primary_key=True),
        sa.Column("last_seen", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("channel_cursors")
    with op.batch_alter_table("agent_runs") as batch_op:
        batch_op.drop_column("attempt")

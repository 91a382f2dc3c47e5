"""reliability: whether a finished run's status message shows its end

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27

- `agent_runs.final_shown`: false from a run's end until its status message has been edited to
  say how it ended. A worker killed in between leaves it false, and a reaper makes that edit.
  Runs stored before this revision count as shown.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agent_runs") as batch_op:
        batch_op.add_column(sa.Column("final_shown", sa.Boolean(), server_default=sa.true(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("agent_runs") as batch_op:
        batch_op.drop_column("final_shown")

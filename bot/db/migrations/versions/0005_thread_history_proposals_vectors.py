"""memory: a thread's platform history fetched once, proposed memories, and memory vectors

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

- `conversations.history_fetched_at`: when what was said in the thread before the bot was
  mentioned was read from the platform (once per thread; NULL: not yet).
- `memories.platform_message_id`: the chat message that proposed a memory (kind `proposal`),
  so a ✅ reaction on it finds the proposal.
- `memory_vectors`: one local-embedding vector per memory (float32 bytes), with its scope's
  index token so a semantic search scans only the scopes that apply. Deleted with its memory.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch_op:
        batch_op.add_column(sa.Column("history_fetched_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("memories") as batch_op:
        batch_op.add_column(sa.Column("platform_message_id", sa.String(length=128), nullable=True))
        batch_op.create_index("ix_memories_platform_message", ["platform", "platform_message_id"])
    op.create_table(
        "memory_vectors",
        sa.Column("memory_id", sa.Integer(), sa.ForeignKey("memories.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("scope", sa.String(length=40), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
    )
    op.create_index("ix_memory_vectors_scope", "memory_vectors", ["scope", "memory_id"])


def downgrade() -> None:
    op.drop_index("ix_memory_vectors_scope", table_name="memory_vectors")
    op.drop_table("memory_vectors")
    with op.batch_alter_table("memories") as batch_op:
        batch_op.drop_index("ix_memories_platform_message")
        batch_op.drop_column("platform_message_id")
    with op.batch_alter_table("conversations") as batch_op:
        batch_op.drop_column("history_fetched_at")

"""memory: scopes (person, channel, team, thread), sources, version stamps and a full-text index

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

Existing memories (the channel "exchange" notes) become channel memories of their
conversation's channel, and are indexed.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from bot.db import memories

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: The FTS5 table (SQLite): it keeps its own copy of the text, so deleting an entry removes
#: the words with it (a contentless table here, SQLite 3.40, could not delete at all).
CREATE_FTS = (
    f"CREATE VIRTUAL TABLE {memories.FTS_TABLE} USING fts5(scope, body,"
    " tokenize='porter unicode61 remove_diacritics 2')"
)


def upgrade() -> None:
    with op.batch_alter_table("memories") as batch_op:
        batch_op.add_column(sa.Column("scope", sa.String(length=16), server_default="channel", nullable=False))
        batch_op.add_column(sa.Column("platform", sa.String(length=32), server_default="", nullable=False))
        batch_op.add_column(sa.Column("channel", sa.String(length=128), server_default="", nullable=False))
        batch_op.add_column(sa.Column("user_id", sa.String(length=128), server_default="", nullable=False))
        batch_op.add_column(sa.Column("author_id", sa.String(length=128), server_default="", nullable=False))
        batch_op.add_column(sa.Column("author_name", sa.String(length=200), server_default="", nullable=False))
        batch_op.add_column(sa.Column("through_message_id", sa.Integer(), nullable=True))
        batch_op.create_index("ix_memories_place", ["platform", "scope", "channel", "kind", "id"])
        batch_op.create_index("ix_memories_user", ["platform", "user_id"])
        batch_op.create_index("ix_memories_author", ["platform", "author_id"])
    op.create_table(
        "memory_scopes",
        sa.Column("key", sa.String(length=40), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    bind = op.get_bind()
    bind.execute(sa.text(
        "UPDATE memories SET scope = 'channel',"
        " platform = (SELECT c.platform FROM conversations c WHERE c.id = memories.conversation_id),"
        " channel = (SELECT c.channel FROM conversations c WHERE c.id = memories.conversation_id)"
        " WHERE conversation_id IS NOT NULL"))
    if bind.dialect.name == "postgresql":
        op.add_column("memories", sa.Column("search", postgresql.TSVECTOR(), nullable=True))
        op.create_index("ix_memories_search", "memories", ["search"], postgresql_using="gin")
    elif bind.dialect.name == "sqlite":
        op.execute(CREATE_FTS)
    memories.rebuild(bind)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.drop_index("ix_memories_search", table_name="memories")
        op.drop_column("memories", "search")
    elif bind.dialect.name == "sqlite":
        op.execute(f"DROP TABLE IF EXISTS {memories.FTS_TABLE}")
    op.drop_table("memory_scopes")
    bind.execute(sa.text("DELETE FROM memories WHERE kind <> 'exchange'"))
    with op.batch_alter_table("memories") as batch_op:
        batch_op.drop_index("ix_memories_author")
        batch_op.drop_index("ix_memories_user")
        batch_op.drop_index("ix_memories_place")
        for column in ("through_message_id", "author_name", "author_id", "user_id", "channel", "platform", "scope"):
            batch_op.drop_column(column)

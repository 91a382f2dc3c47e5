"""resources: contents kept once per sha256, shares, and a full-text index

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

Existing resource rows stay; they have no stored content, so the index holds their paths.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from bot.db import search

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: The FTS5 table (SQLite): contentless, since the text is kept in resource_contents or the
#: blob store; porter stemming over unicode61 words; prefix indexes for 2 and 3 characters so
#: the shortest prefix queries do not scan the whole term list.
CREATE_FTS = (
    f"CREATE VIRTUAL TABLE {search.FTS_TABLE} USING fts5(scope, name, body, content='',"
    " tokenize='porter unicode61 remove_diacritics 2', prefix='2 3')"
)


def upgrade() -> None:
    op.create_table(
        "resource_contents",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("media_type", sa.String(length=200), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("in_blob", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256"),
    )
    with op.batch_alter_table("resources") as batch_op:
        batch_op.add_column(sa.Column("name", sa.String(length=255), server_default="", nullable=False))
        batch_op.add_column(sa.Column("media_type", sa.String(length=200), server_default="application/octet-stream",
                                      nullable=False))
        batch_op.add_column(sa.Column("requested_by", sa.String(length=200), server_default="", nullable=False))
        batch_op.add_column(sa.Column("permalink", sa.String(length=1000), nullable=True))
        batch_op.add_column(sa.Column("content_sha256", sa.String(length=64), nullable=True))
        batch_op.create_foreign_key("fk_resources_content_sha256", "resource_contents", ["content_sha256"], ["sha256"])
    op.create_table(
        "resource_shares",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("resource_id", sa.Integer(), nullable=False),
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=128), nullable=False),
        sa.Column("thread", sa.String(length=128), nullable=True),
        sa.Column("shared_by", sa.String(length=200), nullable=False),
        sa.Column("platform_message_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["resource_id"], ["resources.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_resource_shares_resource", "resource_shares", ["resource_id"])

    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, path FROM resources")).all()
    if rows:
        bind.execute(sa.text("UPDATE resources SET name = :name WHERE id = :id"),
                     [{"id": row_id, "name": path.rsplit("/", 1)[-1][:255]} for row_id, path in rows])
    if bind.dialect.name == "postgresql":
        op.add_column("resources", sa.Column("search", postgresql.TSVECTOR(), nullable=True))
        op.create_index("ix_resources_search", "resources", ["search"], postgresql_using="gin")
    elif bind.dialect.name == "sqlite":
        op.execute(CREATE_FTS)
    search.rebuild(bind)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.drop_index("ix_resources_search", table_name="resources")
        op.drop_column("resources", "search")
    elif bind.dialect.name == "sqlite":
        op.execute(f"DROP TABLE IF EXISTS {search.FTS_TABLE}")
    op.drop_index("ix_resource_shares_resource", table_name="resource_shares")
    op.drop_table("resource_shares")
    with op.batch_alter_table("resources") as batch_op:
        batch_op.drop_constraint("fk_resources_content_sha256", type_="foreignkey")
        batch_op.drop_column("content_sha256")
        batch_op.drop_column("permalink")
        batch_op.drop_column("requested_by")
        batch_op.drop_column("media_type")
        batch_op.drop_column("name")
    op.drop_table("resource_contents")

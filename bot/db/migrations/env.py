"""Alembic environment: runs on the connection `Database.migrate` hands over."""

from alembic import context

from bot.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - always called through Database.migrate
    raise RuntimeError("run migrations through `python -m bot migrate`")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()

"""Alembic environment: the engine comes from :class:`backend.store.db.Store`."""

from __future__ import annotations

from alembic import context

from backend.store.models import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # pragma: no cover - alembic CLI without our Store
    raise RuntimeError("run migrations through backend.store.db.Store.upgrade()")

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()

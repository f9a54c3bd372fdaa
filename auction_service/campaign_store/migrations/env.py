"""Alembic environment of the campaign store.

``auction_service.campaign_store.db.migrate`` runs it with an open connection (``config.attributes["connection"]``);
there is no alembic.ini. Revisions in ``versions/`` are written by hand: copy the newest,
bump ``revision`` and ``down_revision``, and keep ``auction_service/campaign_store/tables.py`` in step
(a test compares the migrated schema with those tables).
"""

from __future__ import annotations

from alembic import context

from auction_service.campaign_store.tables import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()

"""Alembic environment for eipflow's migrations, configured programmatically (no alembic.ini).

:mod:`eipflow.store.migrations` passes an open connection in ``config.attributes["connection"]``;
offline mode (``eipflow db upgrade --sql``) renders the DDL for the URL in ``sqlalchemy.url``.
"""

from __future__ import annotations

from alembic import context

from eipflow.store.schema import metadata

config = context.config


def _run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("eipflow migrations run through eipflow.store.migrations (or `eipflow db upgrade`)")
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things: later revisions use batch mode, which copies the table there.
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _run_offline()
else:
    _run_online()

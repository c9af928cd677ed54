"""CLI commands: ``eipflow db upgrade`` and ``eipflow db current`` (the schema, via Alembic)."""

from __future__ import annotations

import click

from ..store.database import create_db_engine, redacted, resolve_url, schema_revision, upgrade_schema
from ._context import State, emit, pass_state


@click.group("db")
def db_group() -> None:
    """Manage the database schema (Alembic migrations shipped with eipflow)."""


@db_group.command("upgrade")
@click.argument("revision", default="head")
@click.option("--sql", "offline", is_flag=True, help="print the DDL instead of running it (for a DBA to review)")
@pass_state
def upgrade_cmd(state: State, revision: str, offline: bool) -> None:
    """Migrate the database to REVISION (default: head).

    Safe to run while eipflow processes use the database and from several places at once: a
    schema lock serializes upgrades. Opening eipflow also upgrades automatically.
    """
    url = resolve_url(state.db_url)
    if offline:
        from alembic import command

        from ..store.migrations import alembic_config

        command.upgrade(alembic_config(url=url), revision, sql=True)
        return
    engine = create_db_engine(url)
    try:
        before, after = upgrade_schema(engine, revision)
    finally:
        engine.dispose()
    data = {"url": redacted(url), "from": before, "to": after}
    text = f"{redacted(url)}: already at {after}" if before == after else f"{redacted(url)}: {before} -> {after}"
    emit(state, data, text)


@db_group.command("current")
@pass_state
def current_cmd(state: State) -> None:
    """Show the database's schema revision and whether it is the newest this eipflow knows."""
    from ..store.migrations import HEAD

    url = resolve_url(state.db_url)
    engine = create_db_engine(url)
    try:
        current = schema_revision(engine)
    finally:
        engine.dispose()
    known = current is None or current in known_revisions()
    data = {"url": redacted(url), "current": current, "head": HEAD, "up_to_date": current == HEAD, "known": known}
    if current is None:
        text = f"{redacted(url)}: no eipflow schema (run: eipflow db upgrade); head is {HEAD}"
    elif current == HEAD:
        text = f"{redacted(url)}: {current} (head)"
    elif not known:
        # Written by a newer eipflow: `db upgrade` cannot help (it knows no way forward from there).
        text = (f"{redacted(url)}: {current} is newer than this eipflow knows (its head is {HEAD}); "
                f"upgrade eipflow itself to use this database")
    else:
        text = f"{redacted(url)}: {current} (head is {HEAD}; run: eipflow db upgrade)"
    emit(state, data, text)


def known_revisions() -> frozenset[str]:
    """Every revision this eipflow's migration scripts define."""
    from alembic.script import ScriptDirectory

    from ..store.migrations import alembic_config

    return frozenset(s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions())


def register(root: click.Group) -> None:
    """Add this module's commands to the root group."""
    root.add_command(db_group)

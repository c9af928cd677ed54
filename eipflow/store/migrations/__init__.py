"""eipflow's Alembic migrations, shipped in the package and configured programmatically.

No ``alembic.ini`` is needed: :func:`alembic_config` points Alembic at this directory and
hands it an open connection. ``eipflow db upgrade`` / ``eipflow db current`` and
:func:`eipflow.store.ensure_schema` are the entry points; the plain ``alembic`` command works
too with ``-c`` pointing at a config whose ``script_location`` is ``eipflow.store:migrations``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["HEAD", "INITIAL", "MIGRATIONS_DIR", "alembic_config", "head_revision", "stamp", "upgrade"]

MIGRATIONS_DIR = Path(__file__).resolve().parent

#: The newest revision. Kept as a constant so opening an up-to-date database never imports
#: Alembic (~90 ms); ``tests/db/test_migrations.py`` pins it to the scripts' real head.
HEAD = "0003"
#: The first revision: what a database created before migrations existed is adopted as.
INITIAL = "0001"


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic config for eipflow's scripts, bound to ``connection`` (online) or ``url`` (offline SQL)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The head revision according to the scripts in ``versions/``."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def upgrade(connection: Connection, revision: str = "head", **kwargs: Any) -> None:
    """Run the migrations up to ``revision`` on ``connection`` (inside the caller's transaction)."""
    from alembic import command

    command.upgrade(alembic_config(connection), revision, **kwargs)


def stamp(connection: Connection, revision: str = "head") -> None:
    """Record ``revision`` as applied without running it (the schema was created from the models)."""
    from alembic import command

    command.stamp(alembic_config(connection), revision)

"""Opening a database: URL handling, per-dialect settings, schema creation, error translation."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url

from ..errors import DatabaseError
from .schema import metadata

__all__ = ["DEFAULT_URL", "create_db_engine", "ensure_schema", "redacted", "resolve_url"]

DEFAULT_URL = "sqlite:///eipflow.db"

#: SQLite durability is FULL on purpose: a control plane must not lose a committed
#: intent (a persisted binding that a release path relies on) on power loss.
SQLITE_SYNCHRONOUS = os.environ.get("EIPFLOW_SQLITE_SYNCHRONOUS", "FULL").upper()
SQLITE_BUSY_TIMEOUT_MS = 30_000


def resolve_url(url: str | None) -> str:
    """``url``, else ``$EIPFLOW_DB``, else ``sqlite:///eipflow.db``."""
    return url or os.environ.get("EIPFLOW_DB") or DEFAULT_URL


def redacted(url: str | URL) -> str:
    """The URL without its password, safe for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as given, it has no parsed password
        return str(url)


def create_db_engine(url: str | None = None, **kwargs: Any) -> Engine:
    """An engine with eipflow's settings for the URL's dialect.

    SQLite: WAL, ``synchronous=FULL`` (override with ``EIPFLOW_SQLITE_SYNCHRONOUS``), a 30 s busy
    timeout, and ``BEGIN IMMEDIATE`` for write transactions so two writers queue on the lock instead
    of failing a read-to-write upgrade. PostgreSQL and MariaDB run at READ COMMITTED: every
    transition is a single-row compare-and-swap, which is correct at any isolation level.
    """
    text = resolve_url(url)
    try:
        parsed = make_url(text)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises ArgumentError and ValueError here
        raise DatabaseError(redacted(text), f"not a database URL ({exc})") from None
    backend = parsed.get_backend_name()
    options: dict[str, Any] = {}
    if backend == "sqlite":
        options["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    elif backend in ("postgresql", "mysql", "mariadb"):
        options.update(pool_size=10, max_overflow=20, pool_pre_ping=True, isolation_level="READ COMMITTED")
    options.update(kwargs)
    try:
        engine = sa.create_engine(parsed, **options)
    except Exception as exc:  # noqa: BLE001 - missing driver modules surface as many types
        raise DatabaseError(redacted(parsed), f"cannot create engine: {exc}") from None
    if backend == "sqlite":
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (pysqlite's own BEGIN is deferred)
        cur = dbapi_conn.cursor()
        if engine.url.database not in (None, "", ":memory:"):
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("eipflow_read"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def translate_errors(engine: Engine) -> Iterator[None]:
    """Turn connection-level driver errors into :class:`DatabaseError` (URL without password)."""
    try:
        yield
    except sa.exc.OperationalError as exc:
        raise DatabaseError(redacted(engine.url), _short(exc)) from exc
    except sa.exc.InterfaceError as exc:
        raise DatabaseError(redacted(engine.url), _short(exc)) from exc


def _short(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__


def ensure_schema(engine: Engine) -> None:
    """Create missing tables (idempotent)."""
    with translate_errors(engine):
        metadata.create_all(engine)

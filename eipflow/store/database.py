"""Opening a database: URL handling, per-dialect settings, schema creation, error translation."""

from __future__ import annotations

import functools
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar
from urllib.parse import unquote

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url

from .._logging import get_logger
from ..errors import DatabaseError, InvalidInput
from .schema import metadata

__all__ = [
    "DEFAULT_URL",
    "ISOLATION_LEVEL",
    "create_db_engine",
    "ensure_schema",
    "is_transient",
    "redacted",
    "resolve_url",
    "retry_transient",
    "schema_revision",
    "scrubbed",
    "secrets",
    "transient_retries",
    "translate_errors",
    "upgrade_schema",
]

log = get_logger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_URL = "sqlite:///eipflow.db"

#: SQLite durability is FULL on purpose: a control plane must not lose a committed
#: intent (a persisted binding that a release path relies on) on power loss.
SQLITE_SYNCHRONOUS = "FULL"
SQLITE_SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
SQLITE_BUSY_TIMEOUT_MS = 30_000

#: PostgreSQL and MariaDB/MySQL: every transition is a single-row compare-and-swap
#: (``UPDATE … WHERE uuid AND version``), correct at READ COMMITTED and at REPEATABLE READ (where
#: PostgreSQL reports a concurrent update as 40001, which :func:`retry_transient` retries). READ
#: COMMITTED is chosen because it is PostgreSQL's default and, on InnoDB, takes no gap locks: far
#: fewer deadlocks between inserts into history and work items than MySQL's REPEATABLE READ default.
ISOLATION_LEVEL = "READ COMMITTED"

#: Server pools, per engine (one engine per process): 10 kept + 20 burst covers a worker's
#: threads; pre-ping replaces connections the server dropped (restart, idle timeout, proxy) before a
#: transition uses them; recycling below MySQL's ``wait_timeout`` and common proxy idle limits.
SERVER_POOL: dict[str, Any] = {"pool_size": 10, "max_overflow": 20, "pool_pre_ping": True, "pool_recycle": 1800}


def resolve_url(url: str | None) -> str:
    """``url``, else ``$EIPFLOW_DB``, else ``sqlite:///eipflow.db``."""
    return url or os.environ.get("EIPFLOW_DB") or DEFAULT_URL


#: query parameters whose value is a secret (psycopg's ``password``, PyMySQL's ``passwd``, ``sslpassword``, …)
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|cred|auth", re.IGNORECASE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
UNPARSEABLE = "<unparseable database URL, not shown>"


def _text(url: str | URL) -> str:
    return url.render_as_string(hide_password=False) if isinstance(url, URL) else str(url)


def redacted(url: str | URL) -> str:
    """The URL without any secret, safe for messages and logs.

    Works on the text, not on a parse (a URL SQLAlchemy cannot parse is just as likely to hold a
    password): everything between ``user:`` and the *last* ``@`` before the query is hidden, as is
    the value of every query parameter whose name looks like a secret (``password=``, ``passwd=``,
    ``sslpassword=``, ``…token=``). Text that does not even start with ``scheme://`` is not shown.
    """
    text = _text(url)
    if not _SCHEME.match(text):
        return UNPARSEABLE
    scheme, _, rest = text.partition("://")
    location, sep, query = rest.partition("?")
    userinfo, at, hostpart = location.rpartition("@")
    if at and ":" in userinfo:
        location = f"{userinfo.partition(':')[0]}:***@{hostpart}"
    if sep:
        query = "&".join(
            f"{k}{eq}{'***' if val and _SECRET_KEY.search(k) else val}"
            for k, eq, val in (p.partition("=") for p in query.split("&"))
        )
    return f"{scheme}://{location}{sep}{query}"


def secrets(url: str | URL) -> list[str]:
    """The secret parts of ``url`` (password, secret query values), raw and percent-decoded, longest first."""
    text = _text(url)
    found: set[str] = set()
    rest = text.partition("://")[2] or text
    location, _, query = rest.partition("?")
    userinfo, at, _ = location.rpartition("@")
    if at and ":" in userinfo:
        found.add(userinfo.partition(":")[2])
    for key, _, value in (p.partition("=") for p in query.split("&") if p):
        if _SECRET_KEY.search(key):
            found.add(value)
    found |= {unquote(s) for s in found}
    return sorted((s for s in found if s), key=len, reverse=True)


def scrubbed(message: str, url: str | URL) -> str:
    """``message`` with every secret of ``url`` replaced by ``***`` (driver messages may quote the URL)."""
    for secret in secrets(url):
        message = message.replace(secret, "***")
    return message


def sqlite_synchronous_mode(value: str, source: str = "sqlite_synchronous") -> str:
    """A validated SQLite ``synchronous`` mode (it goes into a PRAGMA: only the known words pass)."""
    mode = value.strip().upper() if isinstance(value, str) else ""
    if mode not in SQLITE_SYNCHRONOUS_MODES:
        raise InvalidInput(f"{source}: {value!r} is not one of {', '.join(SQLITE_SYNCHRONOUS_MODES)}")
    return mode


def create_db_engine(url: str | None = None, *, sqlite_synchronous: str | None = None, **kwargs: Any) -> Engine:
    """An engine with eipflow's settings for the URL's dialect.

    SQLite: WAL, ``synchronous=FULL`` (``sqlite_synchronous=`` overrides it; ``Eipflow.open`` defaults
    it from ``EIPFLOW_SQLITE_SYNCHRONOUS``), a 30 s busy
    timeout, and ``BEGIN IMMEDIATE`` for write transactions so two writers queue on the lock instead
    of failing a read-to-write upgrade. PostgreSQL and MariaDB run at READ COMMITTED
    (:data:`ISOLATION_LEVEL`; pass ``isolation_level=`` to override) with :data:`SERVER_POOL`.
    Keyword arguments go to :func:`sqlalchemy.create_engine` and win over these settings.
    See ``docs/databases.md`` for the rationale.
    """
    text = resolve_url(url)
    userinfo = text.partition("://")[2].partition("?")[0].rpartition("@")[0]
    if ":" in userinfo and "@" in userinfo:
        # SQLAlchemy would split at the first '@' and hand the rest of the password to DNS as a host name.
        raise DatabaseError(redacted(text), "more than one '@' before the host: write an '@' in the password as %40")
    try:
        parsed = make_url(text)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises ArgumentError and ValueError here
        raise DatabaseError(redacted(text), f"not a database URL ({scrubbed(str(exc), text)})") from None
    backend = parsed.get_backend_name()
    options: dict[str, Any] = {}
    if backend == "sqlite":
        options["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    elif backend in ("postgresql", "mysql", "mariadb"):
        options.update(SERVER_POOL, isolation_level=ISOLATION_LEVEL)
    options.update(kwargs)
    try:
        engine = sa.create_engine(parsed, **options)
    except Exception as exc:  # noqa: BLE001 - missing driver modules surface as many types
        raise DatabaseError(redacted(parsed), f"cannot create engine: {scrubbed(str(exc), parsed)}") from None
    if backend == "sqlite":
        _configure_sqlite(engine, sqlite_synchronous_mode(sqlite_synchronous or SQLITE_SYNCHRONOUS))
    return engine


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (pysqlite's own BEGIN is deferred)
        cur = dbapi_conn.cursor()
        if engine.url.database not in (None, "", ":memory:"):
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")  # one of SQLITE_SYNCHRONOUS_MODES
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("eipflow_read"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


# -- errors ------------------------------------------------------------------------------------

#: PostgreSQL SQLSTATEs after which the whole transaction was rolled back and may simply run again:
#: serialization_failure, deadlock_detected.
PG_TRANSIENT = frozenset({"40001", "40P01"})
#: MySQL/MariaDB error numbers: ER_LOCK_DEADLOCK (transaction rolled back), ER_LOCK_WAIT_TIMEOUT
#: (statement rolled back; our transaction context then rolls back the rest before the retry).
MYSQL_TRANSIENT = frozenset({1213, 1205})

TRANSIENT_ATTEMPTS = 8

_retries_lock = threading.Lock()
_retries = 0


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (a driver error, wrapped or not) is a deadlock or serialization failure."""
    if isinstance(exc, DatabaseError):
        return exc.transient
    orig = getattr(exc, "orig", None)
    if orig is None:
        return False
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate is not None:
        return sqlstate in PG_TRANSIENT
    args: tuple[Any, ...] = getattr(orig, "args", ())
    return bool(args) and isinstance(args[0], int) and args[0] in MYSQL_TRANSIENT


@contextmanager
def translate_errors(engine: Engine) -> Iterator[None]:
    """Turn connection-level driver errors into :class:`DatabaseError` (URL without password).

    A deadlock or serialization failure becomes a :class:`DatabaseError` with ``transient = True``,
    which :func:`retry_transient` runs again.
    """
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        err = DatabaseError(redacted(engine.url), _short(exc, engine.url))
        err.transient = is_transient(exc)
        raise err from exc
    except sa.exc.DBAPIError as exc:
        if _not_a_database(exc):
            err = DatabaseError(redacted(engine.url), f"the file is not an SQLite database ({_short(exc, engine.url)})")
            err.retryable = False
            raise err from exc
        # Some drivers report deadlocks as other DBAPI classes; everything else is not ours to translate.
        if not is_transient(exc):
            raise
        err = DatabaseError(redacted(engine.url), _short(exc, engine.url))
        err.transient = True
        raise err from exc


#: SQLite's result code for "file is not a database" (a text file, an encrypted or truncated database)
SQLITE_NOTADB = 26


def _not_a_database(exc: sa.exc.DBAPIError) -> bool:
    orig = exc.orig
    return getattr(orig, "sqlite_errorcode", None) == SQLITE_NOTADB or "file is not a database" in str(orig)


def _short(exc: BaseException, url: URL | None = None) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    reason = text.splitlines()[0] if text else type(orig).__name__
    # drivers do not echo passwords today; make sure no message ever does
    return scrubbed(reason, url) if url is not None else reason


def retry_transient(fn: Callable[P, T]) -> Callable[P, T]:
    """Run ``fn`` again when it fails with a deadlock or serialization failure.

    ``fn`` must be one whole transaction (what it wrote was rolled back when the error surfaced), so
    running it again is safe. Bounded: after :data:`TRANSIENT_ATTEMPTS` the error is raised (a
    :class:`DatabaseError`, ``retryable``). Jittered backoff from 2 ms, capped at 100 ms, so
    colliding transactions do not collide again in lock step.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        global _retries
        attempt = 1
        while True:
            try:
                return fn(*args, **kwargs)
            except (DatabaseError, sa.exc.DBAPIError) as exc:
                if attempt >= TRANSIENT_ATTEMPTS or not is_transient(exc):
                    raise
                with _retries_lock:
                    _retries += 1
                log.info("db.transient_retry", attempt=attempt, function=fn.__qualname__, reason=str(exc))
                time.sleep(random.uniform(0, min(0.1, 0.002 * 2**attempt)))
                attempt += 1

    return wrapper


def transient_retries() -> int:
    """How many transactions this process has re-run after a deadlock or serialization failure."""
    with _retries_lock:
        return _retries


# -- schema --------------------------------------------------------------------------------------

_OUR_TABLES = frozenset(metadata.tables)


def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (``None``: not managed yet, e.g. empty)."""
    with translate_errors(engine), engine.connect().execution_options(eipflow_read=True) as conn:
        return _revision(conn)


def _revision(conn: Connection) -> str | None:
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


@contextmanager
def _schema_lock(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that holds the database's schema lock.

    Several processes opening one fresh database at once (CLI invocations, workers) must not all
    create tables: SQLite serializes on ``BEGIN IMMEDIATE``, PostgreSQL on a transaction-scoped
    advisory lock per schema, MySQL/MariaDB (whose DDL commits implicitly) on a named lock.
    """
    name = engine.dialect.name
    if name == "mysql" or name == "mariadb":
        with engine.connect() as conn:
            got = conn.execute(sa.text("SELECT GET_LOCK(CONCAT('eipflow.schema.', DATABASE()), 60)")).scalar()
            if got != 1:
                raise DatabaseError(redacted(engine.url), "timed out waiting for the schema lock (another upgrade?)")
            conn.commit()  # end the autobegun transaction; the named lock belongs to the session
            try:
                with conn.begin():
                    yield conn
            finally:
                conn.execute(sa.text("SELECT RELEASE_LOCK(CONCAT('eipflow.schema.', DATABASE()))"))
                conn.commit()
        return
    with engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE (our begin hook) takes the write lock
        if name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('eipflow.schema.' || current_schema()))"))
        yield conn


def ensure_schema(engine: Engine) -> None:
    """Bring the database to the newest schema revision (idempotent, safe from concurrent processes).

    Every database, including a fresh SQLite file on first use, goes through ``alembic upgrade
    head``: one path, the one the migration tests check against the models. Measured on this kind of
    machine, the scripts cost no more than ``create_all`` + ``stamp`` (fresh SQLite 12 vs 10 ms,
    PostgreSQL ~60 ms and MariaDB ~200-400 ms either way, DDL-bound). An up-to-date database costs one
    catalog query and one read, without importing Alembic. A database that holds eipflow's tables but
    no revision (created before migrations existed) is adopted as the initial revision.

    Raises:
        DatabaseError: the database is unreachable, or its revision is unknown to this eipflow
            (created by a newer version).
    """
    from .migrations import HEAD

    if schema_revision(engine) != HEAD:
        upgrade_schema(engine)


def upgrade_schema(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Run the migrations up to ``revision`` under the schema lock; returns ``(before, after)``.

    Raises:
        DatabaseError: unreachable, or a revision unknown to this eipflow.
    """
    from . import migrations

    with translate_errors(engine), _schema_lock(engine) as conn:
        current = _revision(conn)
        target = migrations.HEAD if revision == "head" else revision
        if current == target:
            return current, current  # nothing to do, or another process did it while we waited
        try:
            tables = set(sa.inspect(conn).get_table_names()) if current is None else set()
            if current is None and _OUR_TABLES & tables:
                # Tables made without migrations: from 0.1 (the initial revision's shape), or by
                # ``create_all`` from today's models (every table there already: the head).
                adopted = migrations.HEAD if _OUR_TABLES <= tables else migrations.INITIAL
                migrations.stamp(conn, adopted)
                log.warning("db.schema_adopted", revision=adopted, url=redacted(engine.url))
                current = adopted
                if current == target:
                    return current, current
            migrations.upgrade(conn, revision)
        except _alembic_errors() as exc:
            raise DatabaseError(
                redacted(engine.url),
                f"cannot migrate from {current!r} to {revision!r} (this eipflow knows up to {migrations.HEAD}): {exc}",
            ) from exc
        after = _revision(conn)
        log.info("db.schema_upgraded", revision_from=current, revision_to=after, url=redacted(engine.url))
        return current, after


def _alembic_errors() -> tuple[type[Exception], ...]:
    from alembic.util import CommandError

    return (CommandError,)

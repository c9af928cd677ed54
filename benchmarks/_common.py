"""Shared benchmark plumbing: fresh databases, bulk loading, a barrier-started thread harness.

Every figure is a ratio against a baseline measured in the same run (the machine is shared and noisy):
rounds interleave the variants, and the median of the rounds is reported.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import tempfile
import threading
import time
import uuid as uuidlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

PG_ENV = "EIPFLOW_TEST_POSTGRES_URL"
MARIADB_ENV = "EIPFLOW_TEST_MARIADB_URL"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Target:
    """One database to measure: a label, its SQLAlchemy URL and, for SQLite, the synchronous level."""

    label: str
    kind: str  # sqlite | postgres | mariadb
    url: str
    synchronous: str | None = None
    path: str | None = None  # the SQLite file


def targets(kinds: list[str], workdir: str) -> list[Target]:
    """SQLite FULL and NORMAL always; PostgreSQL and MariaDB when their URLs are set."""
    out: list[Target] = []
    if "sqlite" in kinds:
        for sync in ("FULL", "NORMAL"):
            path = os.path.join(workdir, f"bench-{sync.lower()}-{uuidlib.uuid4().hex[:6]}.db")
            out.append(Target(f"SQLite WAL {sync}", "sqlite", f"sqlite:///{path}", sync, path))
    if "postgres" in kinds and os.environ.get(PG_ENV):
        out.append(Target("PostgreSQL", "postgres", os.environ[PG_ENV]))
    if "mariadb" in kinds and os.environ.get(MARIADB_ENV):
        out.append(Target("MariaDB", "mariadb", os.environ[MARIADB_ENV]))
    return out


@contextlib.contextmanager
def fresh(target: Target) -> Iterator[Target]:
    """A fresh, empty database for ``target`` (a schema on PostgreSQL, a database on MariaDB)."""
    if target.kind == "sqlite":
        yield target
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{target.path}{suffix}")
        return
    name = f"bench_{uuidlib.uuid4().hex[:10]}"
    admin = sa.create_engine(target.url, isolation_level="AUTOCOMMIT")
    if target.kind == "postgres":
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
        url = sa.engine.make_url(target.url).update_query_dict({"options": f"-csearch_path={name}"})
        drop = f'DROP SCHEMA IF EXISTS "{name}" CASCADE'
    else:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE `{name}`")
        url = sa.engine.make_url(target.url).set(database=name)
        drop = f"DROP DATABASE IF EXISTS `{name}`"
    try:
        yield Target(target.label, target.kind, url.render_as_string(hide_password=False), target.synchronous)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(drop)
        admin.dispose()


def set_sqlite_synchronous(level: str | None) -> None:
    """eipflow reads its SQLite durability when a connection opens: switch it for the next engine."""
    if level is not None:
        from eipflow.store import database

        database.SQLITE_SYNCHRONOUS = level


def open_flow(target: Target, backend: Any = None, **kwargs: Any) -> Any:
    """An :class:`eipflow.Eipflow` on ``target`` with its schema created."""
    from eipflow import Eipflow

    set_sqlite_synchronous(target.synchronous)
    if target.synchronous is not None:
        # ``Eipflow.open`` takes the mode as a parameter (default ``$EIPFLOW_SQLITE_SYNCHRONOUS`` or FULL): the
        # module default set above no longer reaches it, so without this every SQLite target ran at FULL.
        kwargs.setdefault("sqlite_synchronous", target.synchronous)
    return Eipflow.open(target.url, backend if backend is not None else NoopBackend(), owner="bench", **kwargs)


class NoopBackend:
    """A backend that does nothing (what the engine costs, without a dataplane)."""

    def apply(self, spec: Any) -> None:
        return None

    def revoke(self, spec: Any) -> None:
        return None


def uuids(n: int, prefix: int = 0) -> list[str]:
    """Deterministic EIP uuids (valid UUIDs, so the public API accepts them)."""
    return [str(uuidlib.UUID(int=(prefix << 64) | i)) for i in range(n)]


def vip(i: int) -> str:
    return f"{100 + (i >> 24) % 100}.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def bulk_load(engine: sa.Engine, n: int, *, state: str, start: int = 0, history_per_eip: int = 1,
              bound: bool = False, vm: str | None = None, host: str | None = None, chunk: int = 20_000,
              desired: str | None = None) -> None:
    """Insert ``n`` EIP rows in ``state`` (and ``history_per_eip`` history rows each) with executemany."""
    from eipflow.store.schema import EipRow, TransitionRow

    eip_t = EipRow.__table__
    hist_t = TransitionRow.__table__
    ids = uuids(start + n)[start:]
    for lo in range(0, n, chunk):
        rows, hist = [], []
        for j, u in enumerate(ids[lo:lo + chunk], start=start + lo):
            rows.append({
                "uuid": u, "name": None, "vip": vip(j), "state": state, "version": history_per_eip,
                "desired": desired or ("attached" if bound else "detached"),
                "vm_nic_uuid": f"nic-{j}" if bound else None,
                "guest_ip": f"10.{(j >> 16) & 255}.{(j >> 8) & 255}.{j & 255}" if bound else None,
                "vm_uuid": (vm or f"vm-{j}") if bound else None, "host_uuid": host if bound else None,
                "applied_host": host if bound and state in ("attached", "applying") else None,
                "attach_confirmed": state == "attached", "work_id": None, "last_error": None,
                "created_at": NOW, "updated_at": NOW,
            })
            for v in range(1, history_per_eip + 1):
                hist.append({"eip_uuid": u, "event": "create" if v == 1 else "vm_migrated",
                             "from_state": "" if v == 1 else state, "to_state": "detached" if v == 1 else state,
                             "version": v, "actor": "bench", "op_id": None, "at": NOW, "details": None})
        with engine.begin() as conn:
            conn.execute(eip_t.insert(), rows)
            conn.execute(hist_t.insert(), hist)


@dataclass
class Measured:
    ops: int
    seconds: float
    latencies: list[float]
    ran_out: bool = False  # a thread's step returned False (its rows ran out) before the window closed

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0


def run_threads(workers: int, seconds: float, make: Callable[[int], Callable[[], bool | None]],
                *, latencies: bool = False) -> Measured:
    """Run ``workers`` threads, each calling its ``make(n)()`` in a loop for ``seconds``; count calls.

    ``make`` runs in the thread before the barrier (connections are opened outside the timed window). A step
    that returns ``False`` ends its thread (its rows ran out: ``Measured.ran_out``) and is not counted.
    """
    barrier = threading.Barrier(workers + 1)
    stop = threading.Event()
    counts = [0] * workers
    lats: list[list[float]] = [[] for _ in range(workers)]
    out = [False] * workers
    errors: list[BaseException] = []

    def body(n: int) -> None:
        try:
            step = make(n)
        except BaseException as exc:  # noqa: BLE001 - reported after the run
            errors.append(exc)
            barrier.abort()
            return
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return
        done = 0
        mine = lats[n]
        try:
            while not stop.is_set():
                t0 = time.perf_counter() if latencies else 0.0
                if step() is False:
                    out[n] = True
                    break
                if latencies:
                    mine.append(time.perf_counter() - t0)
                done += 1
        except BaseException as exc:  # noqa: BLE001 - reported after the run
            errors.append(exc)
        counts[n] = done

    threads = [threading.Thread(target=body, args=(n,), name=f"bench-{n}") for n in range(workers)]
    for t in threads:
        t.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    started = time.perf_counter()
    time.sleep(seconds)  # the measurement window itself
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"benchmark thread failed: {errors[0]!r}") from errors[0]
    return Measured(sum(counts), elapsed, [x for m in lats for x in m], any(out))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def machine() -> str:
    """Cores, Python, SQLite and the library versions, for RESULTS.md."""
    import sqlite3

    import sqlalchemy

    return (f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}, SQLAlchemy {sqlalchemy.__version__}")


def server_versions() -> list[str]:
    out = []
    for env, q, label in ((PG_ENV, "SHOW server_version", "PostgreSQL"), (MARIADB_ENV, "SELECT VERSION()", "MariaDB")):
        if os.environ.get(env):
            eng = sa.create_engine(os.environ[env])
            try:
                with eng.connect() as conn:
                    out.append(f"{label} {conn.exec_driver_sql(q).scalar()}")
            finally:
                eng.dispose()
    return out


def workdir() -> str:
    """Where SQLite files go: a real disk (``/tmp`` here; tmpfs would hide the fsync cost)."""
    return tempfile.mkdtemp(prefix="eipflow-bench-")


@dataclass
class Statements:
    """What one stretch of work sent to SQLite, by first keyword (``BEGIN``, ``SELECT``, ``UPDATE`` …)."""

    #: driver calls: ``cursor.execute`` / ``cursor.executemany`` (an executemany is one call); what
    #: SQLAlchemy's ``before_cursor_execute`` counted before the fast path existed
    calls: Counter[str]
    #: statement executions SQLite ran (its trace callback): an executemany counts once per row, and
    #: ``COMMIT``/``ROLLBACK`` sent by ``connection.commit()``/``rollback()`` are included
    executions: Counter[str]


def _keyword(sql: str) -> str:
    return sql.lstrip().split(None, 1)[0].upper()


@contextlib.contextmanager
def sqlite_statements(engine: sa.Engine) -> Iterator[Statements]:
    """Count the statements of every connection ``engine`` opens inside the block, at the driver.

    Not with SQLAlchemy's ``before_cursor_execute``: the fast path runs on the raw DBAPI connection,
    which SQLAlchemy's events never see. The pool is emptied first so every connection is a counting one.
    """
    import sqlite3

    counts = Statements(Counter(), Counter())

    class CountingCursor(sqlite3.Cursor):
        def execute(self, sql: str, *args: Any) -> Any:  # type: ignore[override]
            counts.calls[_keyword(sql)] += 1
            return super().execute(sql, *args)

        def executemany(self, sql: str, *args: Any) -> Any:  # type: ignore[override]
            counts.calls[_keyword(sql)] += 1
            return super().executemany(sql, *args)

    class CountingConnection(sqlite3.Connection):
        def cursor(self, factory: Any = CountingCursor) -> Any:  # type: ignore[override]
            return super().cursor(factory)

    def trace(sql: str) -> None:
        counts.executions[_keyword(sql)] += 1

    def do_connect(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        cparams["factory"] = CountingConnection

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.set_trace_callback(trace)

    engine.dispose()
    sa.event.listen(engine, "do_connect", do_connect)
    sa.event.listen(engine, "connect", on_connect)
    try:
        yield counts
    finally:
        sa.event.remove(engine, "do_connect", do_connect)
        sa.event.remove(engine, "connect", on_connect)
        engine.dispose()


def partition(items: list[str], workers: int, n: int) -> list[str]:
    """Thread ``n``'s share: disjoint rows, so version tracking never races."""
    return items[n::workers]


@dataclass
class DriverCalls:
    """What one stretch of work sent through an engine's connections, counted at the driver (any database).

    ``calls`` counts ``cursor.execute`` and ``cursor.executemany`` by first keyword (an executemany is one
    call, whatever the driver does with it inside); ``commits``/``rollbacks`` count the connection's
    ``commit()``/``rollback()`` (rollbacks include read-only transactions ended and the pool's reset on
    return). ``events`` counts SQLAlchemy's ``before_cursor_execute`` on the engine: the Core path only — the
    fast path runs on the raw DBAPI connection, which SQLAlchemy's events never see.
    """

    calls: Counter[str]
    commits: int = 0
    rollbacks: int = 0
    events: int = 0

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def summary(self, per: int = 1) -> str:
        """``N driver calls (BEGIN a, SELECT b, …), C commits, R rollbacks; E seen by before_cursor_execute``."""
        detail = ", ".join(f"{k} {v / per:,.1f}" if per > 1 else f"{k} {v:,}" for k, v in sorted(self.calls.items()))
        scale = (lambda v: f"{v / per:,.1f}") if per > 1 else (lambda v: f"{v:,}")
        return (f"{scale(self.total)} driver calls ({detail}), {scale(self.commits)} commits, "
                f"{scale(self.rollbacks)} rollbacks; {scale(self.events)} seen by before_cursor_execute")


@contextlib.contextmanager
def driver_calls(engine: sa.Engine) -> Iterator[DriverCalls]:
    """Count the calls every connection ``engine`` opens inside the block makes (sqlite3, psycopg, PyMySQL).

    The pool is emptied first (which also closes the fast path's pinned connections), so every connection
    used inside the block is a new, counting one; it is emptied again afterwards.
    """
    counts = DriverCalls(Counter())
    local = threading.local()

    def counted(sql: str) -> None:
        if not getattr(local, "inside", False):  # PyMySQL's executemany runs execute() per row or chunk
            counts.calls[_keyword(sql)] += 1

    def wrap_cursor(base: type) -> type:
        class CountingCursor(base):  # type: ignore[misc, valid-type]
            def execute(self, sql: Any, *args: Any, **kwargs: Any) -> Any:
                counted(str(sql))
                return super().execute(sql, *args, **kwargs)

            def executemany(self, sql: Any, *args: Any, **kwargs: Any) -> Any:
                counted(str(sql))
                local.inside = True
                try:
                    return super().executemany(sql, *args, **kwargs)
                finally:
                    local.inside = False

        return CountingCursor

    def wrap_ends(conn: Any) -> None:
        commit, rollback = conn.commit, conn.rollback

        def counted_commit() -> Any:
            counts.commits += 1
            return commit()

        def counted_rollback() -> Any:
            counts.rollbacks += 1
            return rollback()

        conn.commit, conn.rollback = counted_commit, counted_rollback

    listeners: list[tuple[str, Any]] = []
    driver = engine.dialect.driver
    if driver == "pysqlite":
        import sqlite3

        cursor_class = wrap_cursor(sqlite3.Cursor)

        class CountingConnection(sqlite3.Connection):
            def cursor(self, factory: Any = cursor_class) -> Any:  # type: ignore[override]
                return super().cursor(factory)

            def commit(self) -> None:
                counts.commits += 1
                super().commit()

            def rollback(self) -> None:
                counts.rollbacks += 1
                super().rollback()

        def do_connect(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
            cparams["factory"] = CountingConnection

        listeners.append(("do_connect", do_connect))
    elif driver == "psycopg":
        import psycopg

        cursor_class = wrap_cursor(psycopg.Cursor)

        def on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.cursor_factory = cursor_class
            wrap_ends(dbapi_conn)

        listeners.append(("connect", on_connect))
    elif driver == "pymysql":
        import pymysql.cursors

        cursor_class = wrap_cursor(pymysql.cursors.Cursor)

        def on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.cursorclass = cursor_class
            wrap_ends(dbapi_conn)

        listeners.append(("connect", on_connect))
    else:  # pragma: no cover - the benchmarks run on these three drivers only
        raise ValueError(f"no driver counter for {engine.dialect.name}+{driver}")

    def before(_conn: Any, _cursor: Any, _sql: str, _params: Any, _context: Any, _many: bool) -> None:
        counts.events += 1

    listeners.append(("before_cursor_execute", before))
    engine.dispose()
    for name, fn in listeners:
        sa.event.listen(engine, name, fn)
    try:
        yield counts
    finally:
        for name, fn in listeners:
            sa.event.remove(engine, name, fn)
        engine.dispose()

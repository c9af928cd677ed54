"""The hot path at driver level: read a row and compare-and-swap it in one short transaction.

SQLAlchemy Core costs ~60-90 µs of Python per executed statement; the raw driver ~10 µs. An intent
transition is a handful of statements, so on the hot path (``Runner.fire`` and ``Store.get``) eipflow
compiles its Core statements *once* per dialect into SQL strings and runs them on the pooled DBAPI
connection. The statements, the tables and the compare-and-swap are exactly the Core path's — only the
per-call execution machinery is skipped. Anything unusual (a driver error) goes through the Core path,
which owns error translation and deadlock retries.

Two more costs of a call are removed here, both without weakening the compare-and-swap:

- **Pinned connections.** Each thread keeps one driver connection, configured by the engine's connect
  events and then detached from the pool: no checkout/checkin, no pre-ping ``SELECT 1`` and no
  reset-on-return ``ROLLBACK`` per transition (two extra round trips on a server). A pin that raises a
  driver error is closed and the call redone on the Core path (which pre-pings); pins are replaced after
  the pool's recycle age, closed when their thread ends, and all closed by :meth:`FastPath.close` or
  ``engine.dispose()``.
- **The row cache.** The row this process last read or wrote for an EIP is kept (bounded, FIFO). An intent
  is decided on that snapshot and written with ``… WHERE uuid AND version [AND work_id IS :w]``: if the
  row moved meanwhile — any writer, any process — the compare-and-swap matches nothing, the transaction
  rolls back and the call reads the row and decides again. The version is bumped by every write to a row
  but the reconciler's work-item relink, hence the ``work_id`` guard; versions never repeat for a uuid
  (history keeps ``(eip_uuid, version)`` unique after a delete), so an equal version means an equal row.
  This is the raw baseline's "versions tracked in memory", made safe. Completions (``with_vm``) always read:
  their decision depends on the VM's facts too.
"""

from __future__ import annotations

import functools
import operator
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..errors import EipNotFound
from ..values import Eip, Vm, WorkItem
from .lowering import CasLost, Statement, check, execute, statement
from .schema import EipRow, UTCDateTime, WorkRow
from .statements import aware, vm_facts, vm_of, work_claim, work_item

__all__ = ["DEFAULT_ROW_CACHE", "FastPath", "LeaseLost", "Unsupported"]

#: Rows kept per process for optimistic intents (``EIPFLOW_ROW_CACHE``; 0 turns the cache off).
DEFAULT_ROW_CACHE = 16_384

EIP = EipRow.__table__  # type: ignore[attr-defined]
WORK = WorkRow.__table__  # type: ignore[attr-defined]
_EIP_COLS = tuple(c.name for c in EIP.columns)
_DT_COLS = frozenset(c.name for c in EIP.columns if isinstance(c.type, UTCDateTime))
_WORK_COLS = tuple(c.name for c in WORK.columns)
_WORK_DT_COLS = frozenset(c.name for c in WORK.columns if isinstance(c.type, UTCDateTime))


class LeaseLost(Exception):
    """Internal: the work item is no longer ours (its lease expired and another worker took it)."""


class Unsupported(Exception):
    """Internal: this call must take the Core path (unusual plan, or a driver error to translate)."""


def _one(name: str) -> Callable[[Mapping[str, Any]], tuple[Any]]:
    return lambda values: (values[name],)


def _none(_values: Mapping[str, Any]) -> tuple[()]:
    return ()


_DATETIME_PROCESSORS: dict[str, Callable[[Any], Any] | None] = {}


def _processor(type_: Any, dialect: Any) -> Callable[[Any], Any] | None:
    """The column type's bind processor (what the Core path applies). The timestamp columns' is shared per
    dialect and memoised on its last few values: one transaction binds the same timestamp up to seven times."""
    if not isinstance(type_, UTCDateTime):
        return type_.dialect_impl(dialect).bind_processor(dialect)  # type: ignore[no-any-return]
    if dialect.name not in _DATETIME_PROCESSORS:
        raw = type_.dialect_impl(dialect).bind_processor(dialect)
        _DATETIME_PROCESSORS[dialect.name] = functools.lru_cache(maxsize=4)(raw) if raw is not None else None
    return _DATETIME_PROCESSORS[dialect.name]


class _Sql:
    """One Core statement compiled for a dialect: the SQL text, how to lay out its parameters, and how
    each parameter is stored (its column type's bind processor: the same conversion the Core path does)."""

    __slots__ = ("_pick", "_procs", "literals", "names", "positional", "text")

    def __init__(self, stmt: Any, dialect: Any) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.text: str = compiled.string
        self.positional: bool = bool(compiled.positional)
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        # Literal values in the statement (``status == "running"``) are bound parameters too.
        self.literals: dict[str, Any] = {
            name: bind.value for name, bind in compiled.binds.items() if not bind.required and bind.value is not None
        }
        procs = ((name, _processor(bind.type, dialect)) for name, bind in compiled.binds.items() if bind.required)
        self._procs: tuple[tuple[str, Callable[[Any], Any]], ...] = tuple((n, p) for n, p in procs if p is not None)

        names = self.names
        # The parameter tuple in the statement's order, built in C (a 1-name itemgetter returns a scalar).
        self._pick: Callable[[Mapping[str, Any]], Any] = (
            operator.itemgetter(*names) if len(names) > 1 else _one(names[0]) if names else _none
        )

    def params(self, values: Mapping[str, Any]) -> Any:
        if not self._procs and not self.literals:
            return self._pick(values) if self.positional else values
        merged = {**self.literals, **values} if self.literals else dict(values)
        for name, proc in self._procs:
            value = merged.get(name)
            if value is not None:
                merged[name] = proc(value)
        return self._pick(merged) if self.positional else merged


class _Pin:
    """One driver connection pinned to a thread, outside the pool's accounting."""

    __slots__ = ("__weakref__", "born", "conn", "cur", "fairy", "pid")

    def __init__(self, engine: Engine) -> None:
        fairy = engine.raw_connection()  # the engine's connect events have configured it (PRAGMAs, isolation)
        if isinstance(engine.pool, (sa.pool.QueuePool, sa.pool.NullPool)):
            fairy.detach()  # ours now: closing it closes the connection, the pool's slot is free again
        # else a pool that hands every caller the same connection (SQLite :memory:, where another
        # connection would be another database): keep it checked out; closing returns it.
        self.fairy: Any = fairy
        self.conn: Any = fairy.dbapi_connection
        assert self.conn is not None
        self.cur: Any = self.conn.cursor()
        self.born = time.monotonic()
        self.pid = os.getpid()

    def close(self) -> None:
        fairy, self.fairy = self.fairy, None
        if fairy is None or self.pid != os.getpid():
            return  # after a fork the socket is the parent's: closing it here would break the parent's
        try:
            fairy.close()
        except Exception:  # noqa: BLE001 - a dead connection (or interpreter shutdown) closes as it can
            pass

    def __del__(self) -> None:  # the thread that owned it ended
        self.close()


class _RowCache:
    """The last row this process read or wrote per EIP: a hint for optimistic intents, never trusted."""

    __slots__ = ("_evict", "rows", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.rows: dict[str, Eip] = {}
        self._evict = threading.Lock()

    def put(self, eip: Eip) -> None:
        rows = self.rows
        old = rows.get(eip.uuid)
        if old is not None:
            if old.version < eip.version:
                rows[eip.uuid] = eip
            return
        if self.size <= 0:
            return
        if len(rows) >= self.size:
            with self._evict:
                try:
                    del rows[next(iter(rows))]  # FIFO: the oldest remembered row
                except (StopIteration, KeyError, RuntimeError):
                    pass  # another thread changed it meanwhile: the bound is approximate
        rows[eip.uuid] = eip

    def drop(self, uuid: str) -> None:
        self.rows.pop(uuid, None)


class FastPath:
    """Driver-level reads and intent transitions for one engine (SQLite, PostgreSQL, MySQL/MariaDB)."""

    def __init__(self, engine: Engine, *, row_cache: int = DEFAULT_ROW_CACHE) -> None:
        self.engine = engine
        dialect = engine.dialect
        self.dialect = dialect
        self.sqlite = dialect.name == "sqlite"
        self._postgres = dialect.name == "postgresql"
        self._error: type[BaseException] = dialect.dbapi.Error  # type: ignore[union-attr]
        recycle = getattr(engine.pool, "_recycle", -1)
        self._recycle = float(recycle) if recycle and recycle > 0 else None
        self._local = threading.local()
        self._pins: weakref.WeakSet[_Pin] = weakref.WeakSet()
        self._pins_lock = threading.Lock()
        self.rows = _RowCache(row_cache)
        # ``engine.dispose()`` (by eipflow or by an embedding application) closes the pins too; weakly, so
        # the engine does not keep this object alive.
        this = weakref.ref(self)

        def _disposed(_engine: Engine) -> None:
            fast = this()
            if fast is not None:
                fast.close()

        sa.event.listen(engine, "engine_disposed", _disposed)
        select = sa.select(EIP).where(EIP.c.uuid == sa.bindparam("u"))
        self._get = _Sql(select, dialect)
        # Lock the row for the few microseconds between read and write: the compare-and-swap then never
        # loses on PostgreSQL/MariaDB hot rows (SQLite's BEGIN IMMEDIATE already serializes writers).
        self._get_for_update = self._get if self.sqlite else _Sql(select.with_for_update(), dialect)
        self._vm = _Sql(vm_facts(), dialect)
        self._claim = _Sql(work_claim(), dialect)
        self._vm_shared = _Sql(vm_facts(shared=not self.sqlite), dialect)
        self._select_work = _Sql(sa.select(WORK).where(WORK.c.id == sa.bindparam("w_id")), dialect)
        self._statements: dict[tuple[Any, ...], _Sql] = {}  # the lowering's statements, compiled once
        self._reads: dict[Any, _Sql] = {}  # the store's single-row look-ups, compiled once

    # -- connections -----------------------------------------------------------------------------
    def _pin(self) -> _Pin:
        pin: _Pin | None = getattr(self._local, "pin", None)
        if pin is not None and pin.fairy is not None:
            if pin.pid != os.getpid():
                # Inherited across fork(): abandon it, never use or close it here (when it is collected,
                # psycopg skips PQfinish in a child process and PyMySQL just drops the descriptor).
                pin.fairy = None
            elif self._recycle is None or time.monotonic() - pin.born < self._recycle:
                return pin
            else:
                pin.close()
        try:
            pin = _Pin(self.engine)
        except self._error as exc:
            raise Unsupported from exc  # the Core path reports the connection error
        self._local.pin = pin
        with self._pins_lock:
            self._pins.add(pin)
        return pin

    def _broken(self, pin: _Pin) -> None:
        """After a driver error: roll back, or drop the pin if even that fails (connection lost)."""
        try:
            pin.conn.rollback()
        except self._error:
            pin.close()
            self._local.pin = None

    def close(self) -> None:
        """Close every pinned connection (``Eipflow.close``); a later call pins a new one."""
        with self._pins_lock:
            pins = list(self._pins)
            self._pins.clear()
        for pin in pins:
            pin.close()

    # -- values ----------------------------------------------------------------------------------
    def _eip(self, row: tuple[Any, ...]) -> Eip:
        values = dict(zip(_EIP_COLS, row, strict=True))
        for col in _DT_COLS:
            values[col] = aware(values[col])
        values["attach_confirmed"] = bool(values["attach_confirmed"])
        return Eip(**values)


    def _work_item(self, row: tuple[Any, ...]) -> WorkItem:
        values = dict(zip(_WORK_COLS, row, strict=True))
        for col in _WORK_DT_COLS:
            values[col] = aware(values[col])
        return work_item(values)

    # -- operations ------------------------------------------------------------------------------
    def remember(self, eip: Eip) -> None:
        """A row read or written elsewhere (the Core path): the next intent may start from it."""
        if eip.state == "deleted":
            self.rows.drop(eip.uuid)
        else:
            self.rows.put(eip)

    def get(self, uuid: str) -> Eip | None:
        """One row by uuid (a single SELECT sees a consistent snapshot; no transaction needed)."""
        pin = self._pin()
        try:
            cur = pin.cur
            cur.execute(self._get.text, self._get.params({"u": uuid}))
            row = cur.fetchone()
            if not self.sqlite:
                pin.conn.rollback()  # end the driver's implicit transaction: the pin stays idle
        except self._error as exc:
            self._broken(pin)
            raise Unsupported from exc  # the Core path translates it (and reconnects if it must)
        if row is None:
            self.rows.drop(uuid)
            return None
        eip = self._eip(row)
        self.rows.put(eip)
        return eip

    def read_one(self, stmt: Any, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """One row of a single SELECT (the attach's look-ups: the VM's facts, who holds an address)."""
        sql = self._reads.get(stmt)
        if sql is None:
            sql = self._reads[stmt] = _Sql(stmt, self.dialect)
        pin = self._pin()
        try:
            cur = pin.cur
            cur.execute(sql.text, sql.params(params))
            row = cur.fetchone()
            if not self.sqlite:
                pin.conn.rollback()  # end the driver's implicit transaction: the pin stays idle
        except self._error as exc:
            self._broken(pin)
            raise Unsupported from exc
        return tuple(row) if row is not None else None

    def claim(self, work_id: int, owner: str, now: datetime, lease_us: int) -> WorkItem | None:
        """Lease one work item (the Core path's compare-and-swap on status and lease) and read it back.

        The lease runs to the shared lease clock's now + ``lease_us`` µs (the statement reads that clock).
        """
        pin = self._pin()
        conn, cur = pin.conn, pin.cur
        try:
            if self.sqlite:
                cur.execute("BEGIN IMMEDIATE")
            params = {"w_id": work_id, "w_now": now, "s_owner": owner, "s_lease_us": lease_us, "s_now": now}
            cur.execute(self._claim.text, self._claim.params(params))
            if cur.rowcount != 1:
                conn.rollback()
                return None
            cur.execute(self._select_work.text, self._select_work.params({"w_id": work_id}))
            row = cur.fetchone()
            conn.commit()
        except self._error as exc:
            self._broken(pin)
            raise Unsupported from exc
        return self._work_item(row)

    def transition(
        self, uuid: str, decide: Callable[[Eip, Vm | None], Any], now: datetime, *, with_vm: bool = False
    ) -> tuple[Eip, Any] | None:
        """Let ``decide`` plan the transition for the row and write it — one transaction.

        Without ``with_vm`` the row remembered by this process is tried first (see the module doc): a
        stale snapshot costs one rolled-back transaction, then the row is read under the write lock.
        ``decide`` returns a :class:`~eipflow.store.PlannedTransition` for the row it is given (it may
        raise, e.g. ``IllegalTransition``; nothing is written then). Returns ``(row as written, plan)``,
        or ``None`` when the compare-and-swap lost.

        Raises:
            EipNotFound: no such row.
            Unsupported: take the Core path (a driver error: nothing was written).
        """
        pin = self._pin()
        conn, cur = pin.conn, pin.cur
        try:
            if not with_vm:
                cached = self.rows.rows.get(uuid)
                if cached is not None:
                    done = self._optimistic(conn, cur, cached, decide, now)
                    if done is not None:
                        return done
            if self.sqlite:
                cur.execute("BEGIN IMMEDIATE")
            cur.execute(self._get_for_update.text, self._get_for_update.params({"u": uuid}))
            row = cur.fetchone()
            if row is None:
                conn.rollback()
                self.rows.drop(uuid)
                raise EipNotFound(uuid)
            eip = self._eip(row)
            vm = None
            if with_vm and eip.vm_uuid is not None:
                cur.execute(self._vm.text, self._vm.params({"u": eip.vm_uuid}))
                found = cur.fetchone()
                if found is not None:
                    vm = vm_of(found)
            try:
                plan = decide(eip, vm)
                written = self._write(cur, eip, plan, now)
            except BaseException:
                conn.rollback()
                self.rows.put(eip)
                raise
            if written is None:
                conn.rollback()
                return None
            conn.commit()
        except self._error as exc:
            # Constraint violations, deadlocks, lost connections: roll back and let the Core path redo
            # the whole call; it translates each error to eipflow's types and retries deadlocks.
            self._broken(pin)
            raise Unsupported from exc
        self.remember(written)
        return written, plan

    def _optimistic(
        self, conn: Any, cur: Any, cached: Eip, decide: Callable[[Eip, Vm | None], Any], now: datetime
    ) -> tuple[Eip, Any] | None:
        """Decide on the remembered row and compare-and-swap it; ``None``: it was stale, read it instead."""
        try:
            plan = decide(cached, None)
        except Exception:  # noqa: BLE001 - maybe only the snapshot is stale: the fresh row decides
            return None
        if self.sqlite:
            cur.execute("BEGIN IMMEDIATE")
        try:
            written = self._write(cur, cached, plan, now, guard_work=True)
        except LeaseLost:
            written = None
        except BaseException:
            conn.rollback()
            raise
        if written is None:
            conn.rollback()  # a work item inserted before the lost compare-and-swap goes too
            self.rows.drop(cached.uuid)
            return None
        conn.commit()
        self.remember(written)
        return written, plan

    def _write(self, cur: Any, eip: Eip, plan: Any, now: datetime, *, guard_work: bool = False) -> Eip | None:
        """Run the plan's lowering (:mod:`eipflow.store.lowering`) on the pinned cursor; ``None``: the
        compare-and-swap lost. ``guard_work``: the row was the cached snapshot, so its work item is checked too."""
        try:
            return execute(plan, now, lambda stmts: self._run(cur, stmts), lambda uuid: self._read_vm(cur, uuid),
                           {"work_id": eip.work_id} if guard_work else None)
        except CasLost:
            return None

    def _sql(self, key: tuple[Any, ...]) -> _Sql:
        sql = self._statements.get(key)
        if sql is None:
            stmt = statement(key)
            if key == ("insert_work",) and self._postgres:
                stmt = stmt.returning(WORK.c.id)  # psycopg has no lastrowid
            sql = self._statements[key] = _Sql(stmt, self.dialect)
        return sql

    def _run(self, cur: Any, stmts: Sequence[Statement]) -> dict[str, int]:
        """The driver executor: each statement in order, :func:`~eipflow.store.lowering.check`-ed."""
        ids: dict[str, int] = {}
        for st in stmts:
            sql = self._sql(st.key)
            params = st.params
            if not isinstance(params, Mapping):
                raise TypeError("the driver path runs single plans; batches go through the Core path")
            if st.needs_work_id:
                params = {**params, "s_work_id": ids.get(params["w_uuid"])}
            cur.execute(sql.text, sql.params(params))
            if st.makes_work_id:
                ids[params["eip_uuid"]] = cur.fetchone()[0] if self._postgres else cur.lastrowid
            else:
                check(st, cur.rowcount)
        return ids

    def _read_vm(self, cur: Any, uuid: str) -> Vm | None:
        """The VM's facts under a share lock (a chained plan's decision)."""
        cur.execute(self._vm_shared.text, self._vm_shared.params({"u": uuid}))
        found = cur.fetchone()
        return vm_of(found) if found else None

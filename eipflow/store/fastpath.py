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

import operator
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..errors import EipNotFound
from ..values import Eip, Vm, WorkItem
from .schema import EipRow, TransitionRow, UTCDateTime, VmRow, WorkRow
from .statements import eip_cas_delete, eip_cas_update, history_params, work_claim, work_item, work_params

__all__ = ["DEFAULT_ROW_CACHE", "FastPath", "LeaseLost", "Unsupported"]

#: Rows kept per process for optimistic intents (``EIPFLOW_ROW_CACHE``; 0 turns the cache off).
DEFAULT_ROW_CACHE = 16_384

EIP = EipRow.__table__  # type: ignore[attr-defined]
HISTORY = TransitionRow.__table__  # type: ignore[attr-defined]
WORK = WorkRow.__table__  # type: ignore[attr-defined]
VM = VmRow.__table__  # type: ignore[attr-defined]
_EIP_COLS = tuple(c.name for c in EIP.columns)
_DT_COLS = frozenset(c.name for c in EIP.columns if isinstance(c.type, UTCDateTime))
_EIP_VALUES = operator.attrgetter(*_EIP_COLS)  # an Eip's values in column order, read in C
_EIP_INDEX = {c: i for i, c in enumerate(_EIP_COLS)}
_SET = {c: f"s_{c}" for c in _EIP_COLS}  # parameter names, built once
_WHERE = {c: f"w_{c}" for c in _EIP_COLS}
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


class _Sql:
    """One Core statement compiled for a dialect: the SQL text and how to lay out its parameters."""

    __slots__ = ("_pick", "literals", "names", "positional", "text")

    def __init__(self, stmt: Any, dialect: Any) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.text: str = compiled.string
        self.positional: bool = bool(compiled.positional)
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        # Literal values in the statement (``status == "running"``) are bound parameters too.
        self.literals: dict[str, Any] = {
            name: bind.value for name, bind in compiled.binds.items() if not bind.required and bind.value is not None
        }

        names = self.names
        # The parameter tuple in the statement's order, built in C (a 1-name itemgetter returns a scalar).
        self._pick: Callable[[Mapping[str, Any]], Any] = (
            operator.itemgetter(*names) if len(names) > 1 else _one(names[0]) if names else _none
        )

    def params(self, values: Mapping[str, Any]) -> Any:
        merged = {**self.literals, **values} if self.literals else values
        return self._pick(merged) if self.positional else dict(merged)


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
        history_keys = ["eip_uuid", "event", "from_state", "to_state", "version", "actor", "op_id", "at", "details"]
        self._history = _Sql(HISTORY.insert().values({k: sa.bindparam(k) for k in history_keys}), dialect)
        work_keys = [c.name for c in WORK.columns if c.name != "id"]
        work_insert = WORK.insert().values({k: sa.bindparam(k) for k in work_keys})
        if self._postgres:
            work_insert = work_insert.returning(WORK.c.id)
        self._work = _Sql(work_insert, dialect)
        self._vm = _Sql(sa.select(VM.c.uuid, VM.c.host_uuid, VM.c.running, VM.c.updated_at).where(
            VM.c.uuid == sa.bindparam("u")), dialect)
        self._claim = _Sql(work_claim(), dialect)
        vm_select = sa.select(VM.c.uuid, VM.c.host_uuid, VM.c.running, VM.c.updated_at, VM.c.version).where(
            VM.c.uuid == sa.bindparam("u"))
        self._vm_shared = _Sql(vm_select if self.sqlite else vm_select.with_for_update(read=True), dialect)
        self._select_work = _Sql(sa.select(WORK).where(WORK.c.id == sa.bindparam("w_id")), dialect)
        self._work_updates: dict[tuple[str, ...], _Sql] = {}
        self._updates: dict[tuple[tuple[str, ...], tuple[str, ...]], _Sql] = {}
        self._deletes: dict[tuple[str, ...], _Sql] = {}

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
    def _out(self, value: Any) -> Any:
        """A Python value as the driver wants it (aware UTC datetimes become naive UTC)."""
        if isinstance(value, datetime):
            naive = value.astimezone(UTC).replace(tzinfo=None)
            # SQLAlchemy's SQLite DATETIME text ("%Y-%m-%d %H:%M:%S.%f"), formatted 3x faster than strftime.
            return naive.isoformat(" ", "microseconds") if self.sqlite else naive
        return value

    def _eip(self, row: tuple[Any, ...]) -> Eip:
        values = dict(zip(_EIP_COLS, row, strict=True))
        for col in _DT_COLS:
            values[col] = self._aware(values[col])
        values["attach_confirmed"] = bool(values["attach_confirmed"])
        return Eip(**values)

    @staticmethod
    def _aware(raw: Any) -> Any:
        """A datetime column as read (SQLite: text) as an aware UTC datetime."""
        if raw is None:
            return None
        if isinstance(raw, str):
            raw = datetime.fromisoformat(raw)
        return raw.replace(tzinfo=UTC)

    def _work_item(self, row: tuple[Any, ...]) -> WorkItem:
        values = dict(zip(_WORK_COLS, row, strict=True))
        for col in _WORK_DT_COLS:
            values[col] = self._aware(values[col])
        return work_item(values)

    # -- statements ------------------------------------------------------------------------------
    def _update(self, set_cols: tuple[str, ...], pred_cols: tuple[str, ...]) -> _Sql:
        key = (set_cols, pred_cols)
        sql = self._updates.get(key)
        if sql is None:
            sql = self._updates[key] = _Sql(eip_cas_update(set_cols, pred_cols), self.dialect)
        return sql

    def _work_update(self, set_cols: tuple[str, ...]) -> _Sql:
        sql = self._work_updates.get(set_cols)
        if sql is None:
            stmt = (
                WORK.update()
                .where(WORK.c.id == sa.bindparam("w_id"), WORK.c.lease_owner == sa.bindparam("w_owner"),
                       WORK.c.status == "running")
                .values({c: sa.bindparam(f"s_{c}") for c in set_cols})
            )
            sql = self._work_updates[set_cols] = _Sql(stmt, self.dialect)
        return sql

    def _delete(self, pred_cols: tuple[str, ...]) -> _Sql:
        sql = self._deletes.get(pred_cols)
        if sql is None:
            sql = self._deletes[pred_cols] = _Sql(eip_cas_delete(pred_cols), self.dialect)
        return sql

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

    def claim(self, work_id: int, owner: str, now: datetime, lease_us: int) -> WorkItem | None:
        """Lease one work item (the Core path's compare-and-swap on status and lease) and read it back.

        The lease runs to the shared lease clock's now + ``lease_us`` µs (the statement reads that clock).
        """
        pin = self._pin()
        conn, cur = pin.conn, pin.cur
        out = self._out
        stamp = out(now)
        try:
            if self.sqlite:
                cur.execute("BEGIN IMMEDIATE")
            params = {"w_id": work_id, "w_now": stamp, "s_owner": owner, "s_lease_us": lease_us, "s_now": stamp}
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
                    vm = Vm(found[0], found[1], bool(found[2]), self._aware(found[3]))
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
        changes = dict(plan.changes)
        out = self._out
        now_db = out(now)  # formatted once: it is written up to five times
        if plan.finish_work is not None:
            fin = plan.finish_work
            self._update_work(cur, fin.work_id, fin.owner, {"status": "done", "lease_owner": None,
                                                            "lease_expires_at": None, "updated_at": now_db})
        if plan.update_work is not None:
            up = plan.update_work
            self._update_work(cur, up.work_id, up.owner,
                              {**{c: out(v) for c, v in up.values.items()}, "updated_at": now_db})
        if plan.new_work is not None:
            cur.execute(self._work.text, self._work.params(work_params(eip.uuid, plan.new_work, now, out)))
            changes["work_id"] = cur.fetchone()[0] if self._postgres else cur.lastrowid
        predicates = plan.predicates
        if guard_work:
            predicates = {**predicates, "work_id": eip.work_id}
        params: dict[str, Any] = {"w_uuid": eip.uuid, "w_version": eip.version}
        for c, v in predicates.items():
            params[_WHERE[c]] = out(v) if type(v) is datetime else v
        changes["state"] = plan.target
        changes["version"] = eip.version + 1
        if plan.target == "deleted":
            sql = self._delete(tuple(sorted(predicates)))
        else:
            for c, v in changes.items():
                params[_SET[c]] = out(v) if type(v) is datetime else v
            params["s_updated_at"] = now_db
            sql = self._update(tuple(sorted(changes.keys() | {"updated_at"})), tuple(sorted(predicates)))
        cur.execute(sql.text, sql.params(params))
        if cur.rowcount != 1:
            return None
        cur.execute(self._history.text, self._history.params(history_params(plan, now_db)))
        changes["updated_at"] = now
        values = list(_EIP_VALUES(eip))
        for c, v in changes.items():
            values[_EIP_INDEX[c]] = v
        written = Eip(*values)
        chain = plan.chain
        if chain is None or written.work_id is None or plan.new_work is None:
            return written
        return self._chain(cur, written, chain, now, now_db)

    def _chain(self, cur: Any, written: Eip, chain: Any, now: datetime, now_db: Any) -> Eip | None:
        """:class:`~eipflow.store.ChainLease`: the VM's facts (share-locked), the lease, the next plan."""
        def read_vm() -> Vm | None:
            if written.vm_uuid is None:
                return None
            cur.execute(self._vm_shared.text, self._vm_shared.params({"u": written.vm_uuid}))
            found = cur.fetchone()
            return Vm(found[0], found[1], bool(found[2]), self._aware(found[3]), found[4]) if found else None

        nxt = chain.then(written, read_vm)
        if nxt is None or nxt is False:
            return written
        params = {"w_id": written.work_id, "w_now": now_db, "s_owner": chain.owner,
                  "s_lease_us": round(chain.lease_seconds * 1_000_000), "s_now": now_db}
        cur.execute(self._claim.text, self._claim.params(params))
        if cur.rowcount != 1:  # pragma: no cover - inserted by this very transaction, due now
            raise LeaseLost(written.work_id)
        if nxt is True:
            return written
        out = self._write(cur, written, nxt, now)
        if out is None:  # pragma: no cover - this transaction holds the row
            raise LeaseLost(written.work_id)
        return out

    def _update_work(self, cur: Any, work_id: int, owner: str, values: Mapping[str, Any]) -> None:
        sql = self._work_update(tuple(sorted(values)))
        bound = {"w_id": work_id, "w_owner": owner, **{f"s_{c}": v for c, v in values.items()}}
        cur.execute(sql.text, sql.params(bound))
        if cur.rowcount != 1:
            raise LeaseLost(work_id)

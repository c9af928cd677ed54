"""The hot path at driver level: read a row and compare-and-swap it in one short transaction.

SQLAlchemy Core costs ~60-90 µs of Python per executed statement; the raw driver ~10 µs. An intent
transition is a handful of statements, so on the hot path (``Runner.fire`` and ``Store.get``) eipflow
compiles its Core statements *once* per dialect into SQL strings and runs them on the pooled DBAPI
connection. The statements, the tables and the compare-and-swap are exactly the Core path's — only the
per-call execution machinery is skipped. Anything unusual (a driver error, a plan that completes a work
item) goes through the Core path, which owns error translation and deadlock retries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..errors import EipNotFound
from ..values import Eip, Vm
from .schema import EipRow, TransitionRow, UTCDateTime, VmRow, WorkRow
from .statements import eip_cas_delete, eip_cas_update, history_params, work_params

__all__ = ["FastPath", "LeaseLost", "Unsupported"]

EIP = EipRow.__table__  # type: ignore[attr-defined]
HISTORY = TransitionRow.__table__  # type: ignore[attr-defined]
WORK = WorkRow.__table__  # type: ignore[attr-defined]
VM = VmRow.__table__  # type: ignore[attr-defined]
_EIP_COLS = tuple(c.name for c in EIP.columns)
_DT_COLS = frozenset(c.name for c in EIP.columns if isinstance(c.type, UTCDateTime))
_SQLITE_DT = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's SQLite DATETIME storage format: both paths agree


class LeaseLost(Exception):
    """Internal: the work item is no longer ours (its lease expired and another worker took it)."""


class Unsupported(Exception):
    """Internal: this call must take the Core path (unusual plan, or a driver error to translate)."""


class _Sql:
    """One Core statement compiled for a dialect: the SQL text and how to lay out its parameters."""

    __slots__ = ("literals", "names", "positional", "text")

    def __init__(self, stmt: Any, dialect: Any) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.text: str = compiled.string
        self.positional: bool = bool(compiled.positional)
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        # Literal values in the statement (``status == "running"``) are bound parameters too.
        self.literals: dict[str, Any] = {
            name: bind.value for name, bind in compiled.binds.items() if not bind.required and bind.value is not None
        }

    def params(self, values: Mapping[str, Any]) -> Any:
        merged = {**self.literals, **values} if self.literals else values
        return tuple(merged[n] for n in self.names) if self.positional else dict(merged)


class FastPath:
    """Driver-level reads and intent transitions for one engine (SQLite, PostgreSQL, MySQL/MariaDB)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        dialect = engine.dialect
        self.dialect = dialect
        self.sqlite = dialect.name == "sqlite"
        select = sa.select(EIP).where(EIP.c.uuid == sa.bindparam("u"))
        self._get = _Sql(select, dialect)
        # Lock the row for the few microseconds between read and write: the compare-and-swap then never
        # loses on PostgreSQL/MariaDB hot rows (SQLite's BEGIN IMMEDIATE already serializes writers).
        self._get_for_update = self._get if self.sqlite else _Sql(select.with_for_update(), dialect)
        history_keys = ["eip_uuid", "event", "from_state", "to_state", "version", "actor", "op_id", "at", "details"]
        self._history = _Sql(HISTORY.insert().values({k: sa.bindparam(k) for k in history_keys}), dialect)
        work_keys = [c.name for c in WORK.columns if c.name != "id"]
        work_insert = WORK.insert().values({k: sa.bindparam(k) for k in work_keys})
        if dialect.name == "postgresql":
            work_insert = work_insert.returning(WORK.c.id)
        self._work = _Sql(work_insert, dialect)
        self._vm = _Sql(sa.select(VM.c.uuid, VM.c.host_uuid, VM.c.running, VM.c.updated_at).where(
            VM.c.uuid == sa.bindparam("u")), dialect)
        self._work_updates: dict[tuple[str, ...], _Sql] = {}
        self._updates: dict[tuple[tuple[str, ...], tuple[str, ...]], _Sql] = {}
        self._deletes: dict[tuple[str, ...], _Sql] = {}

    # -- values ----------------------------------------------------------------------------------
    def _out(self, value: Any) -> Any:
        """A Python value as the driver wants it (aware UTC datetimes become naive UTC)."""
        if isinstance(value, datetime):
            naive = value.astimezone(UTC).replace(tzinfo=None)
            return naive.strftime(_SQLITE_DT) if self.sqlite else naive
        return value

    def _eip(self, row: tuple[Any, ...]) -> Eip:
        values = dict(zip(_EIP_COLS, row, strict=True))
        for col in _DT_COLS:
            raw = values[col]
            if isinstance(raw, str):
                raw = datetime.fromisoformat(raw)
            values[col] = raw.replace(tzinfo=UTC) if raw is not None else None
        values["attach_confirmed"] = bool(values["attach_confirmed"])
        return Eip(**values)

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
    def get(self, uuid: str) -> Eip | None:
        """One row by uuid (a single SELECT sees a consistent snapshot; no transaction needed)."""
        dbapi = self.engine.raw_connection()
        try:
            cur = dbapi.cursor()
            cur.execute(self._get.text, self._get.params({"u": uuid}))
            row = cur.fetchone()
            cur.close()
            if not self.sqlite:
                dbapi.rollback()  # end the driver's implicit transaction before the pool takes it back
        except self.dialect.dbapi.Error as exc:  # type: ignore[union-attr]
            raise Unsupported from exc  # the Core path translates it (and reconnects if it must)
        finally:
            dbapi.close()
        return self._eip(row) if row is not None else None

    def transition(
        self, uuid: str, decide: Callable[[Eip, Vm | None], Any], now: datetime, *, with_vm: bool = False
    ) -> tuple[Eip, Any] | None:
        """Read the row, let ``decide`` plan the transition, write it — one transaction.

        ``decide`` returns a :class:`~eipflow.store.PlannedTransition` for the row it is given (it may
        raise, e.g. ``IllegalTransition``; nothing is written then). Returns ``(row as written, plan)``,
        or ``None`` when the compare-and-swap lost.

        Raises:
            EipNotFound: no such row.
            Unsupported: take the Core path (a plan completing work, or a driver error: nothing was written).
        """
        dbapi = self.engine.raw_connection()
        try:
            cur = dbapi.cursor()
            if self.sqlite:
                cur.execute("BEGIN IMMEDIATE")
            cur.execute(self._get_for_update.text, self._get_for_update.params({"u": uuid}))
            row = cur.fetchone()
            if row is None:
                dbapi.rollback()
                raise EipNotFound(uuid)
            eip = self._eip(row)
            vm = None
            if with_vm and eip.vm_uuid is not None:
                cur.execute(self._vm.text, self._vm.params({"u": eip.vm_uuid}))
                found = cur.fetchone()
                if found is not None:
                    at = datetime.fromisoformat(found[3]) if isinstance(found[3], str) else found[3]
                    vm = Vm(found[0], found[1], bool(found[2]), at.replace(tzinfo=UTC))
            try:
                plan = decide(eip, vm)
                written = self._write(cur, eip, plan, now)
            except BaseException:
                dbapi.rollback()
                raise
            if written is None:
                dbapi.rollback()
                return None
            dbapi.commit()
            cur.close()
            return written, plan
        except self.dialect.dbapi.Error as exc:  # type: ignore[union-attr]
            # Constraint violations, deadlocks, lost connections: roll back and let the Core path redo
            # the whole call; it translates each error to eipflow's types and retries deadlocks.
            try:
                dbapi.rollback()
            except self.dialect.dbapi.Error:  # type: ignore[union-attr]
                dbapi.invalidate()
            raise Unsupported from exc
        finally:
            dbapi.close()

    def _write(self, cur: Any, eip: Eip, plan: Any, now: datetime) -> Eip | None:
        changes = dict(plan.changes)
        version = eip.version + 1
        now_db = self._out(now)  # formatted once: it is written up to five times
        work_changes: list[tuple[int, str, Mapping[str, Any]]] = []
        if plan.finish_work is not None:
            work_id, owner = plan.finish_work
            work_changes.append((work_id, owner, {"status": "done", "lease_owner": None, "lease_expires_at": None}))
        if plan.update_work is not None:
            work_changes.append(plan.update_work)
        for work_id, owner, values in work_changes:
            values = {**values, "updated_at": now}
            sql = self._work_update(tuple(sorted(values)))
            bound = {"w_id": work_id, "w_owner": owner, **{f"s_{c}": self._out(v) for c, v in values.items()}}
            cur.execute(sql.text, sql.params(bound))
            if cur.rowcount != 1:
                raise LeaseLost(work_id)
        if plan.new_work is not None:
            values = work_params(eip.uuid, plan.new_work, now, self._out)
            cur.execute(self._work.text, self._work.params(values))
            changes["work_id"] = cur.fetchone()[0] if self.dialect.name == "postgresql" else cur.lastrowid
        pred_cols = tuple(sorted(plan.predicates))
        params: dict[str, Any] = {"w_uuid": eip.uuid, "w_version": eip.version}
        params.update({f"w_{c}": self._out(v) for c, v in plan.predicates.items()})
        if plan.target == "deleted":
            sql = self._delete(pred_cols)
            changes.update(state="deleted", version=version, updated_at=now)  # what the caller is told
        else:
            changes.update(state=plan.target, version=version, updated_at=now)
            sql = self._update(tuple(sorted(changes)), pred_cols)
            params.update({f"s_{c}": self._out(v) for c, v in changes.items() if c != "updated_at"})
            params["s_updated_at"] = now_db
        cur.execute(sql.text, sql.params(params))
        if cur.rowcount != 1:
            return None
        history = history_params(plan, now_db)
        cur.execute(self._history.text, self._history.params(history))
        return Eip(*[changes[c] if c in changes else getattr(eip, c) for c in _EIP_COLS])

"""The store: rows, the version-checked write, history and the durable work items.

Every state change is one short transaction built from SQLAlchemy Core
statements (compiled once and cached): finish the fenced work item, insert the
next one, ``UPDATE eip … WHERE uuid = :u AND version = :v`` and its history row.
A rowcount of 0 means somebody moved first; the caller reloads and decides
again. Nothing here calls a backend, and no transaction outlives a method call.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..clock import Clock, SystemClock
from ..errors import EipNotFound, GuestIpInUse, InvalidInput, VersionConflict, VipInUse
from ..values import Eip, TransitionRecord, Vm, WorkItem
from .database import retry_transient, translate_errors
from .fastpath import DEFAULT_ROW_CACHE, FastPath, LeaseLost, Unsupported
from .lowering import CasLost, Statement, check, execute, lower_many, statement, written
from .schema import ClockRow, EipRow, OperationRow, TransitionRow, VmRow, WorkRow
from .statements import (
    db_now,
    due_conditions,
    due_picks,
    lease_extend,
    vm_facts,
    vm_of,
    work_claim,
    work_item,
    work_params,
)

__all__ = [
    "ChainLease", "LeaseClock", "LeaseLost", "LeasedWork", "NewWork", "Operations", "PlannedTransition", "Store",
    "WorkUpdate",
]

EIP = EipRow.__table__  # type: ignore[attr-defined]
HISTORY = TransitionRow.__table__  # type: ignore[attr-defined]
WORK = WorkRow.__table__  # type: ignore[attr-defined]
VM = VmRow.__table__  # type: ignore[attr-defined]
OPERATION = OperationRow.__table__  # type: ignore[attr-defined]
CLOCK = ClockRow.__table__  # type: ignore[attr-defined]

_EIP_COLS = [c.name for c in EIP.columns]
if tuple(_EIP_COLS) != tuple(Eip.__dataclass_fields__):  # _eip() builds an Eip positionally from a row
    raise ImportError("eipflow.values.Eip's fields must follow the eip table's columns, in order")
_WORK_COLS = [c.name for c in WORK.columns]
_SKIP_LOCKED_DIALECTS = frozenset({"postgresql", "mysql", "mariadb"})
#: ids or uuids per ``IN (…)`` list: well under every driver's bound-parameter limit
IN_CHUNK = 500


def _chunks(values: list[Any], size: int = IN_CHUNK) -> Iterator[list[Any]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def fast_path_supported(engine: Engine) -> bool:
    """Whether the driver-level hot path runs on this engine's driver."""
    return (engine.dialect.name, engine.dialect.driver) in {
        ("sqlite", "pysqlite"), ("postgresql", "psycopg"), ("mysql", "pymysql"), ("mariadb", "pymysql"),
    }


def lease_us(seconds: float) -> int:
    """A lease length in whole microseconds (what the lease statements add to the shared clock)."""
    return round(seconds * 1_000_000)


class LeaseClock:
    """The one clock every process judges leases by: the database's, plus a shared skew.

    Claims, renewals and expiry checks read it inside their own statements (:class:`~eipflow.store.
    statements.db_now`), so a process whose clock runs ahead or behind cannot take a live lease. A
    ``clock=`` given to :class:`Store` / ``Eipflow.open`` is that process's clock only: it stamps rows
    and schedules backoff, never leases.

    :meth:`advance` moves the shared clock for *every* process (it writes the skew row): tests use it to
    let a lease expire without waiting; production never calls it.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._select = sa.select(db_now())

    def now(self) -> datetime:
        """The shared clock's current time (aware UTC)."""
        engine = self._store.engine
        with translate_errors(engine), self._store._read() as conn:
            value = conn.execute(self._select).scalar_one()
        if isinstance(value, str):  # SQLite's text, when the expression's type is not applied
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

    @retry_transient
    def advance(self, seconds: float) -> None:
        """Move the shared lease clock by ``seconds`` for every process using this database (tests)."""
        engine = self._store.engine
        with translate_errors(engine), engine.begin() as conn:
            moved = conn.execute(CLOCK.update().where(CLOCK.c.id == 1)
                                 .values(skew_us=CLOCK.c.skew_us + lease_us(seconds)))
            if moved.rowcount != 1:
                conn.execute(CLOCK.insert().values(id=1, skew_us=lease_us(seconds)))

    def skew(self) -> float:
        """Seconds the shared clock is moved from the database's own (0 unless a test moved it)."""
        with translate_errors(self._store.engine), self._store._read() as conn:
            raw = conn.execute(sa.select(CLOCK.c.skew_us).where(CLOCK.c.id == 1)).scalar()
        return (raw or 0) / 1_000_000


_CasLost = CasLost  # the compare-and-swap matched no row; unwinds the transaction


@dataclass(frozen=True, slots=True)
class NewWork:
    """A work item to insert in the same transaction as the state change that needs it."""

    action: str
    vip: str
    vm_nic_uuid: str
    guest_ip: str
    host_uuid: str | None
    due_at: datetime | None = None
    cleanup: bool = False
    #: the fencing token its backend call carries (``None`` while an attach's apply is in ``binding``)
    generation: int | None = None


@dataclass(frozen=True, slots=True)
class LeasedWork:
    """The leased work item a transition completes: fenced by its id *and* its lease owner."""

    work_id: int
    owner: str


@dataclass(frozen=True, slots=True)
class WorkUpdate:
    """Columns to update on the still-current leased item (its host and generation fixed, a reschedule)."""

    work_id: int
    owner: str
    values: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ChainLease:
    """Go on in the same transaction: lease the work item the plan created to ``owner`` and, if ``then``
    plans one, write a second transition for the row as written.

    ``then(written, read_vm)`` returns ``None`` (stop after the first plan, nothing leased), ``True`` (lease
    the item, nothing more: a detach's revoke), or the next plan (lease it, then write it: an attach's
    ``proceed``). ``read_vm()`` reads the bound VM's facts under a share lock, so a VM event recorded
    meanwhile is either seen here or sees this binding.

    The inline flows' first transaction: the intent, its work item and the caller's lease in one commit.
    """

    owner: str
    lease_seconds: float
    then: Callable[[Eip, Callable[[], Vm | None]], PlannedTransition | bool | None]


@dataclass(frozen=True, slots=True)
class PlannedTransition:
    """Everything one compare-and-swap writes; built by the runner, executed by :meth:`Store.commit`."""

    eip: Eip
    event: str
    target: str
    changes: Mapping[str, Any] = field(default_factory=dict)
    #: extra ``column = value`` conditions beside uuid and version (the conditional rollback)
    predicates: Mapping[str, Any] = field(default_factory=dict)
    new_work: NewWork | None = None
    #: the leased item this transition completes (marked ``done``)
    finish_work: LeasedWork | None = None
    #: update the still-current leased item in place (host and generation fixed, reschedule)
    update_work: WorkUpdate | None = None
    actor: str | None = None
    op_id: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    #: go on in the same transaction (the inline attach): lease the new item and write a second plan
    chain: ChainLease | None = None


def _eip(row: Any) -> Eip:
    # Positional: Eip's fields are declared in the table's column order (checked at import below).
    return Eip(*row)


def _work(row: Any) -> WorkItem:
    return work_item(row._mapping)


def _record(row: Any) -> TransitionRecord:
    m = row._mapping
    return TransitionRecord(
        id=m["id"],
        eip_uuid=m["eip_uuid"],
        event=m["event"],
        from_state=m["from_state"],
        to_state=m["to_state"],
        version=m["version"],
        actor=m["actor"],
        op_id=m["op_id"],
        at=m["at"],
        details=json.loads(m["details"]) if m["details"] else {},
    )


class Store:
    """Reads and version-checked writes of eipflow's tables on one SQLAlchemy engine."""

    def __init__(
        self, engine: Engine, clock: Clock | None = None, *, fast_path: bool | None = None,
        row_cache: int = DEFAULT_ROW_CACHE,
    ) -> None:
        """A store on ``engine``.

        Args:
            engine: from :func:`~eipflow.store.create_db_engine`.
            clock: this process's clock (stamps rows, schedules retries; never judges leases).
            fast_path: run the hot path at driver level (``None``: wherever the driver supports it;
                ``False``: SQLAlchemy Core only — same statements, same results).
            row_cache: rows remembered per process for optimistic intents (``0`` turns the cache off).

        Raises:
            InvalidInput: ``fast_path=True`` on a driver it does not support, or a negative ``row_cache``.
        """
        if isinstance(row_cache, bool) or not isinstance(row_cache, int) or row_cache < 0:
            raise InvalidInput(f"row_cache: {row_cache!r} is not a number of rows (0 turns the row cache off)")
        supported = fast_path_supported(engine)
        if fast_path and not supported:
            raise InvalidInput(f"fast_path: the driver-level path does not support {engine.dialect.name}+"
                               f"{engine.dialect.driver}")
        self.engine = engine
        self.clock: Clock = clock or SystemClock()
        self._select_eip = sa.select(EIP).where(EIP.c.uuid == sa.bindparam("u"))
        self._fast = FastPath(engine, row_cache=row_cache) if supported and fast_path is not False else None
        # Statements built once: building a Core statement and its cache key per call costs more
        # than executing it (~25 µs for a select, ~300 µs for the claim's UPDATE).
        self._select_vm = vm_facts()
        self._select_vm_shared = vm_facts(shared=engine.dialect.name != "sqlite")
        self._select_vms = vm_facts(many=True)
        self._holder_of_vip = sa.select(EIP.c.uuid).where(EIP.c.vip == sa.bindparam("ip"))
        self._holder_of_guest_ip = sa.select(EIP.c.uuid).where(EIP.c.guest_ip == sa.bindparam("ip"))
        self._select_work = sa.select(WORK).where(WORK.c.id == sa.bindparam("w_id"))
        self._select_history = sa.select(HISTORY).where(HISTORY.c.eip_uuid == sa.bindparam("u")).order_by(
            HISTORY.c.version
        )
        self._claim = work_claim()
        self._extend = lease_extend()
        self._extend_in = lease_extend(many=True)
        self._due_expired, self._due_pending = due_picks(sa.bindparam("n"))
        self._due_picks_batch = due_picks(sa.bindparam("n"))
        self._claim_in = work_claim(many=True)
        #: the shared clock leases are judged by (the database's); ``clock`` is this process's
        self.lease_clock = LeaseClock(self)

    # -- connections ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the fast path's pinned connections and dispose of the engine's pool."""
        if self._fast is not None:
            self._fast.close()
        self.engine.dispose()

    def _read(self) -> Connection:
        return self.engine.connect().execution_options(eipflow_read=True)

    # -- reads ---------------------------------------------------------------------------------
    def get(self, uuid: str) -> Eip | None:
        if self._fast is not None:
            try:
                return self._fast.get(uuid)
            except Unsupported:
                pass  # the Core path below translates the error
        with translate_errors(self.engine), self._read() as conn:
            row = conn.execute(self._select_eip, {"u": uuid}).first()
        return _eip(row) if row is not None else None

    def require(self, uuid: str) -> Eip:
        eip = self.get(uuid)
        if eip is None:
            raise EipNotFound(uuid)
        return eip

    def eips(
        self,
        *,
        state: str | None = None,
        vm_uuid: str | None = None,
        host_uuid: str | None = None,
        states: Iterable[str] | None = None,
        vm_uuids: Sequence[str] | None = None,
    ) -> list[Eip]:
        if vm_uuids is not None:
            if not vm_uuids:
                return []
            out = []
            for chunk in _chunks(list(vm_uuids)):
                out += self._eips(state=state, vm_uuid=vm_uuid, host_uuid=host_uuid, states=states, vm_in=chunk)
            return sorted(out, key=lambda e: (e.created_at, e.uuid))
        return self._eips(state=state, vm_uuid=vm_uuid, host_uuid=host_uuid, states=states)

    def _eips(self, *, state: str | None = None, vm_uuid: str | None = None, host_uuid: str | None = None,
              states: Iterable[str] | None = None, vm_in: Sequence[str] | None = None) -> list[Eip]:
        stmt = sa.select(EIP)
        if vm_in is not None:
            stmt = stmt.where(EIP.c.vm_uuid.in_(list(vm_in)))
        if state is not None:
            stmt = stmt.where(EIP.c.state == state)
        if states is not None:
            stmt = stmt.where(EIP.c.state.in_(list(states)))
        if vm_uuid is not None:
            stmt = stmt.where(EIP.c.vm_uuid == vm_uuid)
        if host_uuid is not None:
            stmt = stmt.where(sa.or_(EIP.c.applied_host == host_uuid, EIP.c.host_uuid == host_uuid))
        stmt = stmt.order_by(EIP.c.created_at, EIP.c.uuid)
        with translate_errors(self.engine), self._read() as conn:
            return [_eip(r) for r in conn.execute(stmt)]

    def _one(self, stmt: Any, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """One row of a single-row SELECT: on the fast path's pinned connection where there is one."""
        if self._fast is not None:
            try:
                return self._fast.read_one(stmt, params)
            except Unsupported:
                pass  # the Core path below translates the error
        with translate_errors(self.engine), self._read() as conn:
            row = conn.execute(stmt, params).first()
        return tuple(row) if row is not None else None

    def holder_of_guest_ip(self, guest_ip: str) -> str | None:
        row = self._one(self._holder_of_guest_ip, {"ip": guest_ip})
        return row[0] if row is not None else None

    def holder_of_vip(self, vip: str) -> str | None:
        row = self._one(self._holder_of_vip, {"ip": vip})
        return row[0] if row is not None else None

    def history(self, uuid: str) -> list[TransitionRecord]:
        with translate_errors(self.engine), self._read() as conn:
            return [_record(r) for r in conn.execute(self._select_history, {"u": uuid})]

    def reached_since(self, uuid: str, state: str, version: int) -> bool:
        """Whether the EIP entered ``state`` after ``version`` (one indexed lookup, not the whole history)."""
        stmt = sa.select(HISTORY.c.id).where(
            HISTORY.c.eip_uuid == uuid, HISTORY.c.version > version, HISTORY.c.to_state == state
        ).limit(1)
        with translate_errors(self.engine), self._read() as conn:
            return conn.execute(stmt).first() is not None

    def all_history(self) -> list[TransitionRecord]:
        stmt = sa.select(HISTORY).order_by(HISTORY.c.eip_uuid, HISTORY.c.version)
        with translate_errors(self.engine), self._read() as conn:
            return [_record(r) for r in conn.execute(stmt)]

    def work_item(self, work_id: int) -> WorkItem | None:
        with translate_errors(self.engine), self._read() as conn:
            row = conn.execute(self._select_work, {"w_id": work_id}).first()
        return _work(row) if row is not None else None

    def list_work(self, *, statuses: Sequence[str] | None = None, eip_uuid: str | None = None) -> list[WorkItem]:
        stmt = sa.select(WORK)
        if statuses:
            stmt = stmt.where(WORK.c.status.in_(list(statuses)))
        if eip_uuid:
            stmt = stmt.where(WORK.c.eip_uuid == eip_uuid)
        with translate_errors(self.engine), self._read() as conn:
            return [_work(r) for r in conn.execute(stmt.order_by(WORK.c.id))]

    def due_work(self, now: datetime, limit: int = 100) -> list[int]:
        """Ids of items a worker may claim now: running with an expired lease first, then pending and due.

        Two index range scans on ``(status, due_at)``, each already in ``due_at`` order and limited — never
        a sort of every pending item (with an ``OR`` across both conditions, a backlog of N due items made
        each claim O(N) and draining it O(N²)).
        """
        with translate_errors(self.engine), self._read() as conn:
            expired = [r[0] for r in conn.execute(self._due_expired, {"now": now, "n": limit})]
            if len(expired) >= limit:
                return expired[:limit]
            return expired + [r[0] for r in conn.execute(self._due_pending, {"now": now, "n": limit - len(expired)})]

    def next_due_at(self) -> datetime | None:
        stmt = sa.select(sa.func.min(WORK.c.due_at)).where(WORK.c.status == "pending")
        with translate_errors(self.engine), self._read() as conn:
            return conn.execute(stmt).scalar()

    def vm(self, uuid: str) -> Vm | None:
        row = self._one(self._select_vm, {"u": uuid})
        return vm_of(row) if row is not None else None

    # -- writes --------------------------------------------------------------------------------
    @retry_transient  # every write is one transaction: safe to run again after a deadlock
    def create(self, uuid: str, vip: str, name: str | None, *, actor: str | None, op_id: str | None) -> Eip:
        now = self.clock.now()
        values = dict(
            uuid=uuid,
            name=name,
            vip=vip,
            state="detached",
            version=1,
            desired="detached",
            vm_nic_uuid=None,
            guest_ip=None,
            vm_uuid=None,
            host_uuid=None,
            applied_host=None,
            attach_confirmed=False,
            work_id=None,
            last_error=None,
            created_at=now,
            updated_at=now,
        )
        try:
            with translate_errors(self.engine), self.engine.begin() as conn:
                conn.execute(EIP.insert(), values)
                conn.execute(
                    statement(("insert_history",)),
                    dict(
                        eip_uuid=uuid,
                        event="create",
                        from_state="",
                        to_state="detached",
                        version=1,
                        actor=actor,
                        op_id=op_id,
                        at=now,
                        details=json.dumps({"vip": vip, "name": name}),
                    ),
                )
        except sa.exc.IntegrityError:
            raise VipInUse(vip) from None
        return Eip(**values)  # type: ignore[arg-type]

    def transition(
        self, uuid: str, decide: Callable[[Eip, Vm | None], PlannedTransition], *, with_vm: bool = False
    ) -> tuple[Eip, PlannedTransition] | None:
        """Read the row and compare-and-swap the transition ``decide`` plans for it, in one transaction.

        The hot path of every intent and completion. ``decide`` gets the row and, with ``with_vm``, the
        bound VM's recorded facts read in the same transaction. Returns ``(row as written, plan)``, or ``None`` when the
        compare-and-swap lost (reload and decide again). Whatever ``decide`` raises propagates and
        nothing is written.

        Raises:
            EipNotFound: no row with that uuid.
            GuestIpInUse: the plan binds a guest IP that already carries another EIP.
            LeaseLost: the plan completes a work item this owner no longer holds.
        """
        if self._fast is not None:
            try:
                return self._fast.transition(uuid, decide, self.clock.now(), with_vm=with_vm)
            except Unsupported:
                pass  # redo it on the Core path, which translates errors and retries deadlocks
        eip = self.require(uuid)
        plan = decide(eip, self.vm(eip.vm_uuid) if with_vm and eip.vm_uuid else None)
        written = self.commit(plan)
        return (written, plan) if written is not None else None

    @retry_transient  # a deadlock/serialization failure rolled the whole transition back: run it again
    def commit(self, plan: PlannedTransition) -> Eip | None:
        """Execute one planned transition atomically (and its :class:`ChainLease`, if any).

        The statements are the plan's lowering (:func:`eipflow.store.lowering.lower`), run by the Core
        executor; the driver path runs the very same list.

        Returns:
            The row as written (``state == "deleted"`` for a deleted row), or ``None`` when the
            compare-and-swap lost (version moved or a predicate no longer holds): reload and decide again.

        Raises:
            LeaseLost: ``finish_work``/``update_work`` names an item this owner no longer holds.
            GuestIpInUse: the new binding's guest IP already carries another EIP.
        """
        now = self.clock.now()
        try:
            with translate_errors(self.engine), self.engine.begin() as conn:
                written = execute(plan, now, lambda stmts: self._run(conn, stmts),
                                  lambda uuid: self._read_vm_shared(conn, uuid))
        except CasLost:
            return None
        except sa.exc.IntegrityError:
            guest_ip = plan.changes.get("guest_ip")
            if guest_ip is not None:  # the only unique column a transition can collide on
                raise GuestIpInUse(guest_ip, self.holder_of_guest_ip(guest_ip)) from None
            raise
        if self._fast is not None:
            self._fast.remember(written)
        return written

    @retry_transient
    def commit_many(
        self, plans: Sequence[PlannedTransition], *, lease_to: tuple[str, float] | None = None
    ) -> list[Eip] | None:
        """Execute many transitions (distinct EIPs) in one transaction with batched statements.

        For the fan-outs (a VM stop, a host evacuation, a worker's batch of completions): the batch's
        lowering (:func:`eipflow.store.lowering.lower_many`) — one executemany per statement kind and
        shape (a multi-row INSERT … RETURNING for the work items), whatever the number of plans. Each plan
        is fenced exactly as :meth:`commit` fences it. All or nothing: if any fence does not hold, everything
        is rolled back and ``None`` is returned; the caller then goes one plan at a time, each deciding
        again on a fresh row. Chained plans are not batched. ``lease_to=(owner, seconds)`` also leases every
        work item the plans insert to ``owner``, in the same transaction (the fan-outs' inline shape).
        """
        if not plans:
            return []
        if any(p.chain is not None for p in plans):
            raise ValueError("commit_many does not run chained plans")
        if not self.engine.dialect.supports_sane_multi_rowcount:
            return None  # cannot tell which compare-and-swap lost: let the caller go one by one
        now = self.clock.now()
        stmts = lower_many(plans, now)
        try:
            with translate_errors(self.engine), self.engine.begin() as conn:
                ids = self._run(conn, stmts)
                if lease_to is not None and ids:
                    owner, seconds = lease_to
                    for chunk in _chunks(list(ids.values())):
                        claimed = conn.execute(self._claim_in, {"ids": chunk, "w_now": now, "s_owner": owner,
                                                                "s_lease_us": lease_us(seconds), "s_now": now})
                        if claimed.rowcount != len(chunk):  # pragma: no cover - inserted by this transaction
                            raise CasLost
        except (CasLost, LeaseLost, sa.exc.IntegrityError):
            return None  # a lost fence or a colliding binding: the single path re-decides and says which
        out = [written(p, now, ids.get(p.eip.uuid)) for p in plans]
        if self._fast is not None:
            for eip in out:
                self._fast.remember(eip)
        return out

    def _run(self, conn: Connection, stmts: Sequence[Statement]) -> dict[str, int]:
        """The Core executor of a lowering: each statement in order, :func:`~eipflow.store.lowering.check`-ed."""
        ids: dict[str, int] = {}
        for st in stmts:
            params: Any = st.params
            if st.needs_work_id:
                params = ([{**p, "s_work_id": ids.get(p["w_uuid"])} for p in params] if isinstance(params, list)
                          else {**params, "s_work_id": ids.get(params["w_uuid"])})
            if st.makes_work_id:
                rows = params if isinstance(params, list) else [params]
                for chunk in _chunks(rows, IN_CHUNK // 2):
                    # One multi-row INSERT … RETURNING per chunk, matched back by EIP (one item per EIP here):
                    # no reliance on the order RETURNING answers in.
                    for work_id, eip_uuid in conn.execute(
                        WORK.insert().values(chunk).returning(WORK.c.id, WORK.c.eip_uuid)
                    ):
                        ids[eip_uuid] = work_id
                continue
            check(st, conn.execute(statement(st.key), params).rowcount)
        return ids

    def _read_vm_shared(self, conn: Connection, uuid: str) -> Vm | None:
        found = conn.execute(self._select_vm_shared, {"u": uuid}).first()
        return vm_of(found) if found is not None else None

    # -- batches ---------------------------------------------------------------------------------
    def get_many(self, uuids: Iterable[str]) -> dict[str, Eip]:
        """The rows of ``uuids`` that exist, by uuid (one SELECT per :data:`IN_CHUNK` uuids)."""
        wanted = list(dict.fromkeys(uuids))
        out: dict[str, Eip] = {}
        with translate_errors(self.engine), self._read() as conn:
            for chunk in _chunks(wanted):
                for row in conn.execute(sa.select(EIP).where(EIP.c.uuid.in_(chunk))):
                    eip = _eip(row)
                    out[eip.uuid] = eip
        if self._fast is not None:
            for eip in out.values():
                self._fast.remember(eip)
        return out

    def vms(self, uuids: Iterable[str]) -> dict[str, Vm]:
        """The recorded facts of the VMs ``uuids``, by uuid (one SELECT per :data:`IN_CHUNK` uuids)."""
        wanted = list(dict.fromkeys(uuids))
        out: dict[str, Vm] = {}
        with translate_errors(self.engine), self._read() as conn:
            for chunk in _chunks(wanted):
                for row in conn.execute(self._select_vms, {"us": chunk}):
                    out[row[0]] = vm_of(row)
        return out

    @retry_transient
    def claim_many(self, work_ids: Iterable[int], owner: str, lease_seconds: float) -> list[WorkItem]:
        """Lease every claimable item of ``work_ids`` to ``owner``: a few statements per :data:`IN_CHUNK` ids.

        The same compare-and-swap as :meth:`claim` (due pending, or running with an expired lease on the
        shared clock), for many items: claimable ids are picked and locked (``FOR UPDATE SKIP LOCKED`` on the
        servers; SQLite's ``BEGIN IMMEDIATE`` holds the write lock), updated with the claim's own conditions
        repeated, and read back. Items another owner holds, or that are finished, are left out.
        """
        return self._claim_batch(list(dict.fromkeys(work_ids)), owner, lease_seconds, limit=None)

    @retry_transient
    def claim_due(
        self, owner: str, lease_seconds: float, limit: int, *, skip_locked: bool | None = None
    ) -> list[WorkItem]:
        """Lease up to ``limit`` due items (expired leases first, then pending by due time) in one transaction.

        What workers call: candidates another worker's claim has locked are skipped, not waited for
        (``FOR UPDATE SKIP LOCKED``, default on PostgreSQL and MariaDB/MySQL), and the UPDATE repeats the
        claim's conditions, so the compare-and-swap stays the guarantee.
        """
        if limit < 1:
            raise InvalidInput(f"limit must be at least 1, not {limit}")
        return self._claim_batch(None, owner, lease_seconds, limit=limit, skip_locked=skip_locked)

    def _claim_batch(self, work_ids: list[int] | None, owner: str, lease_seconds: float, *, limit: int | None,
                     skip_locked: bool | None = None) -> list[WorkItem]:
        now = self.clock.now()
        lock = self.engine.dialect.name in _SKIP_LOCKED_DIALECTS if skip_locked is None else skip_locked
        out: list[WorkItem] = []
        with translate_errors(self.engine), self.engine.begin() as conn:
            if work_ids is None:
                assert limit is not None
                picked: list[int] = []
                for pick in self._due_picks_batch:
                    stmt = pick.with_for_update(skip_locked=True) if lock else pick
                    picked += [r[0] for r in conn.execute(stmt, {"now": now, "n": limit - len(picked)})]
                    if len(picked) >= limit:
                        break
                chunks = [picked] if picked else []
            else:
                chunks = []
                for chunk in _chunks(work_ids):
                    stmt = sa.select(WORK.c.id).where(WORK.c.id.in_(chunk), sa.or_(*due_conditions(now)))
                    if lock:
                        stmt = stmt.with_for_update(skip_locked=True)
                    ids = [r[0] for r in conn.execute(stmt)]
                    if ids:
                        chunks.append(ids)
            lease = lease_us(lease_seconds)
            for ids in chunks:
                if lock or self.engine.dialect.name == "sqlite":
                    # The picked rows are locked by this transaction (SKIP LOCKED, or SQLite's write lock):
                    # the claim's UPDATE, its conditions repeated, takes every one of them.
                    claimed = conn.execute(
                        self._claim_in, {"ids": ids, "w_now": now, "s_owner": owner, "s_lease_us": lease, "s_now": now}
                    ).rowcount
                    if claimed != len(ids):  # pragma: no cover - nobody else can have changed them
                        raise RuntimeError(f"claimed {claimed} of {len(ids)} locked work items")
                else:  # unlocked picks on a server: another claimer may win some; one compare-and-swap each
                    ids = [i for i in ids if conn.execute(self._claim, {"w_id": i, "w_now": now, "s_owner": owner,
                                                                        "s_lease_us": lease, "s_now": now}).rowcount]
                    if not ids:
                        continue
                out += [_work(r) for r in conn.execute(sa.select(WORK).where(WORK.c.id.in_(ids)).order_by(WORK.c.id))]
        return out

    def _insert_work_item(self, conn: Connection, eip_uuid: str, work: NewWork, now: datetime) -> int:
        key = conn.execute(statement(("insert_work",)), work_params(eip_uuid, work, now)).inserted_primary_key
        assert key is not None
        return int(key[0])

    def relink_work(self, eip: Eip, work: NewWork) -> int | None:
        """Give an in-flight row whose work item is gone a fresh one (the reconciler).

        Fenced by the row's version and old ``work_id``; the state is unchanged, so no history row.
        Returns the new item's id, or ``None`` when the row moved meanwhile.
        """
        now = self.clock.now()
        try:
            with translate_errors(self.engine), self.engine.begin() as conn:
                work_id = self._insert_work_item(conn, eip.uuid, work, now)
                moved = conn.execute(
                    EIP.update()
                    .where(EIP.c.uuid == eip.uuid, EIP.c.version == eip.version, EIP.c.work_id == eip.work_id)
                    .values(work_id=work_id)
                )
                if moved.rowcount != 1:
                    raise _CasLost
        except _CasLost:
            return None
        return work_id

    @retry_transient
    def add_work(self, eip_uuid: str, work: NewWork) -> int:
        """Insert a stand-alone work item (a cleanup revoke that drives no state)."""
        with translate_errors(self.engine), self.engine.begin() as conn:
            return self._insert_work_item(conn, eip_uuid, work, self.clock.now())

    @retry_transient
    def record_vm(
        self, uuid: str, host_uuid: str | None, running: bool, *, expected_version: int | None = None
    ) -> Vm | None:
        """Record what eipflow is told about a VM, compare-and-swapped on the fact's version.

        Args:
            expected_version: ``None``: a new fact that wins over whatever is recorded (read, then
                compare-and-swap, again if another fact landed in between — never a blind write);
                ``0``: only if nothing is recorded yet (an attach's host guess); ``N``: only if the
                recorded fact is still at version ``N`` (a fact derived from the one read).

        Returns:
            The fact as written, or ``None`` when ``expected_version`` no longer holds.
        """
        now = self.clock.now()
        values = {"host_uuid": host_uuid, "running": running, "updated_at": now}
        for _ in range(50):
            current = self.vm(uuid) if expected_version is None else None
            version = current.version if current is not None else (expected_version or 0)
            if version == 0:
                try:
                    with translate_errors(self.engine), self.engine.begin() as conn:
                        conn.execute(VM.insert().values(uuid=uuid, version=1, **values))
                    return Vm(uuid, host_uuid, running, now, 1)
                except sa.exc.IntegrityError:
                    if expected_version is not None:
                        return None  # somebody recorded a fact first: it wins over our guess
                    continue
            with translate_errors(self.engine), self.engine.begin() as conn:
                upd = conn.execute(
                    VM.update().where(VM.c.uuid == uuid, VM.c.version == version).values(version=version + 1, **values)
                )
            if upd.rowcount == 1:
                return Vm(uuid, host_uuid, running, now, version + 1)
            if expected_version is not None:
                return None
        raise VersionConflict(uuid, version, 50)  # pragma: no cover - 50 lost races in a row

    @retry_transient
    def stop_vms_on(self, host_uuid: str) -> list[str]:
        """Record every VM recorded running on ``host_uuid`` as stopped; the uuids of those recorded.

        Each fact is compare-and-swapped on its version (one executemany per :data:`IN_CHUNK` VMs): a VM
        whose fact changed since it was read (started elsewhere, migrated) keeps its newer fact and is
        left out.
        """
        pick = sa.select(VM.c.uuid, VM.c.version).where(VM.c.host_uuid == host_uuid, VM.c.running == sa.true())
        stop = (VM.update().where(VM.c.uuid == sa.bindparam("w_uuid"), VM.c.version == sa.bindparam("w_version"))
                .values(host_uuid=None, running=False, version=sa.bindparam("s_version"),
                        updated_at=sa.bindparam("s_now")))
        now = self.clock.now()
        with translate_errors(self.engine), self._read() as conn:
            seen = [(r[0], r[1]) for r in conn.execute(pick)]
        stopped: list[str] = []
        for chunk in _chunks(seen):
            params = [{"w_uuid": u, "w_version": ver, "s_version": ver + 1, "s_now": now} for u, ver in chunk]
            try:
                with translate_errors(self.engine), self.engine.begin() as conn:
                    if conn.execute(stop, params).rowcount != len(chunk):
                        raise _CasLost  # roll the whole chunk back
                stopped += [u for u, _ in chunk]
                continue
            except _CasLost:
                pass
            for uuid, version in chunk:  # some fact moved meanwhile: one compare-and-swap each tells which
                with translate_errors(self.engine), self.engine.begin() as conn:
                    if conn.execute(stop, {"w_uuid": uuid, "w_version": version, "s_version": version + 1,
                                           "s_now": now}).rowcount == 1:
                        stopped.append(uuid)
        return stopped

    @retry_transient
    def claim(self, work_id: int, owner: str, lease_seconds: float) -> WorkItem | None:
        """Lease one item: a compare-and-swap on its status and lease, correct on every database.

        The lease is granted, and an expired one recognised, on the shared :class:`LeaseClock`.
        """
        now = self.clock.now()
        lease = lease_us(lease_seconds)
        if self._fast is not None:
            try:
                return self._fast.claim(work_id, owner, now, lease)
            except Unsupported:
                pass  # the Core path below translates the error (and retries a deadlock)
        params = {"w_id": work_id, "w_now": now, "s_owner": owner, "s_lease_us": lease, "s_now": now}
        with translate_errors(self.engine), self.engine.begin() as conn:
            if conn.execute(self._claim, params).rowcount != 1:
                return None
            row = conn.execute(self._select_work, {"w_id": work_id}).first()
        return _work(row)

    @retry_transient
    def extend_lease(self, work_id: int, owner: str, lease_seconds: float) -> bool:
        """Renew a lease ``owner`` holds to the shared clock's now + ``lease_seconds``; ``False``: not ours."""
        params = {"w_id": work_id, "w_owner": owner, "s_lease_us": lease_us(lease_seconds), "s_now": self.clock.now()}
        with translate_errors(self.engine), self.engine.begin() as conn:
            return bool(conn.execute(self._extend, params).rowcount == 1)

    @retry_transient
    def extend_leases(self, work_ids: Sequence[int], owner: str, lease_seconds: float) -> set[int]:
        """Renew many leases ``owner`` holds (one UPDATE per :data:`IN_CHUNK`); the ids still ours."""
        now = self.clock.now()
        kept: set[int] = set()
        with translate_errors(self.engine), self.engine.begin() as conn:
            for chunk in _chunks(list(dict.fromkeys(work_ids))):
                params = {"ids": chunk, "w_owner": owner, "s_lease_us": lease_us(lease_seconds), "s_now": now}
                if conn.execute(self._extend_in, params).rowcount == len(chunk):
                    kept.update(chunk)
                    continue
                held = sa.select(WORK.c.id).where(WORK.c.id.in_(chunk), WORK.c.lease_owner == owner,
                                                  WORK.c.status == "running")
                kept.update(r[0] for r in conn.execute(held))
        return kept

    @retry_transient
    def set_work_status(
        self, work_id: int, owner: str | None, status: str, *, error: str | None = None,
        due_at: datetime | None = None,
    ) -> bool:
        """Finish, cancel, park or reschedule an item (fenced by its lease owner when given)."""
        now = self.clock.now()
        where = [WORK.c.id == work_id]
        if owner is not None:
            where += [WORK.c.lease_owner == owner, WORK.c.status == "running"]
        values: dict[str, Any] = {"status": status, "lease_owner": None, "lease_expires_at": None, "updated_at": now}
        if error is not None:
            values["last_error"] = error
        if due_at is not None:
            values["due_at"] = due_at
        with translate_errors(self.engine), self.engine.begin() as conn:
            return bool(conn.execute(WORK.update().where(*where).values(values)).rowcount == 1)

    @retry_transient
    def requeue(self, work_id: int) -> bool:
        """Operator retry: a parked (or pending) item becomes due now with a fresh attempt budget."""
        now = self.clock.now()
        stmt = (
            WORK.update()
            .where(WORK.c.id == work_id, WORK.c.status.in_(["parked", "pending"]))
            .values(status="pending", attempts=0, due_at=now, updated_at=now)
        )
        with translate_errors(self.engine), self.engine.begin() as conn:
            return bool(conn.execute(stmt).rowcount == 1)

    @retry_transient
    def release_lease(self, work_id: int, owner: str) -> bool:
        """Give an item back unfinished (graceful shutdown): due again at once."""
        now = self.clock.now()
        stmt = (
            WORK.update()
            .where(WORK.c.id == work_id, WORK.c.lease_owner == owner, WORK.c.status == "running")
            .values(status="pending", lease_owner=None, lease_expires_at=None, due_at=now, updated_at=now)
        )
        with translate_errors(self.engine), self.engine.begin() as conn:
            return bool(conn.execute(stmt).rowcount == 1)


    def prune(
        self,
        *,
        history_before: datetime | None = None,
        work_before: datetime | None = None,
        batch_size: int = 1000,
        dry_run: bool = False,
    ) -> dict[str, int]:
        """Delete finished work items and old history in bounded batches (one short transaction each).

        Work: items ``done`` or ``cancelled`` last updated before ``work_before`` and linked from no EIP;
        pending, running and parked items are never touched. History: rows recorded before
        ``history_before``, except the latest row of every EIP that still exists (``eip history`` keeps
        answering for it); a deleted EIP's old history goes entirely. Each batch selects at most
        ``batch_size`` ids, then deletes those ids (work items with their conditions repeated, so an item that
        changed in between is left alone; history rows only ever become *more* prunable, as newer versions
        are appended and deleted EIPs never come back).

        Returns:
            ``{"history": rows, "work": items}`` deleted (with ``dry_run``: that would be deleted).
        """
        if batch_size < 1:
            raise InvalidInput(f"batch_size must be at least 1, not {batch_size}")
        later = sa.alias(HISTORY, "later")
        live = sa.exists().where(EIP.c.uuid == HISTORY.c.eip_uuid)
        newer = sa.exists().where(later.c.eip_uuid == HISTORY.c.eip_uuid, later.c.version > HISTORY.c.version)
        linked = sa.select(EIP.c.work_id).where(EIP.c.work_id.is_not(None))
        finished = WORK.c.status.in_(["done", "cancelled"])
        # (name, table, what to delete, what the DELETE re-checks): history rows only ever become more
        # prunable, and MySQL refuses a DELETE whose subquery reads the same table, so history re-checks nothing.
        jobs: list[tuple[str, Any, Any, Any]] = []
        if history_before is not None:
            jobs.append(("history", HISTORY, sa.and_(HISTORY.c.at < history_before, sa.or_(~live, newer)), sa.true()))
        if work_before is not None:
            condition = sa.and_(finished, WORK.c.updated_at < work_before, WORK.c.id.not_in(linked))
            jobs.append(("work", WORK, condition, condition))
        counts = {"history": 0, "work": 0}
        for name, table, condition, recheck in jobs:
            if dry_run:
                with translate_errors(self.engine), self._read() as conn:
                    counts[name] = int(conn.execute(sa.select(sa.func.count()).select_from(table).where(condition))
                                       .scalar() or 0)
                continue
            pick = sa.select(table.c.id).where(condition).order_by(table.c.id).limit(batch_size)
            while True:
                # Two statements, not DELETE … WHERE id IN (SELECT … same table): MySQL refuses that form.
                with translate_errors(self.engine), self.engine.begin() as conn:
                    ids = [r[0] for r in conn.execute(pick)]
                    if ids:
                        counts[name] += conn.execute(table.delete().where(table.c.id.in_(ids), recheck)).rowcount
                if len(ids) < batch_size:
                    break
        return counts

class Operations:
    """Idempotency keys: the first request with an operation id records its outcome; repeats replay it."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def begin(self, op_id: str, request: str) -> Any | None:
        """Claim ``op_id`` for ``request``; returns the existing row's mapping when it was used before."""
        now = self.store.clock.now()
        engine = self.store.engine
        while True:  # the other claim may be forgotten between our insert and our read: insert again
            try:
                with translate_errors(engine), engine.begin() as conn:
                    conn.execute(
                        OPERATION.insert().values(
                            op_id=op_id, request=request, status="running", result=None, created_at=now,
                            updated_at=db_now(),  # on the shared lease clock: take_over judges it there
                        )
                    )
                return None
            except sa.exc.IntegrityError:
                with translate_errors(engine), self.store._read() as conn:
                    row = conn.execute(sa.select(OPERATION).where(OPERATION.c.op_id == op_id)).first()
                if row is not None:
                    return row._mapping

    def get(self, op_id: str) -> Any | None:
        with translate_errors(self.store.engine), self.store._read() as conn:
            row = conn.execute(sa.select(OPERATION).where(OPERATION.c.op_id == op_id)).first()
        return row._mapping if row is not None else None

    @retry_transient
    def finish(self, op_id: str, status: str, result: str) -> None:
        with translate_errors(self.store.engine), self.store.engine.begin() as conn:
            # Only a running operation is finished: an outcome already recorded (by a caller that took
            # the operation over) is never overwritten.
            conn.execute(
                OPERATION.update()
                .where(OPERATION.c.op_id == op_id, OPERATION.c.status == "running")
                .values(status=status, result=result, updated_at=self.store.clock.now())
            )

    @retry_transient
    def forget(self, op_id: str) -> None:
        """Drop a claim whose request changed nothing (it failed validation or a conflict)."""
        with translate_errors(self.store.engine), self.store.engine.begin() as conn:
            conn.execute(OPERATION.delete().where(OPERATION.c.op_id == op_id, OPERATION.c.status == "running"))

    @retry_transient
    def take_over(self, op_id: str, lease_seconds: float) -> bool:
        """Claim a ``running`` operation whose caller died (not updated for ``lease_seconds`` on the shared clock)."""
        stmt = (
            OPERATION.update()
            .where(OPERATION.c.op_id == op_id, OPERATION.c.status == "running",
                   OPERATION.c.updated_at < db_now(sa.literal(-lease_us(lease_seconds))))
            .values(updated_at=db_now())
        )
        with translate_errors(self.store.engine), self.store.engine.begin() as conn:
            return bool(conn.execute(stmt).rowcount == 1)

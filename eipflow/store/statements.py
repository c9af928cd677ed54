"""The version-checked statements and the rows they write, built once for both execution paths (Core, driver)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement

from ..values import EipSpec, Vm, WorkItem
from .schema import EipRow, UTCDateTime, VmRow, WorkRow

__all__ = [
    "aware", "db_now", "due_conditions", "due_picks", "eip_cas_delete", "eip_cas_update", "history_params",
    "lease_extend", "vm_facts", "vm_of", "work_claim", "work_item", "work_params",
]

EIP = EipRow.__table__  # type: ignore[attr-defined]
WORK = WorkRow.__table__  # type: ignore[attr-defined]
VM = VmRow.__table__  # type: ignore[attr-defined]

_SKEW = "COALESCE((SELECT skew_us FROM eip_clock WHERE id = 1), 0)"


class db_now(FunctionElement[Any]):
    """The database's own clock (UTC) plus the shared skew, plus ``offset_us`` µs: the one lease clock.

    Every process that claims, renews or judges a lease reads time here, in the statement itself, so a
    process whose own clock is skewed cannot take a live lease. ``eip_clock.skew_us`` (0 in production)
    moves this clock for every process at once (tests: ``Store.lease_clock.advance``). Rendered per dialect
    in the column's storage form (SQLite: ``YYYY-MM-DD HH:MM:SS.ffffff`` text).
    """

    type = UTCDateTime()
    inherit_cache = True
    name = "db_now"

    def __init__(self, offset_us: ColumnElement[Any] | None = None) -> None:
        super().__init__(offset_us if offset_us is not None else sa.literal(0))


def _offset(element: db_now, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(next(iter(element.clauses)), **kw))


@compiles(db_now, "sqlite")
def _db_now_sqlite(element: db_now, compiler: Any, **kw: Any) -> str:
    # strftime's %f has milliseconds: pad to the 6 digits SQLAlchemy stores, so text comparison is time order.
    return (f"(strftime('%Y-%m-%d %H:%M:%f', 'now', (({_SKEW} + {_offset(element, compiler, **kw)}) / 1000000.0) "
            f"|| ' seconds') || '000')")


@compiles(db_now, "postgresql")
def _db_now_pg(element: db_now, compiler: Any, **kw: Any) -> str:
    return (f"((clock_timestamp() AT TIME ZONE 'UTC') + make_interval(secs => "
            f"({_SKEW} + {_offset(element, compiler, **kw)}) / 1000000.0))")


@compiles(db_now, "mysql")
@compiles(db_now, "mariadb")
def _db_now_mysql(element: db_now, compiler: Any, **kw: Any) -> str:
    return f"(UTC_TIMESTAMP(6) + INTERVAL ({_SKEW} + {_offset(element, compiler, **kw)}) MICROSECOND)"


@compiles(db_now)
def _db_now_default(element: db_now, compiler: Any, **kw: Any) -> str:  # pragma: no cover - other dialects
    raise sa.exc.CompileError(f"eipflow's lease clock has no rendering for dialect {compiler.dialect.name!r}")


def _same(value: Any) -> Any:
    return value


def _cas_where(pred_cols: tuple[str, ...]) -> list[Any]:
    where = [EIP.c.uuid == sa.bindparam("w_uuid"), EIP.c.version == sa.bindparam("w_version")]
    for c in pred_cols:
        # work_id may be NULL (a stable row): compare it null-safely (IS / <=> / IS NOT DISTINCT FROM).
        col, value = EIP.c[c], sa.bindparam(f"w_{c}")  # type: ignore[var-annotated]
        where.append(col.is_not_distinct_from(value) if c == "work_id" else col == value)
    return where


def eip_cas_update(set_cols: tuple[str, ...], pred_cols: tuple[str, ...] = ()) -> Any:
    """``UPDATE eip SET <s_col…> WHERE uuid = :w_uuid AND version = :w_version [AND col = :w_col…]``."""
    return EIP.update().where(*_cas_where(pred_cols)).values({c: sa.bindparam(f"s_{c}") for c in set_cols})


def eip_cas_delete(pred_cols: tuple[str, ...] = ()) -> Any:
    """``DELETE FROM eip WHERE uuid = :w_uuid AND version = :w_version [AND col = :w_col…]``."""
    return EIP.delete().where(*_cas_where(pred_cols))


def due_conditions(now: Any) -> tuple[Any, Any]:
    """What makes an item claimable, as two conditions that each scan the ``(status, due_at)`` index in order:
    running with an expired lease (few: at most one per busy worker), and pending and due.

    A lease is judged on the shared lease clock (:class:`db_now`), never the claimer's; ``now`` (the
    claimer's clock) only decides when a pending item's backoff is over — early or late, that is never
    unsafe."""
    return (
        sa.and_(WORK.c.status == "running", WORK.c.lease_expires_at < db_now()),
        sa.and_(WORK.c.status == "pending", WORK.c.due_at <= now),
    )


def due_picks(limit: Any) -> list[Any]:
    """``SELECT id`` of claimable items, one statement per :func:`due_conditions` branch, in claim order."""
    return [
        sa.select(WORK.c.id).where(cond).order_by(WORK.c.due_at, WORK.c.id).limit(limit)
        for cond in due_conditions(sa.bindparam("now"))
    ]


def work_claim(*, many: bool = False) -> Any:
    """Lease one item: ``UPDATE eip_work SET status='running', lease… WHERE id AND (due pending OR lease expired)``.

    The lease runs until the shared clock's now + ``:s_lease_us`` µs. With ``many``, the items whose ids
    are in the expanding ``:ids`` list.
    """
    which = WORK.c.id.in_(sa.bindparam("ids", expanding=True)) if many else WORK.c.id == sa.bindparam("w_id")
    return (
        WORK.update()
        .where(
            which,
            sa.or_(*due_conditions(sa.bindparam("w_now"))),
        )
        .values(
            status="running",
            lease_owner=sa.bindparam("s_owner"),
            lease_expires_at=db_now(sa.bindparam("s_lease_us", type_=sa.BigInteger)),
            attempts=WORK.c.attempts + 1,
            updated_at=sa.bindparam("s_now"),
        )
    )


def lease_extend(*, many: bool = False) -> Any:
    """Renew a lease we hold: ``… SET lease_expires_at = <shared clock> + :s_lease_us WHERE id, owner, running``.

    With ``many``, the leases of the items whose ids are in the expanding ``:ids`` list."""
    which = WORK.c.id.in_(sa.bindparam("ids", expanding=True)) if many else WORK.c.id == sa.bindparam("w_id")
    return (
        WORK.update()
        .where(which, WORK.c.lease_owner == sa.bindparam("w_owner"), WORK.c.status == "running")
        .values(lease_expires_at=db_now(sa.bindparam("s_lease_us", type_=sa.BigInteger)),
                updated_at=sa.bindparam("s_now"))
    )


def history_params(plan: Any, at: Any) -> dict[str, Any]:
    """The history row a planned transition writes (``at`` already in the form the executor binds)."""
    return {
        "eip_uuid": plan.eip.uuid,
        "event": plan.event,
        "from_state": plan.eip.state,
        "to_state": plan.target,
        "version": plan.eip.version + 1,
        "actor": plan.actor,
        "op_id": plan.op_id,
        "at": at,
        "details": json.dumps(plan.details, sort_keys=True, default=str) if plan.details else None,
    }


#: Set by :mod:`eipflow.otel` while tracing is installed: the current trace context as text, stored on every
#: work item created in it (``None``: no tracing, nothing stored). The core never imports OpenTelemetry.
trace_carrier: Callable[[], str | None] | None = None


def work_params(eip_uuid: str, work: Any, now: datetime, out: Callable[[Any], Any] = _same) -> dict[str, Any]:
    """The work-item row a :class:`~eipflow.store.NewWork` inserts; ``out`` converts datetimes for the executor."""
    stamp = out(now)
    return {
        "eip_uuid": eip_uuid,
        "action": work.action,
        "vip": work.vip,
        "vm_nic_uuid": work.vm_nic_uuid,
        "guest_ip": work.guest_ip,
        "host_uuid": work.host_uuid,
        "status": "pending",
        "attempts": 0,
        "due_at": out(work.due_at) if work.due_at else stamp,
        "lease_owner": None,
        "lease_expires_at": None,
        "last_error": None,
        "cleanup": work.cleanup,
        "created_at": stamp,
        "updated_at": stamp,
        "generation": work.generation,
        "trace_context": trace_carrier() if trace_carrier is not None else None,
    }


def aware(raw: Any) -> Any:
    """A datetime column as read — aware already (Core), naive UTC or SQLite text (driver level) — as aware UTC."""
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = datetime.fromisoformat(raw)
    return raw.replace(tzinfo=UTC)


def vm_facts(*, shared: bool = False, many: bool = False) -> Any:
    """``SELECT`` a VM's recorded facts (:func:`vm_of` reads the row) by ``:u`` (``many``: the expanding
    ``:us``); ``shared``: under a share lock (a chained plan's decision; not on SQLite, which has no such lock)."""
    which = VM.c.uuid.in_(sa.bindparam("us", expanding=True)) if many else VM.c.uuid == sa.bindparam("u")
    stmt = sa.select(VM.c.uuid, VM.c.host_uuid, VM.c.running, VM.c.updated_at, VM.c.version).where(which)
    return stmt.with_for_update(read=True) if shared else stmt


def vm_of(row: Any) -> Vm:
    """A :func:`vm_facts` row as the :class:`Vm` callers get (from either execution path)."""
    return Vm(row[0], row[1], bool(row[2]), aware(row[3]), row[4])


def work_item(m: Mapping[str, Any]) -> WorkItem:
    """A work-item row (column name → value, datetimes already aware) as the :class:`WorkItem` callers get."""
    spec = None
    if m["host_uuid"] is not None:
        spec = EipSpec(m["eip_uuid"], m["vip"], m["vm_nic_uuid"], m["guest_ip"], m["host_uuid"], m["generation"] or 0)
    return WorkItem(
        id=m["id"], eip_uuid=m["eip_uuid"], action=m["action"], spec=spec, status=m["status"],
        attempts=m["attempts"], due_at=m["due_at"], lease_owner=m["lease_owner"],
        lease_expires_at=m["lease_expires_at"], last_error=m["last_error"], cleanup=bool(m["cleanup"]),
        created_at=m["created_at"], updated_at=m["updated_at"], trace_context=m.get("trace_context"),
    )

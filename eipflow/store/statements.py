"""The version-checked statements and the rows they write, built once for both execution paths (Core, driver)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ..values import EipSpec, WorkItem
from .schema import EipRow, WorkRow

__all__ = [
    "due_conditions", "due_picks", "eip_cas_delete", "eip_cas_update", "history_params", "work_claim", "work_item",
    "work_params",
]

EIP = EipRow.__table__  # type: ignore[attr-defined]
WORK = WorkRow.__table__  # type: ignore[attr-defined]


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
    running with an expired lease (few: at most one per busy worker), and pending and due."""
    return (
        sa.and_(WORK.c.status == "running", WORK.c.lease_expires_at < now),
        sa.and_(WORK.c.status == "pending", WORK.c.due_at <= now),
    )


def due_picks(limit: Any) -> list[Any]:
    """``SELECT id`` of claimable items, one statement per :func:`due_conditions` branch, in claim order."""
    return [
        sa.select(WORK.c.id).where(cond).order_by(WORK.c.due_at, WORK.c.id).limit(limit)
        for cond in due_conditions(sa.bindparam("now"))
    ]


def work_claim() -> Any:
    """Lease one item: ``UPDATE eip_work SET status='running', lease… WHERE id AND (due pending OR lease expired)``."""
    return (
        WORK.update()
        .where(
            WORK.c.id == sa.bindparam("w_id"),
            sa.or_(*due_conditions(sa.bindparam("w_now"))),
        )
        .values(
            status="running",
            lease_owner=sa.bindparam("s_owner"),
            lease_expires_at=sa.bindparam("s_expires"),
            attempts=WORK.c.attempts + 1,
            updated_at=sa.bindparam("s_now"),
        )
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
    }


def work_item(m: Mapping[str, Any]) -> WorkItem:
    """A work-item row (column name → value, datetimes already aware) as the :class:`WorkItem` callers get."""
    spec = None
    if m["host_uuid"] is not None:
        spec = EipSpec(m["eip_uuid"], m["vip"], m["vm_nic_uuid"], m["guest_ip"], m["host_uuid"])
    return WorkItem(
        id=m["id"], eip_uuid=m["eip_uuid"], action=m["action"], spec=spec, status=m["status"],
        attempts=m["attempts"], due_at=m["due_at"], lease_owner=m["lease_owner"],
        lease_expires_at=m["lease_expires_at"], last_error=m["last_error"], cleanup=bool(m["cleanup"]),
        created_at=m["created_at"], updated_at=m["updated_at"],
    )

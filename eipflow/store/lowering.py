"""The one lowering: a planned transition (or a batch of them) as the ordered statements that write it.

The runner decides *what* a transition writes (:class:`~eipflow.store.PlannedTransition`); this module
says *how*, once, for both executors — the Core path (:class:`~eipflow.store.Store`) and the driver path
(:mod:`eipflow.store.fastpath`):

- :func:`lower` turns one plan into statements in order: finish the leased item, update it in place,
  insert the next item, compare-and-swap the EIP row, insert its history row. :func:`lower_many` does the
  same for a batch (one executemany per statement kind). Each :class:`Statement` names its SQL by a key
  (:func:`statement` builds it, every executor compiles it once), carries its parameters (Python values:
  each executor binds them through the column types), and the row count it must match.
- :func:`check` is the one row-count check: a compare-and-swap that matched nothing raises
  :class:`CasLost` (reload and decide again), a lease that is not ours any more raises
  :class:`~eipflow.store.LeaseLost`.
- :func:`written` is the row as the statements leave it; :func:`execute` runs a plan through an executor's
  ``run`` and follows its :class:`~eipflow.store.ChainLease` (the inline flows' lease and second step).

An executor is only ``run(statements) -> {eip uuid: new work id}`` (execute in order, :func:`check` each,
give the next statements the ids inserted before them) and ``read_vm(uuid)`` (the VM's facts under a share
lock). Nothing here opens a transaction or touches a connection.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa

from ..values import Eip, Vm
from .schema import EipRow, TransitionRow, WorkRow
from .statements import eip_cas_delete, eip_cas_update, history_params, work_claim, work_params

__all__ = [
    "CasLost", "Statement", "check", "claim", "execute", "lower", "lower_many", "statement", "written",
]

EIP = EipRow.__table__  # type: ignore[attr-defined]
HISTORY = TransitionRow.__table__  # type: ignore[attr-defined]
WORK = WorkRow.__table__  # type: ignore[attr-defined]
EIP_COLS = tuple(c.name for c in EIP.columns)
HISTORY_COLS = tuple(c.name for c in HISTORY.columns if c.name != "id")
WORK_COLS = tuple(c.name for c in WORK.columns if c.name != "id")
_EIP_VALUES = operator.attrgetter(*EIP_COLS)
_EIP_INDEX = {c: i for i, c in enumerate(EIP_COLS)}
_FINISHED = {"status": "done", "lease_owner": None, "lease_expires_at": None}


class CasLost(Exception):
    """A compare-and-swap matched no row: nothing of the transaction may stay (reload and decide again)."""


class Statement(NamedTuple):
    """One statement of a lowered plan (a named tuple: built several times per transition, on the hot path).

    Attributes:
        key: names the SQL (:func:`statement` builds it; executors compile it once per key).
        params: its parameters (a list: executemany), as Python values.
        expect: the rows it must match (``None``: not checked).
        lease: the work item a mismatch is about (``None``: a mismatch is a lost compare-and-swap).
        makes_work_id: it inserts work items; each param's ``eip_uuid`` gets the new item's id.
        needs_work_id: each param's ``s_work_id`` is the id of the item just inserted for its ``w_uuid``.
    """

    key: tuple[Any, ...]
    params: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    expect: int | None = None
    lease: int | None = None
    makes_work_id: bool = False
    needs_work_id: bool = False


def check(stmt: Statement, rowcount: int) -> None:
    """The one row-count check of every executor."""
    if stmt.expect is None or rowcount == stmt.expect:
        return
    if stmt.lease is not None:
        from .fastpath import LeaseLost

        raise LeaseLost(stmt.lease)
    raise CasLost


@functools.cache
def statement(key: tuple[Any, ...]) -> Any:
    """The Core statement a :class:`Statement` key names — the one home of eipflow's write SQL."""
    kind = key[0]
    if kind == "update_eip":
        return eip_cas_update(key[1], key[2])
    if kind == "delete_eip":
        return eip_cas_delete(key[1])
    if kind == "insert_history":
        return HISTORY.insert().values({c: sa.bindparam(c) for c in HISTORY_COLS})
    if kind == "insert_work":
        return WORK.insert().values({c: sa.bindparam(c) for c in WORK_COLS})
    if kind == "update_work":  # the leased item: fenced by its id, owner and status
        return (
            WORK.update()
            .where(WORK.c.id == sa.bindparam("w_id"), WORK.c.lease_owner == sa.bindparam("w_owner"),
                   WORK.c.status == "running")
            .values({c: sa.bindparam(f"s_{c}") for c in key[1]})
        )
    if kind == "claim":
        return work_claim()
    raise ValueError(f"no statement {key!r}")


def _work_update(work_id: int, owner: str, values: Mapping[str, Any], now: datetime) -> Statement:
    cols = tuple(sorted({*values, "updated_at"}))
    params = {"w_id": work_id, "w_owner": owner, "s_updated_at": now, **{f"s_{c}": v for c, v in values.items()}}
    return Statement(("update_work", cols), params, expect=1, lease=work_id)


def _eip_change(
    plan: Any, now: datetime, guard: Mapping[str, Any] | None = None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The EIP row's compare-and-swap: its statement key and parameters (``guard``: extra predicates)."""
    eip = plan.eip
    params: dict[str, Any] = {"w_uuid": eip.uuid, "w_version": eip.version}
    predicates = {**plan.predicates, **guard} if guard else plan.predicates
    for c, v in predicates.items():
        params[f"w_{c}"] = v
    pred_cols = tuple(sorted(predicates))
    if plan.target == "deleted":
        return ("delete_eip", pred_cols), params
    changes = dict(plan.changes)
    changes.update(state=plan.target, version=eip.version + 1, updated_at=now)
    if plan.new_work is not None:
        changes["work_id"] = None  # filled in by the executor with the item inserted before
    for c, v in changes.items():
        params[f"s_{c}"] = v
    return ("update_eip", tuple(sorted(changes)), pred_cols), params


def lower(plan: Any, now: datetime, guard: Mapping[str, Any] | None = None) -> list[Statement]:
    """The statements that write one planned transition, in order (``guard``: predicates the executor adds,
    e.g. the work item of a cached row)."""
    out: list[Statement] = []
    if plan.finish_work is not None:
        out.append(_work_update(plan.finish_work.work_id, plan.finish_work.owner, _FINISHED, now))
    if plan.update_work is not None:
        out.append(_work_update(plan.update_work.work_id, plan.update_work.owner, plan.update_work.values, now))
    if plan.new_work is not None:
        out.append(Statement(("insert_work",), work_params(plan.eip.uuid, plan.new_work, now), makes_work_id=True))
    key, params = _eip_change(plan, now, guard)
    out.append(Statement(key, params, expect=1, needs_work_id=plan.new_work is not None))
    out.append(Statement(("insert_history",), history_params(plan, now)))
    return out


def lower_many(plans: Sequence[Any], now: datetime) -> list[Statement]:
    """The statements that write many transitions (distinct EIPs) together: one per statement kind and shape.

    Each plan is fenced exactly as :func:`lower` fences it (a group's row count is the sum of its plans').
    """
    if len({p.eip.uuid for p in plans}) != len(plans):
        raise ValueError("a batch takes one plan per EIP")
    out: list[Statement] = []
    finished = [p.finish_work for p in plans if p.finish_work is not None]
    if finished:
        cols = tuple(sorted({*_FINISHED, "updated_at"}))
        out.append(Statement(("update_work", cols), [
            {"w_id": f.work_id, "w_owner": f.owner, "s_updated_at": now, **{f"s_{c}": v for c, v in _FINISHED.items()}}
            for f in finished], expect=len(finished), lease=finished[0].work_id))
    updates: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for p in plans:
        if p.update_work is not None:
            stmt = _work_update(p.update_work.work_id, p.update_work.owner, p.update_work.values, now)
            updates.setdefault(stmt.key[1], []).append(dict(stmt.params))  # type: ignore[arg-type]
    for cols, batch in updates.items():
        out.append(Statement(("update_work", cols), batch, expect=len(batch), lease=batch[0]["w_id"]))
    rows = [work_params(p.eip.uuid, p.new_work, now) for p in plans if p.new_work is not None]
    if rows:
        out.append(Statement(("insert_work",), rows, makes_work_id=True))
    groups: dict[tuple[tuple[Any, ...], bool], list[dict[str, Any]]] = {}
    for p in plans:
        key, params = _eip_change(p, now)
        groups.setdefault((key, p.new_work is not None), []).append(params)
    for (key, needs), batch in groups.items():
        out.append(Statement(key, batch, expect=len(batch), needs_work_id=needs))
    out.append(Statement(("insert_history",), [history_params(p, now) for p in plans]))
    return out


def claim(work_id: int, owner: str, lease_us: int, now: datetime) -> Statement:
    """Lease one item (the claim's compare-and-swap): the inline flows' lease of the item they just created."""
    return Statement(("claim",), {"w_id": work_id, "w_now": now, "s_owner": owner, "s_lease_us": lease_us,
                                  "s_now": now}, expect=1, lease=work_id)


def written(plan: Any, now: datetime, work_id: int | None) -> Eip:
    """The row as :func:`lower`'s statements leave it (``state == "deleted"`` for a deleted row)."""
    values = list(_EIP_VALUES(plan.eip))  # positional: Eip's fields follow the table's columns (checked in store)
    index = _EIP_INDEX
    for c, v in plan.changes.items():
        values[index[c]] = v
    if plan.new_work is not None:
        values[index["work_id"]] = work_id
    values[index["state"]] = plan.target
    values[index["version"]] = plan.eip.version + 1
    values[index["updated_at"]] = now
    return Eip(*values)


Run = Callable[[Sequence[Statement]], Mapping[str, int]]


def execute(plan: Any, now: datetime, run: Run, read_vm: Callable[[str], Vm | None],
            guard: Mapping[str, Any] | None = None) -> Eip:
    """Write ``plan`` with an executor's ``run`` and follow its :class:`~eipflow.store.ChainLease`.

    Raises :class:`CasLost` or :class:`~eipflow.store.LeaseLost` (from :func:`check`): the caller rolls
    the transaction back. ``guard``: extra predicates on the first plan's row (see :func:`lower`).
    """
    ids = run(lower(plan, now, guard))
    row = written(plan, now, ids.get(plan.eip.uuid))
    chain = plan.chain
    if chain is None or row.work_id is None or plan.new_work is None:
        return row
    nxt = chain.then(row, lambda: read_vm(row.vm_uuid) if row.vm_uuid is not None else None)
    if nxt is None or nxt is False:
        return row
    run([claim(row.work_id, chain.owner, round(chain.lease_seconds * 1_000_000), now)])
    if nxt is True:
        return row
    return execute(nxt, now, run, read_vm)

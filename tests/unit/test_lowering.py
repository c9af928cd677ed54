"""The one lowering (eipflow.store.lowering): what a planned transition writes, in which order, fenced how —
checked without a database; the executors that run it are checked against each other in tests/db."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from eipflow.store import ChainLease, LeasedWork, LeaseLost, NewWork, PlannedTransition, WorkUpdate
from eipflow.store.lowering import (
    CasLost,
    Statement,
    check,
    execute,
    lower,
    lower_many,
    statement,
    written,
)
from eipflow.values import Eip, Vm

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)


def _row(uuid: str = "00000000-0000-4000-8000-0000000000ef", state: str = "attached", version: int = 5,
         work_id: int | None = None) -> Eip:
    return Eip(uuid, None, "203.0.113.7", state, version, "attached", "nic-1", "10.0.0.7", "vm-1", "h1", "h1", True,
               work_id, None, T0, T0)


def _new_work() -> NewWork:
    return NewWork("revoke", "203.0.113.7", "nic-1", "10.0.0.7", "h1", generation=6)


def test_an_intent_is_a_version_checked_update_and_its_history_row() -> None:
    plan = PlannedTransition(_row(state="applying", work_id=3), "detach", "applying", {"desired": "detached"})
    stmts = lower(plan, T1)
    assert [s.key[0] for s in stmts] == ["update_eip", "insert_history"]
    update = stmts[0]
    assert update.key == ("update_eip", ("desired", "state", "updated_at", "version"), ())
    assert update.expect == 1 and update.lease is None  # a mismatch is a lost compare-and-swap
    assert update.params["w_version"] == 5 and update.params["s_version"] == 6
    assert stmts[1].params["version"] == 6 and stmts[1].params["from_state"] == "applying"


def test_a_completion_finishes_its_leased_item_first_and_inserts_the_next() -> None:
    plan = PlannedTransition(_row(state="applying", work_id=3), "apply_ok", "releasing", {"host_uuid": None},
                             new_work=_new_work(), finish_work=LeasedWork(3, "me"))
    stmts = lower(plan, T1)
    assert [s.key[0] for s in stmts] == ["update_work", "insert_work", "update_eip", "insert_history"]
    finish, insert, update, _ = stmts
    assert (finish.expect, finish.lease) == (1, 3)  # fenced by the item's id and owner: LeaseLost otherwise
    assert finish.params["w_owner"] == "me" and finish.params["s_status"] == "done"
    assert insert.makes_work_id and insert.params["generation"] == 6 and insert.params["status"] == "pending"
    assert update.needs_work_id and "work_id" in update.key[1]


def test_a_conditional_rollback_and_a_delete_carry_their_predicates() -> None:
    rollback = PlannedTransition(_row(state="rolling_back", work_id=4), "revoke_ok", "detached",
                                 {"vm_nic_uuid": None, "guest_ip": None, "work_id": None},
                                 predicates={"vm_nic_uuid": "nic-1", "guest_ip": "10.0.0.7"})
    (update, _) = lower(rollback, T1)
    assert update.key[2] == ("guest_ip", "vm_nic_uuid") and update.params["w_vm_nic_uuid"] == "nic-1"
    delete = PlannedTransition(_row(state="detaching", work_id=4), "revoke_ok", "deleted", {},
                               finish_work=LeasedWork(4, "me"))
    assert [s.key[0] for s in lower(delete, T1)] == ["update_work", "delete_eip", "insert_history"]
    assert written(delete, T1, None).state == "deleted"


def test_an_in_place_work_update_is_fenced_by_the_lease() -> None:
    plan = PlannedTransition(_row(state="applying", work_id=3), "apply_failed", "applying", {"last_error": "x"},
                             update_work=WorkUpdate(3, "me", {"status": "pending", "due_at": T1}))
    (work, _, _) = lower(plan, T1)
    assert work.key == ("update_work", ("due_at", "status", "updated_at")) and work.lease == 3


def test_the_row_as_written_follows_the_plan() -> None:
    plan = PlannedTransition(_row(), "detach", "detaching", {"desired": "detached"}, new_work=_new_work())
    row = written(plan, T1, 77)
    assert (row.state, row.version, row.desired, row.work_id, row.updated_at) == ("detaching", 6, "detached", 77, T1)
    assert row.vm_nic_uuid == "nic-1" and row.created_at == T0


def test_check_tells_a_lost_compare_and_swap_from_a_lost_lease() -> None:
    check(Statement(("update_eip", (), ()), {}, expect=1), 1)
    check(Statement(("insert_history",), {}), 0)  # unchecked
    with pytest.raises(CasLost):
        check(Statement(("update_eip", (), ()), {}, expect=1), 0)
    with pytest.raises(LeaseLost):
        check(Statement(("update_work", ()), {}, expect=1, lease=9), 0)


def test_a_batch_is_one_statement_per_kind_and_shape() -> None:
    plans = [PlannedTransition(_row(uuid=f"00000000-0000-4000-8000-00000000000{i}", work_id=i), "vm_stopped",
                               "releasing", {"host_uuid": None}, new_work=_new_work(), finish_work=None)
             for i in range(1, 5)]
    plans.append(PlannedTransition(_row(uuid="00000000-0000-4000-8000-000000000009", state="applying", work_id=9),
                                   "apply_ok", "attached", {"work_id": None}, finish_work=LeasedWork(9, "me")))
    stmts = lower_many(plans, T1)
    kinds = [s.key[0] for s in stmts]
    assert kinds == ["update_work", "insert_work", "update_eip", "update_eip", "insert_history"]
    assert len(stmts[1].params) == 4 and stmts[2].expect == 4 and stmts[2].needs_work_id
    assert stmts[3].expect == 1 and not stmts[3].needs_work_id  # same columns, no new item: its own group
    assert len(stmts[-1].params) == 5
    with pytest.raises(ValueError, match="one plan per EIP"):
        lower_many([plans[0], plans[0]], T1)


def test_every_statement_key_builds_sql() -> None:
    plan = PlannedTransition(_row(state="applying", work_id=3), "apply_ok", "releasing", {"host_uuid": None},
                             new_work=_new_work(), finish_work=LeasedWork(3, "me"))
    dialect = sa.create_engine("sqlite://").dialect
    for st in lower(plan, T1):
        assert str(statement(st.key).compile(dialect=dialect))
    assert "UPDATE eip_work" in str(statement(("claim",)).compile(dialect=dialect))
    with pytest.raises(ValueError, match="no statement"):
        statement(("drop_everything",))


def test_a_chain_leases_the_new_item_and_writes_the_next_plan() -> None:
    """execute(): the first plan's statements, the VM read only when the next step asks, the claim, the next."""
    ran: list[list[Statement]] = []
    vm_reads: list[str] = []

    def run(stmts: Any) -> dict[str, int]:
        ran.append(list(stmts))
        return {"00000000-0000-4000-8000-0000000000ef": 41} if any(s.makes_work_id for s in stmts) else {}

    def read_vm(uuid: str) -> Vm | None:
        vm_reads.append(uuid)
        return Vm(uuid, "h1", True, T0, 1)

    seen: list[tuple[str, Vm | None]] = []

    def then(row: Eip, vm: Any) -> PlannedTransition | bool | None:
        seen.append((row.state, vm()))
        return PlannedTransition(row, "proceed", "applying", {"applied_host": "h1"},
                                 update_work=WorkUpdate(41, "me", {"host_uuid": "h1", "generation": 7}))

    first = PlannedTransition(_row(state="detached", version=5), "attach", "binding", {"desired": "attached"},
                              new_work=NewWork("apply", "203.0.113.7", "nic-1", "10.0.0.7", None),
                              chain=ChainLease("me", 30, then))
    row = execute(first, T1, run, read_vm)
    assert (row.state, row.version, row.work_id) == ("applying", 7, 41)
    assert seen == [("binding", Vm("vm-1", "h1", True, T0, 1))] and vm_reads == ["vm-1"]
    assert [[s.key[0] for s in batch] for batch in ran] == [
        ["insert_work", "update_eip", "insert_history"], ["claim"], ["update_work", "update_eip", "insert_history"]]
    assert ran[1][0].params["s_lease_us"] == 30_000_000 and ran[1][0].lease == 41

    lease_only = PlannedTransition(_row(), "detach", "detaching", {}, new_work=_new_work(),
                                   chain=ChainLease("me", 30, lambda row, vm: True))
    ran.clear()
    assert execute(lease_only, T1, run, read_vm).state == "detaching"
    assert [[s.key[0] for s in batch] for batch in ran] == [
        ["insert_work", "update_eip", "insert_history"], ["claim"]]
    assert vm_reads == ["vm-1"]  # a lease-only step never reads the VM

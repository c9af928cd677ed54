"""VM events release many EIPs with batched statements, and fall back safely when a row moved."""

from __future__ import annotations

import collections

import sqlalchemy as sa

from eipflow import Eipflow, InMemoryDataplane
from eipflow.invariants import check


def _attached(flow: Eipflow, n: int, vm: str = "vm-1") -> list[str]:
    uuids = []
    for i in range(n):
        eip = flow.create_eip(f"198.51.100.{i + 1}")
        flow.attach(eip.uuid, nic=f"nic-{i}", guest_ip=f"10.0.0.{i + 1}", vm=vm, host="h1")
        uuids.append(eip.uuid)
    return uuids


def test_vm_stop_records_all_releases_in_one_batch(flow: Eipflow, backend: InMemoryDataplane) -> None:
    uuids = _attached(flow, 20)
    statements: collections.Counter[str] = collections.Counter()

    def count(conn: object, cursor: object, statement: str, params: object, context: object, many: bool) -> None:
        verb = " ".join(statement.split()[:3])
        if verb.startswith(("UPDATE eip SET", "INSERT INTO eip_transition")):
            statements[verb] += 1

    sa.event.listen(flow.store.engine, "before_cursor_execute", count)
    try:
        released = flow.vm_stopped("vm-1", wait=False)
    finally:
        sa.event.remove(flow.store.engine, "before_cursor_execute", count)
    assert sorted(e.uuid for e in released) == sorted(uuids)
    assert {e.state for e in released} == {"releasing"}
    # One UPDATE and one history INSERT for all 20 EIPs, not 20 of each.
    assert statements == {"UPDATE eip SET": 1, "INSERT INTO eip_transition": 1}
    assert all(flow.get_eip(u).state == "releasing" for u in uuids)
    assert flow.run_due() == 20
    assert {e.state for e in flow.list_eips()} == {"released"} and backend.rules() == []
    assert check(flow.store, backend) == []


def test_batch_with_a_stale_row_rolls_back_and_goes_one_by_one(flow: Eipflow, backend: InMemoryDataplane) -> None:
    uuids = _attached(flow, 3)
    flow.store.record_vm("vm-1", None, running=False)  # what vm_stopped records first
    rows = flow.store.eips(vm_uuid="vm-1")  # read ...
    flow.detach(uuids[1])  # ... then one row moves (detached, unbound)

    def placement(row: object) -> dict[str, object]:
        from eipflow.runner import NotApplicable

        if getattr(row, "vm_uuid", None) != "vm-1":
            raise NotApplicable("rebound")
        return {"host_uuid": None}

    fired = flow.runner.fire_many(rows, "vm_stopped", placement)
    assert sorted(e.uuid for e in fired) == sorted([uuids[0], uuids[2]])
    assert flow.get_eip(uuids[1]).state == "detached"  # not released by a stale batch
    flow.run_due()
    assert [flow.get_eip(u).state for u in uuids] == ["released", "detached", "released"]
    assert check(flow.store, backend) == []

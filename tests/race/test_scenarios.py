"""The race and fault catalogue (shared/domain.md), forced with gates and barriers — never sleeps.

Each test asserts the database row, its history and the dataplane, on every configured database.
"""

from __future__ import annotations

import threading

import pytest

from eipflow import (
    AttachFailed,
    ConflictError,
    Eip,
    Eipflow,
    GuestIpInUse,
    IllegalTransition,
    InMemoryDataplane,
    ManualClock,
    SimulatedDataplane,
)
from eipflow.invariants import check
from tests._support import Call

VIP, VIP2 = "203.0.113.10", "203.0.113.11"


def events(flow: Eipflow, uuid: str) -> list[tuple[str, str, str]]:
    return [(r.event, r.from_state, r.to_state) for r in flow.history(uuid)]


def rules(backend: InMemoryDataplane) -> set[tuple[str, str, str]]:
    return {(r.host_uuid, r.eip_uuid, r.guest_ip) for r in backend.rules()}


def attach(flow: Eipflow, eip: Eip, *, nic: str = "nic-1", ip: str = "10.0.0.5", vm: str = "vm-1",
           host: str = "h1") -> Eip:
    return flow.attach(eip.uuid, nic=nic, guest_ip=ip, vm=vm, host=host)


def test_s1_happy_attach(flow: Eipflow, backend: InMemoryDataplane) -> None:
    eip = flow.create_eip(VIP)
    done = attach(flow, eip)
    assert (done.state, done.applied_host, done.vm_nic_uuid, done.guest_ip) == ("attached", "h1", "nic-1", "10.0.0.5")
    assert rules(backend) == {("h1", eip.uuid, "10.0.0.5")}
    assert events(flow, eip.uuid) == [
        ("create", "", "detached"),
        ("attach", "detached", "binding"),
        ("proceed", "binding", "applying"),
        ("apply_ok", "applying", "attached"),
    ]
    assert [r.version for r in flow.history(eip.uuid)] == [1, 2, 3, 4]
    assert check(flow.store, backend) == []


def test_s2_attach_to_stopped_vm_binds_without_dataplane_then_start_applies(
    flow: Eipflow, backend: InMemoryDataplane
) -> None:
    eip = flow.create_eip(VIP)
    flow.vm_stopped("vm-1")  # a VM eipflow has never seen: the fact is recorded
    done = attach(flow, eip)
    assert (done.state, done.vm_nic_uuid, done.applied_host) == ("released", "nic-1", None)
    assert backend.calls == []
    [started] = flow.vm_started("vm-1", "h2")
    assert (started.state, started.applied_host) == ("attached", "h2")
    assert rules(backend) == {("h2", eip.uuid, "10.0.0.5")}
    assert check(flow.store, backend) == []


def test_s3_vm_stop_during_blocked_apply_revokes_after_apply_returns(
    flow: Eipflow, backend: InMemoryDataplane
) -> None:
    eip = flow.create_eip(VIP)
    gate = backend.faults.block("apply", eip_uuid=eip.uuid)
    attaching = Call(lambda: attach(flow, eip))
    attaching.start()
    gate.wait_entered()
    # The binding is visible to the release path while the backend call is in flight.
    mid = flow.get_eip(eip.uuid)
    assert (mid.state, mid.vm_nic_uuid, mid.guest_ip, mid.applied_host) == ("applying", "nic-1", "10.0.0.5", "h1")
    stopped = flow.vm_stopped("vm-1")  # returns promptly: the in-flight work belongs to the attach
    assert [(e.state, e.host_uuid) for e in stopped] == [("applying", None)]
    gate.release()
    final = attaching.outcome()
    assert (final.state, final.vm_nic_uuid, final.guest_ip) == ("released", "nic-1", "10.0.0.5")
    assert final.applied_host is None
    assert rules(backend) == set()
    assert [(c.action, c.spec.host_uuid) for c in backend.calls] == [("apply", "h1"), ("revoke", "h1")]
    assert events(flow, eip.uuid)[-4:] == [
        ("proceed", "binding", "applying"),
        ("vm_stopped", "applying", "applying"),
        ("apply_ok", "applying", "releasing"),
        ("revoke_ok", "releasing", "released"),
    ]
    assert check(flow.store, backend) == []


def test_s4_apply_failure_rolls_back_the_early_binding(flow: Eipflow, backend: InMemoryDataplane) -> None:
    eip = flow.create_eip(VIP)
    backend.faults.fail("apply")
    with pytest.raises(AttachFailed) as info:
        attach(flow, eip)
    assert info.value.state == "detached" and "simulated apply failure" in info.value.error
    row = flow.get_eip(eip.uuid)
    assert (row.state, row.vm_nic_uuid, row.guest_ip, row.applied_host) == ("detached", None, None, None)
    assert "simulated apply failure" in (row.last_error or "")
    assert [c.action for c in backend.calls] == ["apply", "revoke"]  # the partial apply is revoked, idempotently
    assert rules(backend) == set()
    assert events(flow, eip.uuid)[-2:] == [("apply_failed", "applying", "rolling_back"),
                                           ("revoke_ok", "rolling_back", "detached")]
    # The guest IP is free again.
    assert attach(flow, eip).state == "attached"
    assert check(flow.store, backend) == []


def test_s5_late_failure_of_a_fenced_attach_leaves_the_new_binding_alone(db_url: str) -> None:
    """A's apply hangs past its lease; B takes over, the EIP is detached and re-attached elsewhere; then A's
    (zombie) apply reaches the host. The host refuses its old generation, so nothing stray is left; A must
    not roll back B's binding."""
    clock = ManualClock()
    sim_a, sim_b = SimulatedDataplane(), SimulatedDataplane()
    flow_a = Eipflow.open(db_url, sim_a, clock=clock, owner="A", lease_seconds=30)
    flow_b = Eipflow.open(db_url, sim_b, clock=clock, owner="B", lease_seconds=30)
    try:
        eip = flow_a.create_eip(VIP)
        gate = sim_a.faults.block("apply", eip_uuid=eip.uuid)
        sim_a.faults.fail("apply", eip_uuid=eip.uuid, timeout=True)  # applied, but the answer is lost
        attaching = Call(lambda: attach(flow_a, eip))
        attaching.start()
        gate.wait_entered()
        flow_b.store.lease_clock.advance(31)  # A's lease expires (on the shared clock) while its call hangs
        assert flow_b.run_due() == 1
        assert flow_b.get_eip(eip.uuid).state == "attached"
        flow_b.detach(eip.uuid)
        moved = flow_b.attach(eip.uuid, nic="nic-2", guest_ip="10.0.0.6", vm="vm-2", host="h2")
        assert (moved.state, moved.applied_host) == ("attached", "h2")
        gate.release()
        with pytest.raises(ConflictError):
            attaching.outcome()  # A's attach was superseded; it says so instead of claiming success
        row = flow_a.get_eip(eip.uuid)
        assert (row.state, row.vm_nic_uuid, row.guest_ip, row.applied_host) == ("attached", "nic-2", "10.0.0.6", "h2")
        # A's late apply was refused by h1 (B's detach left a newer tombstone there): no rule, no cleanup needed.
        [late] = [c for c in sim_a.calls_for(eip.uuid, "apply") if c.spec.host_uuid == "h1"]
        assert late.outcome == "refused"
        assert flow_a.run_due() == 0
        assert {(r.host_uuid, r.guest_ip) for r in sim_a.rules()} == {("h2", "10.0.0.6")}
        assert "rolling_back" not in {r.to_state for r in flow_a.history(eip.uuid)}
        assert check(flow_a.store, sim_a) == []
    finally:
        flow_a.close()
        flow_b.close()


def test_s6_migration_during_blocked_apply_ends_on_the_new_host_only(flow: Eipflow, backend: InMemoryDataplane) -> None:
    eip = flow.create_eip(VIP)
    gate = backend.faults.block("apply", eip_uuid=eip.uuid, host_uuid="h1")
    attaching = Call(lambda: attach(flow, eip))
    attaching.start()
    gate.wait_entered()
    flow.vm_migrated("vm-1", "h2")
    gate.release()
    final = attaching.outcome()
    assert (final.state, final.applied_host, final.host_uuid) == ("attached", "h2", "h2")
    assert rules(backend) == {("h2", eip.uuid, "10.0.0.5")}
    assert [(c.action, c.spec.host_uuid) for c in backend.calls] == [("apply", "h1"), ("revoke", "h1"), ("apply", "h2")]
    assert check(flow.store, backend) == []


def test_s7_stop_processed_before_the_attach_persists(flow: Eipflow, backend: InMemoryDataplane) -> None:
    eip = flow.create_eip(VIP)
    attach(flow, flow.create_eip(VIP2), nic="nic-0", ip="10.0.0.4")  # vm-1 known running on h1
    flow.vm_stopped("vm-1")
    done = attach(flow, eip)  # --host h1 from a stale read: the recorded stop wins
    assert (done.state, done.applied_host) == ("released", None)
    assert all(c.spec.eip_uuid != eip.uuid for c in backend.calls)
    assert check(flow.store, backend) == []


def test_s8_detach_during_blocked_apply(flow: Eipflow, backend: InMemoryDataplane) -> None:
    eip = flow.create_eip(VIP)
    gate = backend.faults.block("apply", eip_uuid=eip.uuid)
    attaching = Call(lambda: attach(flow, eip))
    attaching.start()
    gate.wait_entered()
    recorded = flow.detach(eip.uuid)
    assert (recorded.state, recorded.desired) == ("applying", "detached")
    gate.release()
    with pytest.raises(ConflictError):
        attaching.outcome()  # the attach was overtaken by the detach
    row = flow.get_eip(eip.uuid)
    assert (row.state, row.vm_nic_uuid) == ("detached", None)
    assert rules(backend) == set()
    assert events(flow, eip.uuid)[-3:] == [("detach", "applying", "applying"), ("apply_ok", "applying", "detaching"),
                                           ("revoke_ok", "detaching", "detached")]
    assert check(flow.store, backend) == []


def test_s8b_detach_during_apply_that_then_fails_is_a_noop_success(flow: Eipflow, backend: InMemoryDataplane) -> None:
    eip = flow.create_eip(VIP)
    gate = backend.faults.block("apply", eip_uuid=eip.uuid)
    backend.faults.fail("apply", eip_uuid=eip.uuid)
    attaching = Call(lambda: attach(flow, eip))
    attaching.start()
    gate.wait_entered()
    flow.detach(eip.uuid)
    gate.release()
    with pytest.raises(AttachFailed):
        attaching.outcome()
    assert flow.get_eip(eip.uuid).state == "detached"
    assert events(flow, eip.uuid)[-2:] == [("apply_failed", "applying", "rolling_back"),
                                           ("revoke_ok", "rolling_back", "detached")]
    assert rules(backend) == set()
    assert check(flow.store, backend) == []


def test_s9_two_attaches_of_one_eip_exactly_one_wins(flow: Eipflow, backend: InMemoryDataplane) -> None:
    eip = flow.create_eip(VIP)
    barrier = threading.Barrier(2)

    def racer(n: int) -> Eip:
        barrier.wait()
        return attach(flow, eip, nic=f"nic-{n}", ip=f"10.0.0.{n}", vm=f"vm-{n}")

    calls = [Call(lambda n=n: racer(n)) for n in (1, 2)]  # type: ignore[misc]
    for c in calls:
        c.start()
    for c in calls:
        c.join(timeout=60)
    winners = [c.result for c in calls if c.error is None]
    losers = [c.error for c in calls if c.error is not None]
    assert len(winners) == 1 and len(losers) == 1
    assert isinstance(losers[0], IllegalTransition)
    winner = winners[0]
    assert winner.state == "attached"
    # The loser never reached the backend.
    assert {c.spec.guest_ip for c in backend.calls} == {winner.guest_ip}
    assert [r.event for r in flow.history(eip.uuid)].count("attach") == 1
    assert check(flow.store, backend) == []


def test_guest_ip_with_an_eip_refuses_a_second_one(flow: Eipflow, backend: InMemoryDataplane) -> None:
    first, second = flow.create_eip(VIP), flow.create_eip(VIP2)
    attach(flow, first)
    with pytest.raises(GuestIpInUse) as info:
        attach(flow, second, nic="nic-9", vm="vm-9")
    assert info.value.holder == first.uuid
    row = flow.get_eip(second.uuid)
    assert (row.state, row.version, row.vm_nic_uuid) == ("detached", 1, None)
    assert all(c.spec.eip_uuid == first.uuid for c in backend.calls)
    assert check(flow.store, backend) == []


def test_s13_timeout_is_treated_as_maybe_applied(flow: Eipflow, backend: InMemoryDataplane) -> None:
    eip = flow.create_eip(VIP)
    backend.faults.fail("apply", timeout=True)  # the rule lands, the answer is lost
    with pytest.raises(AttachFailed):
        attach(flow, eip)
    assert rules(backend) == set()  # revoked by the rollback
    assert check(flow.store, backend) == []


def test_failed_reapply_on_vm_start_keeps_the_binding_and_retries(db_url: str) -> None:
    clock = ManualClock()
    backend = InMemoryDataplane()
    with Eipflow.open(db_url, backend, clock=clock) as flow:
        eip = flow.create_eip(VIP)
        attach(flow, eip)
        flow.vm_stopped("vm-1")
        backend.faults.fail("apply", times=2)
        [row] = flow.vm_started("vm-1", "h2")
        assert (row.state, row.vm_nic_uuid, row.applied_host) == ("applying", "nic-1", "h2")
        assert "simulated apply failure" in (row.last_error or "")
        [item] = flow.work_items(statuses=["pending"])
        assert item.due_at > clock.now() and item.attempts == 1
        assert flow.run_due() == 0  # not due yet
        for _ in range(2):
            clock.advance(600)
            assert flow.run_due() == 1
        final = flow.get_eip(eip.uuid)
        assert (final.state, final.applied_host, final.last_error) == ("attached", "h2", None)
        assert [r.event for r in flow.history(eip.uuid)][-3:] == ["apply_failed", "apply_failed", "apply_ok"]
        assert rules(backend) == {("h2", eip.uuid, "10.0.0.5")}
        assert check(flow.store, backend) == []


def test_delete_an_attached_eip_revokes_then_removes_the_row(flow: Eipflow, backend: InMemoryDataplane) -> None:
    eip = flow.create_eip(VIP)
    attach(flow, eip)
    gone = flow.delete_eip(eip.uuid)
    assert gone.state == "deleted"
    assert flow.list_eips() == []
    assert rules(backend) == set()
    assert events(flow, eip.uuid)[-2:] == [("delete", "attached", "detaching"), ("revoke_ok", "detaching", "deleted")]
    assert check(flow.store, backend) == []
    # The VIP can be allocated again.
    assert flow.create_eip(VIP).state == "detached"


def test_delete_a_detached_eip_reports_deleted_and_keeps_history(flow: Eipflow, backend: InMemoryDataplane) -> None:
    eip = flow.create_eip(VIP)
    gone = flow.delete_eip(eip.uuid)
    assert (gone.state, gone.version) == ("deleted", 2)
    assert flow.list_eips() == [] and backend.calls == []
    assert events(flow, eip.uuid) == [("create", "", "detached"), ("delete", "detached", "deleted")]
    assert check(flow.store, backend) == []

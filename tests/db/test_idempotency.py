"""Operation ids (S20): a repeated call with the same id does the work once and answers the same."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from eipflow import AttachFailed, Eipflow, IllegalTransition, InMemoryDataplane, OperationIdReused
from eipflow.invariants import check
from tests._support import Call

VIP = "203.0.113.20"


def _attach(flow: Eipflow, uuid: str, op_id: str, *, ip: str = "10.0.0.5") -> Any:
    return flow.attach(uuid, nic="nic-1", guest_ip=ip, vm="vm-1", host="h1", op_id=op_id)


def _attach_events(flow: Eipflow, uuid: str) -> list[str]:
    return [r.event for r in flow.history(uuid) if r.event == "attach"]


def test_sequential_repeat_does_the_work_once(flow: Eipflow, backend: InMemoryDataplane) -> None:
    """The second call with the same id replays the first answer: no new transition, no backend call."""
    eip = flow.create_eip(VIP)
    first = _attach(flow, eip.uuid, "op-1")
    version = flow.get_eip(eip.uuid).version
    second = _attach(flow, eip.uuid, "op-1")
    assert second == first
    assert second.state == "attached"
    assert flow.get_eip(eip.uuid).version == version
    assert _attach_events(flow, eip.uuid) == ["attach"]
    assert len(backend.calls_for(eip.uuid, "apply")) == 1
    assert [r.op_id for r in flow.history(eip.uuid) if r.event == "attach"] == ["op-1"]
    assert check(flow.store, backend) == []


def test_create_with_op_id_allocates_once(flow: Eipflow, backend: InMemoryDataplane) -> None:
    """Creating twice with one id returns the same EIP, and only one row exists."""
    a = flow.create_eip(VIP, "web", op_id="create-1")
    b = flow.create_eip(VIP, "web", op_id="create-1")
    assert a.uuid == b.uuid
    assert [e.uuid for e in flow.list_eips()] == [a.uuid]


def test_same_id_other_parameters_is_an_error(flow: Eipflow, backend: InMemoryDataplane) -> None:
    """Reusing an id for a different request raises OperationIdReused and changes nothing."""
    eip = flow.create_eip(VIP)
    _attach(flow, eip.uuid, "op-1")
    version = flow.get_eip(eip.uuid).version
    with pytest.raises(OperationIdReused) as err:
        _attach(flow, eip.uuid, "op-1", ip="10.0.0.6")
    assert err.value.op_id == "op-1"
    assert '"10.0.0.5"' in err.value.first_request and '"10.0.0.6"' in err.value.request
    with pytest.raises(OperationIdReused):
        flow.detach(eip.uuid, op_id="op-1")
    row = flow.get_eip(eip.uuid)
    assert (row.version, row.guest_ip, row.state) == (version, "10.0.0.5", "attached")
    assert len(backend.calls_for(eip.uuid)) == 1


def test_failed_attach_replays_the_failure(flow: Eipflow, backend: InMemoryDataplane) -> None:
    """A rolled-back attach answers AttachFailed again on repeat, without another apply."""
    eip = flow.create_eip(VIP)
    backend.faults.fail("apply", times=1)
    with pytest.raises(AttachFailed):
        _attach(flow, eip.uuid, "op-f")
    with pytest.raises(AttachFailed) as again:
        _attach(flow, eip.uuid, "op-f")
    assert again.value.eip_uuid == eip.uuid
    assert len(backend.calls_for(eip.uuid, "apply")) == 1
    assert _attach_events(flow, eip.uuid) == ["attach"]
    assert flow.get_eip(eip.uuid).state == "detached"
    assert check(flow.store, backend) == []


def test_rejected_request_frees_its_id(flow: Eipflow, backend: InMemoryDataplane) -> None:
    """A request refused before any change (a conflict) does not burn its id: a later retry runs."""
    eip = flow.create_eip(VIP)
    _attach(flow, eip.uuid, "op-a")
    with pytest.raises(IllegalTransition):
        flow.attach(eip.uuid, nic="nic-2", guest_ip="10.0.0.9", vm="vm-2", host="h2", op_id="op-b")
    flow.detach(eip.uuid)
    done = flow.attach(eip.uuid, nic="nic-2", guest_ip="10.0.0.9", vm="vm-2", host="h2", op_id="op-b")
    assert (done.state, done.applied_host) == ("attached", "h2")
    assert check(flow.store, backend) == []


def test_detach_and_vm_stop_repeat_once(flow: Eipflow, backend: InMemoryDataplane) -> None:
    """Intents other than attach are idempotent too: one revoke per operation id."""
    eip = flow.create_eip(VIP)
    _attach(flow, eip.uuid, "op-1")
    stopped = flow.vm_stopped("vm-1", op_id="stop-1")
    assert [e.state for e in flow.vm_stopped("vm-1", op_id="stop-1")] == [e.state for e in stopped] == ["released"]
    started = flow.vm_started("vm-1", "h2", op_id="start-1")
    assert [e.applied_host for e in started] == ["h2"]
    flow.vm_started("vm-1", "h2", op_id="start-1")
    first = flow.detach(eip.uuid, op_id="detach-1")
    assert flow.detach(eip.uuid, op_id="detach-1") == first
    assert first.state == "detached"
    assert [c.action for c in backend.calls_for(eip.uuid)] == ["apply", "revoke", "apply", "revoke"]
    assert check(flow.store, backend) == []


def test_concurrent_same_id_does_the_work_once(flow: Eipflow, backend: InMemoryDataplane) -> None:
    """Two callers with one id at once: one runs the flow, the other waits for its answer."""
    eip = flow.create_eip(VIP)
    gate = backend.faults.block("apply", eip_uuid=eip.uuid)
    barrier = threading.Barrier(2)

    def call() -> Any:
        barrier.wait()
        return _attach(flow, eip.uuid, "op-c")

    calls = [Call(call), Call(call)]
    for c in calls:
        c.start()
    gate.wait_entered()
    gate.release()
    a, b = (c.outcome() for c in calls)
    assert a == b
    assert a.state == "attached"
    assert gate.calls == 1
    assert len(backend.calls_for(eip.uuid, "apply")) == 1
    assert _attach_events(flow, eip.uuid) == ["attach"]
    assert check(flow.store, backend) == []


def test_concurrent_same_id_failure_is_shared(flow: Eipflow, backend: InMemoryDataplane) -> None:
    """Concurrent repeats of an attach that fails both get AttachFailed; only one apply ran."""
    eip = flow.create_eip(VIP)
    gate = backend.faults.block("apply", eip_uuid=eip.uuid)
    backend.faults.fail("apply", times=1, eip_uuid=eip.uuid)
    barrier = threading.Barrier(2)

    def call() -> Any:
        barrier.wait()
        return _attach(flow, eip.uuid, "op-cf")

    calls = [Call(call), Call(call)]
    for c in calls:
        c.start()
    gate.wait_entered()
    gate.release()
    for c in calls:
        with pytest.raises(AttachFailed):
            c.outcome()
    assert len(backend.calls_for(eip.uuid, "apply")) == 1
    assert flow.get_eip(eip.uuid).state == "detached"
    assert check(flow.store, backend) == []

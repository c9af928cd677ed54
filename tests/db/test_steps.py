"""The attach flow as resumable steps (bind → apply → finish), each safe to retry."""

from __future__ import annotations

import pytest

from eipflow import AttachFailed, Eipflow, InMemoryDataplane, OperationIdReused
from eipflow.invariants import check
from eipflow.steps import StepPending, apply, bind, finish

VIP = "192.0.2.50"
BINDING = {"nic": "nic-1", "guest_ip": "10.3.0.1", "vm": "vm-1", "host": "h1"}


def test_steps_in_order_each_retried(flow: Eipflow, backend: InMemoryDataplane) -> None:
    """Every step repeated (as an orchestrator's retry would) still does the work once."""
    uuid = flow.create_eip(VIP).uuid
    bound = bind(flow, uuid, op_id="wf-1", **BINDING)
    assert bound.state == "binding" and backend.calls == []
    assert bind(flow, uuid, op_id="wf-1", **BINDING) == bound
    applied = apply(flow, uuid)
    assert applied.state == "attached"
    assert apply(flow, uuid) == applied  # stable: nothing to run
    done = finish(flow, uuid, op_id="wf-1")
    assert (done.state, done.applied_host) == ("attached", "h1")
    assert finish(flow, uuid, op_id="wf-1") == done
    assert len(backend.calls_for(uuid, "apply")) == 1
    assert [r.event for r in flow.history(uuid)] == ["create", "attach", "proceed", "apply_ok"]
    assert check(flow.store, backend) == []


def test_finish_without_apply_drives_the_work(flow: Eipflow, backend: InMemoryDataplane) -> None:
    """A skipped or lost apply step is harmless: finish runs whatever is due."""
    uuid = flow.create_eip(VIP).uuid
    bind(flow, uuid, op_id="wf-2", **BINDING)
    assert finish(flow, uuid).state == "attached"
    assert check(flow.store, backend) == []


def test_failed_apply_finishes_as_attach_failed(flow: Eipflow, backend: InMemoryDataplane) -> None:
    uuid = flow.create_eip(VIP).uuid
    bind(flow, uuid, op_id="wf-3", **BINDING)
    backend.faults.fail("apply", times=1, message="host h1 unreachable")
    apply(flow, uuid)
    with pytest.raises(AttachFailed) as err:
        finish(flow, uuid, op_id="wf-3")
    assert err.value.state == "detached" and "host h1 unreachable" in err.value.error
    assert flow.get_eip(uuid).guest_ip is None
    with pytest.raises(AttachFailed):
        finish(flow, uuid, op_id="wf-3")  # repeatable: same answer
    assert check(flow.store, backend) == []


def test_finish_reports_pending_while_leased_elsewhere(flow: Eipflow, backend: InMemoryDataplane) -> None:
    """While another worker holds the item, finish says "not yet" (retryable) instead of blocking."""
    uuid = flow.create_eip(VIP).uuid
    bind(flow, uuid, op_id="wf-4", **BINDING)
    work_id = flow.get_eip(uuid).work_id
    assert work_id is not None
    assert flow.store.claim(work_id, "other-worker", 60) is not None
    assert apply(flow, uuid).state == "binding"  # not claimable: nothing happened
    with pytest.raises(StepPending) as err:
        finish(flow, uuid, op_id="wf-4")
    assert err.value.retryable and err.value.work_id == work_id
    assert backend.calls == []
    flow.store.release_lease(work_id, "other-worker")
    assert finish(flow, uuid, op_id="wf-4").state == "attached"


def test_stopped_vm_finishes_released(flow: Eipflow, backend: InMemoryDataplane) -> None:
    flow.vm_stopped("vm-1")
    uuid = flow.create_eip(VIP).uuid
    bind(flow, uuid, op_id="wf-5", **BINDING)
    done = finish(flow, uuid, op_id="wf-5")
    assert (done.state, done.guest_ip) == ("released", "10.3.0.1")
    assert backend.calls == []


def test_bind_with_reused_op_id_is_rejected(flow: Eipflow, backend: InMemoryDataplane) -> None:
    uuid = flow.create_eip(VIP).uuid
    bind(flow, uuid, op_id="wf-6", **BINDING)
    with pytest.raises(OperationIdReused):
        bind(flow, uuid, op_id="wf-6", **{**BINDING, "guest_ip": "10.3.0.2"})


def test_finish_judges_its_own_attach(flow: Eipflow, backend: InMemoryDataplane) -> None:
    """After a failed attach and a successful re-attach, each op id reports its own outcome."""
    uuid = flow.create_eip(VIP).uuid
    backend.faults.fail("apply", times=1)
    bind(flow, uuid, op_id="first", **BINDING)
    assert apply(flow, uuid).state == "rolling_back"  # one item per apply step: the rollback is next
    with pytest.raises(AttachFailed):
        finish(flow, uuid, op_id="first")
    bind(flow, uuid, op_id="second", **BINDING)
    apply(flow, uuid)
    assert finish(flow, uuid, op_id="second").state == "attached"
    with pytest.raises(AttachFailed):
        finish(flow, uuid, op_id="first")
    assert finish(flow, uuid).state == "attached"  # default: the latest attach

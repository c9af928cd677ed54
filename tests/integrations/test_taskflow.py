"""TaskFlow tasks against the real engine and the database-backed simulated dataplane."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from eipflow import Eipflow, SimulatedDataplane
from eipflow.invariants import check

with warnings.catch_warnings():
    # oslo.utils, a TaskFlow dependency, warns on import that one of its own modules is deprecated.
    warnings.filterwarnings("ignore", "eventletutils module is deprecated", DeprecationWarning)
    from taskflow import engines, retry, task
    from taskflow.patterns import linear_flow

    from eipflow.integrations.taskflow import AttachEip, CreateEip, DetachEip

BINDING = {"nic": "nic-1", "guest_ip": "10.0.0.5", "vm": "vm-1", "host": "h1"}


class Flaky(task.Task):  # type: ignore[misc]
    """Fails its first ``failures`` runs, then succeeds."""

    def __init__(self, failures: int, name: str = "dns") -> None:
        super().__init__(name=name)
        self.failures = failures
        self.runs = 0

    def execute(self, eip: dict[str, Any]) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise RuntimeError("DNS API unavailable")


@pytest.fixture
def backend() -> SimulatedDataplane:  # type: ignore[override]
    return SimulatedDataplane()


@pytest.fixture
def flow(sqlite_url: str, backend: SimulatedDataplane) -> Iterator[Eipflow]:
    f = Eipflow.open(sqlite_url, backend, owner="taskflow-test")
    try:
        yield f
    finally:
        backend.faults.clear()
        f.close()


def steps(flow: Eipflow, uuid: str) -> list[tuple[str, str, str | None]]:
    return [(r.event, r.to_state, r.op_id) for r in flow.history(uuid)]


def test_revert_after_successful_attach_detaches_cleanly(flow: Eipflow, backend: SimulatedDataplane) -> None:
    """A later task fails: the attach's revert leaves a ``detached`` EIP, no binding and no rule."""
    eip = flow.create_eip("203.0.113.10")
    boot = linear_flow.Flow("boot").add(AttachEip(flow, name="attach"), Flaky(failures=1))
    with pytest.raises(RuntimeError, match="DNS API unavailable"):
        engines.run(boot, store={"operation_id": "req-1", "eip_uuid": eip.uuid, **BINDING})
    row = flow.get_eip(eip.uuid)
    assert (row.state, row.vm_nic_uuid, row.guest_ip, row.applied_host) == ("detached", None, None, None)
    assert steps(flow, eip.uuid)[1:] == [
        ("attach", "binding", "req-1/attach/attach.1"),
        ("proceed", "applying", None),
        ("apply_ok", "attached", None),
        ("detach", "detaching", "req-1/attach/revert.1"),
        ("revoke_ok", "detached", None),
    ]
    assert flow.dataplane() == []
    assert [c.action for c in backend.calls_for(eip.uuid)] == ["apply", "revoke"]
    assert check(flow.store, backend) == []


def test_rerun_of_execute_with_the_same_operation_id_does_the_work_once(
    flow: Eipflow, backend: SimulatedDataplane
) -> None:
    """A resumed engine runs execute again for the same attempt: one apply, the same answer."""
    eip = flow.create_eip("203.0.113.10")
    attach = AttachEip(flow, name="attach")
    first = attach.execute(eip_uuid=eip.uuid, operation_id="req-1", **BINDING)
    again = attach.execute(eip_uuid=eip.uuid, operation_id="req-1", **BINDING)
    assert first == again
    assert first["state"] == "attached"
    assert len(backend.calls_for(eip.uuid, "apply")) == 1
    assert [(r.host_uuid, r.guest_ip) for r in flow.dataplane()] == [("h1", "10.0.0.5")]
    create = CreateEip(flow, name="allocate")
    assert create.execute(vip="203.0.113.11", operation_id="req-1") == create.execute(
        vip="203.0.113.11", operation_id="req-1"
    )
    assert len(flow.list_eips()) == 2


def test_retry_controller_reattaches_with_a_new_generation(flow: Eipflow, backend: SimulatedDataplane) -> None:
    """Under a Retry, a reverted attach that runs again is a new attempt: attach.2, really applied."""
    eip = flow.create_eip("203.0.113.10")
    dns = Flaky(failures=1)
    boot = linear_flow.Flow("boot", retry=retry.Times(2)).add(AttachEip(flow, name="attach"), dns)
    engines.run(boot, store={"operation_id": "req-1", "eip_uuid": eip.uuid, **BINDING})
    assert dns.runs == 2
    assert flow.get_eip(eip.uuid).state == "attached"
    ops = [op for _, _, op in steps(flow, eip.uuid) if op]
    assert ops == ["req-1/attach/attach.1", "req-1/attach/revert.1", "req-1/attach/attach.2"]
    assert [c.action for c in backend.calls_for(eip.uuid)] == ["apply", "revoke", "apply"]
    assert [(r.host_uuid, r.guest_ip) for r in flow.dataplane()] == [("h1", "10.0.0.5")]
    assert check(flow.store, backend) == []


def test_failed_apply_reverts_the_flow_and_a_retry_attaches_anew(flow: Eipflow, backend: SimulatedDataplane) -> None:
    """AttachFailed fails the task (eipflow rolled back); the retried attempt gets a fresh operation id."""
    eip = flow.create_eip("203.0.113.10")
    backend.faults.fail("apply", times=1, eip_uuid=eip.uuid)
    boot = linear_flow.Flow("boot", retry=retry.Times(2)).add(AttachEip(flow, name="attach"))
    engines.run(boot, store={"operation_id": "req-1", "eip_uuid": eip.uuid, **BINDING})
    history = steps(flow, eip.uuid)
    assert ("apply_failed", "rolling_back", None) in history
    assert [op for _, _, op in history if op] == ["req-1/attach/attach.1", "req-1/attach/attach.2"]
    assert flow.get_eip(eip.uuid).state == "attached"
    assert check(flow.store, backend) == []


def test_revert_leaves_a_binding_that_is_not_its_own(flow: Eipflow, backend: SimulatedDataplane) -> None:
    """If another request re-bound the EIP meanwhile, the revert does not detach it."""
    eip = flow.create_eip("203.0.113.10")
    attach = AttachEip(flow, name="attach")
    result = attach.execute(eip_uuid=eip.uuid, operation_id="req-1", **BINDING)
    flow.detach(eip.uuid)
    flow.attach(eip.uuid, nic="nic-2", guest_ip="10.0.0.6", vm="vm-2", host="h2")
    attach.revert(eip_uuid=eip.uuid, operation_id="req-1", result=result, flow_failures={}, **BINDING)
    row = flow.get_eip(eip.uuid)
    assert (row.state, row.vm_nic_uuid, row.applied_host) == ("attached", "nic-2", "h2")
    assert [(r.host_uuid, r.guest_ip) for r in flow.dataplane()] == [("h2", "10.0.0.6")]
    # The attempt is closed all the same: running the task again attaches anew (and conflicts here).
    assert attach._generation("req-1") == 2


def test_detach_task_is_idempotent(flow: Eipflow, backend: SimulatedDataplane) -> None:
    """DetachEip run twice: one revoke; on an already detached EIP it succeeds without work."""
    eip = flow.create_eip("203.0.113.10")
    flow.attach(eip.uuid, **BINDING)
    detach = DetachEip(flow, name="detach")
    assert detach.execute(eip_uuid=eip.uuid, operation_id="req-2")["state"] == "detached"
    assert detach.execute(eip_uuid=eip.uuid, operation_id="req-2")["state"] == "detached"
    assert DetachEip(flow, name="other").execute(eip_uuid=eip.uuid, operation_id="req-3")["state"] == "detached"
    assert [c.action for c in backend.calls_for(eip.uuid)] == ["apply", "revoke"]
    assert flow.dataplane() == []

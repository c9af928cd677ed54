"""A VM stop of 1,000 EIPs while a worker holds 300 applies in flight (their effect done, their answer held):
everything converges to ``released`` with no overlapping effective calls, on every database."""

from __future__ import annotations

import threading

import pytest

from eipflow import Eipflow, InMemoryDataplane, Worker
from eipflow.invariants import check
from tests.db.test_batch_flows import _seed

pytestmark = pytest.mark.slow


def test_vm_stop_of_1000_during_300_in_flight_applies_converges(flow: Eipflow, backend: InMemoryDataplane) -> None:
    attached = _seed(flow, 1000, vm="vm-big", host="h1", net=20, tag="a")  # applied in batched drains
    assert {e.state for e in flow.list_eips()} == {"attached"}
    in_flight = _seed(flow, 300, vm="vm-big", host="h1", net=21, tag="f", wait=False)
    held = backend.faults.hold_answer("apply")
    worker = Worker(flow, heartbeat_interval=None, batch_size=300)
    ran: list[int] = []
    thread = threading.Thread(target=lambda: ran.append(len(worker.run_batch())))
    thread.start()
    try:
        held.wait_entered()  # the 300 applies went to the host in one call; its answer is held
        assert {flow.get_eip(u).state for u in in_flight} == {"applying"}
        released = flow.vm_stopped("vm-big")  # the fan-out: their leases are the worker's, so it leaves them
        assert {e.uuid for e in released if e.state == "released"} == set(attached)
        assert {flow.get_eip(u).state for u in in_flight} == {"applying"}  # the stop is recorded on them
        assert {flow.get_eip(u).host_uuid for u in in_flight} == {None}
    finally:
        held.release()
        thread.join()
    assert ran == [300]
    flow.run_due()  # the applies' fenced completions left revokes for the stopped VM
    assert {e.state for e in flow.list_eips()} == {"released"}
    assert backend.rules() == []
    assert backend.overlaps == []
    assert check(flow.store, backend) == []

"""Stale actors (contract 11, race S21): an actor acting on what it *used to* own cannot change the dataplane.

Each race is forced with gates, pipes and the shared lease clock (never a sleep), on every database, with
the database-backed simulated dataplane (so separate flows and processes see one host). At the end the
whole contract holds: rules == attached EIPs on their hosts, nothing in flight, no two effective calls of
one EIP overlapping.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from eipflow import ConflictError, Eipflow, SimulatedDataplane, StaleGeneration, Worker
from eipflow.invariants import check
from tests._support import Call

VIP = "203.0.113.20"
BINDING = {"nic": "nic-1", "guest_ip": "10.3.0.1", "vm": "vm-1", "host": "h1"}


def open_two(db_url: str, lease: float = 30) -> tuple[Eipflow, SimulatedDataplane, Eipflow, SimulatedDataplane]:
    """Two actors on one database and one (database-backed) dataplane, each with its own fault plan."""
    sim_a, sim_b = SimulatedDataplane(), SimulatedDataplane()
    return (Eipflow.open(db_url, sim_a, owner="A", lease_seconds=lease), sim_a,
            Eipflow.open(db_url, sim_b, owner="B", lease_seconds=lease), sim_b)


def host_rules(plane: SimulatedDataplane) -> set[tuple[str, str, str, int]]:
    return {(r.host_uuid, r.eip_uuid, r.guest_ip, r.generation) for r in plane.rules()}


def test_a_zombie_apply_after_a_newer_apply_on_the_same_host_is_refused(db_url: str) -> None:
    """A's apply is paused past its lease; B runs the item, detaches and re-attaches the *same* binding on the
    same host (newer generation); then A's apply reaches the host: refused, the newer rule stays, A writes
    nothing to the row."""
    flow_a, sim_a, flow_b, sim_b = open_two(db_url)
    try:
        eip = flow_a.create_eip(VIP)
        gate = sim_a.faults.block("apply", eip_uuid=eip.uuid)
        attaching = Call(lambda: flow_a.attach(eip.uuid, **BINDING))
        attaching.start()
        gate.wait_entered()
        flow_b.store.lease_clock.advance(31)  # A's lease is over for everyone; A itself does not know
        assert flow_b.run_due() == 1
        flow_b.detach(eip.uuid)
        again = flow_b.attach(eip.uuid, **BINDING)
        assert again.state == "attached"
        before = flow_b.get_eip(eip.uuid)
        gate.release()
        try:
            attaching.outcome()
        except ConflictError:
            pass  # A may report that it was overtaken; what matters is what it did not do
        [zombie] = [c for c in sim_a.calls_for(eip.uuid, "apply")]
        assert zombie.outcome == "refused" and zombie.spec.generation < before.version
        assert flow_b.get_eip(eip.uuid) == before  # A's fenced completion wrote nothing
        assert host_rules(sim_b) == {("h1", eip.uuid, "10.3.0.1", before.version - 1)}
        assert flow_b.run_due() == 0
        assert check(flow_b.store, sim_b) == []
    finally:
        flow_a.close()
        flow_b.close()


def test_an_orphan_cleanup_held_until_the_same_binding_is_reattached_is_refused(db_url: str) -> None:
    """A's apply lands, then A is paused past its lease; B takes over, detaches; A's fenced completion queues
    a cleanup revoke of its apply. That revoke decides "not wanted", is held, and meanwhile the EIP is
    re-attached to the same NIC, guest IP and host. Released, the revoke is refused: the rule stays."""
    flow_a, sim_a, flow_b, sim_b = open_two(db_url)
    try:
        eip = flow_a.create_eip(VIP)
        answer = sim_a.faults.hold_answer("apply", eip_uuid=eip.uuid)
        attaching = Call(lambda: flow_a.attach(eip.uuid, **BINDING))
        attaching.start()
        answer.wait_entered()  # A's apply took effect on the host; A is paused before it hears back
        flow_b.store.lease_clock.advance(31)
        assert flow_b.run_due() == 1  # B re-runs the same apply (an idempotent repeat) and completes it
        flow_b.detach(eip.uuid)
        answer.release()
        try:
            attaching.outcome()
        except ConflictError:
            pass
        [cleanup] = [w for w in flow_a.work_items(eip_uuid=eip.uuid) if w.cleanup]
        assert cleanup.status == "pending" and cleanup.spec is not None
        applied_gen = cleanup.spec.generation

        held = sim_a.faults.block("revoke", eip_uuid=eip.uuid)
        revoking = Call(flow_a.run_due)
        revoking.start()
        held.wait_entered()  # the cleanup read the row (detached), decided to revoke, and is on its way
        again = flow_b.attach(eip.uuid, **BINDING)
        assert again.state == "attached"
        held.release()
        assert revoking.outcome() == 1

        done = flow_a.store.work_item(cleanup.id)
        assert done is not None and done.status == "done" and (done.last_error or "").startswith("superseded")
        [late] = sim_a.calls_for(eip.uuid, "revoke")
        assert late.outcome == "refused" and late.spec.generation == applied_gen
        row = flow_b.get_eip(eip.uuid)
        assert host_rules(sim_b) == {("h1", eip.uuid, "10.3.0.1", row.version - 1)}
        assert check(flow_b.store, sim_b) == []
    finally:
        flow_a.close()
        flow_b.close()


class _Ahead:
    """A process clock running ``seconds`` ahead of the real one."""

    def __init__(self, seconds: float) -> None:
        self.skew = timedelta(seconds=seconds)

    def now(self) -> datetime:
        from eipflow.clock import utcnow

        return utcnow() + self.skew


def test_a_worker_whose_clock_runs_ahead_claims_nothing_still_leased(db_url: str) -> None:
    """A 10 s lease, renewed by the heartbeat; a worker whose clock is 15 s ahead must not take it over."""
    plane = SimulatedDataplane()
    flow = Eipflow.open(db_url, plane, owner="holder", lease_seconds=10)
    ahead = Eipflow.open(db_url, SimulatedDataplane(), owner="ahead", lease_seconds=10, clock=_Ahead(15))
    try:
        eip = flow.create_eip(VIP)
        flow.attach(eip.uuid, **BINDING, wait=False)
        gate = plane.faults.block("apply", eip_uuid=eip.uuid)
        holder = Worker(flow, lease_seconds=10, heartbeat_interval=0.05, owner="holder")
        running = Call(holder.run_once)
        running.start()
        gate.wait_entered()
        holder.heartbeat.clear()
        assert holder.heartbeat.wait(30)  # the lease is live and being renewed
        thief = Worker(ahead, lease_seconds=10, heartbeat_interval=None, owner="ahead")
        assert thief.claim_next() is None
        assert thief.run_once() == 0
        assert [r.kind for r in ahead_reconcile(ahead)] == []  # nor does its reconciler call the lease expired
        gate.release()
        assert running.outcome() == 1
        assert flow.get_eip(eip.uuid).state == "attached"
        assert [c.outcome for c in plane.calls_for(eip.uuid)] == ["ok"]
        assert check(flow.store, plane) == []
    finally:
        flow.close()
        ahead.close()


def ahead_reconcile(flow: Eipflow) -> list[object]:
    from eipflow.reconcile import Reconciler

    return Reconciler(flow).plan()[0]


def test_an_inline_attach_outliving_its_lease_keeps_it(db_url: str) -> None:
    """``attach(wait=True)`` whose backend call outlives ``lease_seconds``: its own heartbeat renews the lease,
    so a worker running meanwhile cannot start a second call of the same EIP."""
    plane = SimulatedDataplane()
    flow = Eipflow.open(db_url, plane, owner="api", lease_seconds=1.0)
    other = Eipflow.open(db_url, SimulatedDataplane(), owner="worker", lease_seconds=1.0)
    try:
        eip = flow.create_eip(VIP)
        gate = plane.faults.block("apply", eip_uuid=eip.uuid)
        attaching = Call(lambda: flow.attach(eip.uuid, **BINDING))
        attaching.start()
        gate.wait_entered()
        beats = flow.runner.heartbeat
        for _ in range(4):  # four renewals a third of a lease apart: the call has outlived its first lease
            beats.beat.clear()
            assert beats.beat.wait(30)
        worker = Worker(other, heartbeat_interval=None, owner="worker")
        assert worker.run_once() == 0
        gate.release()
        assert attaching.outcome().state == "attached"
        assert len(plane.calls_for(eip.uuid, "apply")) == 1
        assert beats.renewals >= 4
        assert check(flow.store, plane) == []
    finally:
        flow.close()
        other.close()


def test_an_attach_host_guess_never_overwrites_a_vm_fact_recorded_meanwhile(db_url: str) -> None:
    """The attach read "VM unknown", then a VM stop was recorded, then the attach wrote its host guess:
    the guess loses (compare-and-swap on the fact), and the EIP lands released, with no rule."""
    plane = SimulatedDataplane()
    flow = Eipflow.open(db_url, plane)
    other = Eipflow.open(db_url, SimulatedDataplane())
    try:
        eip = flow.create_eip(VIP)
        real_vm = flow.store.vm
        raced = threading.Event()

        def stale_read(uuid: str) -> object:
            seen = real_vm(uuid)
            if not raced.is_set():
                raced.set()
                other.vm_stopped(uuid)  # lands between the attach's read and its write
            return seen

        flow.store.vm = stale_read  # type: ignore[method-assign]
        done = flow.attach(eip.uuid, **BINDING)
        assert raced.is_set()
        assert (done.state, done.applied_host) == ("released", None)
        fact = other.vm("vm-1")
        assert fact is not None and (fact.running, fact.host_uuid) == (False, None)
        assert plane.rules() == []
        assert check(other.store, plane) == []
    finally:
        flow.close()
        other.close()


# -- real processes -------------------------------------------------------------------------------------

CLI = [sys.executable, "-c", "import sys; from eipflow.cli import main; sys.exit(main(sys.argv[1:]))"]


@dataclass
class PipeGate:
    root: Path

    def __post_init__(self) -> None:
        os.mkfifo(self.root / "entered")
        os.mkfifo(self.root / "release")

    def wait_entered(self) -> int:
        with (self.root / "entered").open() as pipe:
            return int(pipe.readline().strip())


@pytest.fixture
def pipe_gate(tmp_path: Path) -> Iterator[PipeGate]:
    yield PipeGate(tmp_path)


@pytest.mark.slow
def test_a_killed_workers_apply_still_executing_on_the_host_is_refused_when_it_lands(
    db_url: str, pipe_gate: PipeGate
) -> None:
    """A worker is SIGKILLed while its apply is still on its way to the host. Another worker takes the item
    over (shared clock moved past the lease), attaches, then the EIP is detached. When the dead worker's
    request finally executes on the host it is refused; ``worker --once`` (no reconcile) leaves a clean host."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EIPFLOW_")}
    env["EIPFLOW_DB"] = db_url
    with Eipflow.open(db_url) as flow:
        eip = flow.create_eip(VIP)
        flow.attach(eip.uuid, **BINDING, wait=False)
    worker = subprocess.Popen([*CLI, "worker", "--once"], env={**env, "EIPFLOW_SIM_GATE": str(pipe_gate.root)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert pipe_gate.wait_entered() == worker.pid  # its apply is in flight, its spec fixed
        with Eipflow.open(db_url) as flow:
            [item] = flow.work_items(eip_uuid=eip.uuid, statuses=["running"])
            assert item.lease_owner is not None and item.spec is not None
            in_flight = item.spec  # the request the dead worker's host is still executing
        worker.send_signal(signal.SIGKILL)
        assert worker.wait(timeout=30) == -signal.SIGKILL
    finally:
        if worker.poll() is None:
            worker.kill()
        assert worker.stderr is not None
        worker.stderr.close()

    with Eipflow.open(db_url) as flow:
        flow.store.lease_clock.advance(120)  # past the dead worker's lease, for every process
    run = subprocess.run([*CLI, "worker", "--once"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    with Eipflow.open(db_url) as flow:
        assert flow.get_eip(eip.uuid).state == "attached"
    detach = subprocess.run([*CLI, "detach", eip.uuid], env=env, capture_output=True, text=True, timeout=60)
    assert detach.returncode == 0, detach.stderr

    with Eipflow.open(db_url) as flow:
        host = flow.backend
        assert isinstance(host, SimulatedDataplane)
        with pytest.raises(StaleGeneration):
            host.apply(in_flight)  # the dead worker's request lands at last
        drain = subprocess.run([*CLI, "worker", "--once"], env=env, capture_output=True, text=True, timeout=60)
        assert drain.returncode == 0, drain.stderr
        assert flow.get_eip(eip.uuid).state == "detached"
        assert host.rules() == []
        assert check(flow.store, host) == []

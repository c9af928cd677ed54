"""Random interleavings of intents, backend work and faults; invariants checked after every step.

Concurrency is modelled at the granularity that matters: intents may arrive *inside* a backend call (the
backend runs them re-entrantly — which also proves no transaction is held open across the call), work items
run in any order, and backend calls fail or time out. At the end the system is drained to quiescence and the
whole behaviour contract must hold: dataplane == attached EIPs, no in-flight rows, one history row per version
along legal edges only, no binding left on a detached row, at most one effective backend call in flight per
EIP. Stale actors are modelled too: any past backend call may be sent again at any point (a zombie worker, a
request still executing on a host, a replay), and cleanup revokes of old generations may be queued at any
point; the hosts' generation check must make all of them harmless.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule

from eipflow import Eipflow, EipflowError, InMemoryDataplane, ManualClock, RetryPolicy
from eipflow.invariants import check
from eipflow.store import NewWork
from eipflow.values import EipSpec
from tests._support import fresh_database, skip_reason

VMS = ["vm-1", "vm-2", "vm-3"]
HOSTS = ["h1", "h2"]
IPS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


class ReentrantDataplane(InMemoryDataplane):
    """Runs queued callbacks while a backend call is in flight, as a concurrent actor would."""

    def __init__(self) -> None:
        super().__init__()
        self.during: list[Callable[[], Any]] = []

    def _inside(self, action: str, spec: EipSpec) -> None:
        pending, self.during = self.during, []
        for fn in pending:
            try:
                fn()
            except EipflowError:
                pass  # an intent the state did not allow: a legitimate outcome


class EipLifecycle(RuleBasedStateMachine):
    eips = Bundle("eips")
    kind = "sqlite"  # subclasses below run the same machine on PostgreSQL and MariaDB

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="eipflow-hyp-")
        self.stack = ExitStack()
        url = self.stack.enter_context(fresh_database(self.kind, Path(self.dir)))
        self.clock = ManualClock()
        self.backend = ReentrantDataplane()
        self.flow = Eipflow.open(
            url, self.backend, clock=self.clock, owner="hyp",
            retry=RetryPolicy(max_attempts=1000, base_delay_s=1, max_delay_s=5, jitter=0),
        )
        self.n = 0

    def teardown(self) -> None:
        try:
            self._quiesce()
            violations = check(self.flow.store, self.backend)
            assert violations == [], "\n".join(map(str, violations))
        finally:
            self.flow.close()
            self.stack.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _quiesce(self) -> None:
        self.backend.faults.clear()
        self.backend.during.clear()
        for _ in range(50):
            self.clock.advance(10)
            self.flow.store.lease_clock.advance(10)
            if self.flow.run_due() == 0 and not self.flow.work_items(statuses=["pending", "running"]):
                return
        raise AssertionError("work never drained")

    def _try(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except EipflowError:
            pass  # conflicts, illegal transitions, rolled-back attaches: outcomes, not failures

    @rule(target=eips)
    def create(self) -> str:
        self.n += 1
        # An operation id makes the uuid a function of the example (uuid5), so rows sort the same way on a
        # replay: hypothesis replays an example and needs the same backend calls to draw from.
        return self.flow.create_eip(f"203.0.113.{self.n}", op_id=f"create-{self.n}").uuid

    @rule(eip=eips, ip=st.sampled_from(IPS), vm=st.sampled_from(VMS), host=st.sampled_from(HOSTS),
          wait=st.booleans())
    def attach(self, eip: str, ip: str, vm: str, host: str, wait: bool) -> None:
        self._try(lambda: self.flow.attach(eip, nic=f"nic-{vm}-{ip}", guest_ip=ip, vm=vm, host=host, wait=wait))

    @rule(eip=eips, wait=st.booleans())
    def detach(self, eip: str, wait: bool) -> None:
        self._try(lambda: self.flow.detach(eip, wait=wait))

    @rule(eip=eips, wait=st.booleans())
    def delete(self, eip: str, wait: bool) -> None:
        self._try(lambda: self.flow.delete_eip(eip, wait=wait))

    @rule(vm=st.sampled_from(VMS), wait=st.booleans())
    def vm_stop(self, vm: str, wait: bool) -> None:
        self._try(lambda: self.flow.vm_stopped(vm, wait=wait))

    @rule(vm=st.sampled_from(VMS), host=st.sampled_from(HOSTS), wait=st.booleans())
    def vm_start(self, vm: str, host: str, wait: bool) -> None:
        self._try(lambda: self.flow.vm_started(vm, host, wait=wait))

    @rule(vm=st.sampled_from(VMS), host=st.sampled_from(HOSTS), wait=st.booleans())
    def vm_migrate(self, vm: str, host: str, wait: bool) -> None:
        self._try(lambda: self.flow.vm_migrated(vm, host, wait=wait))

    @rule(data=st.data())
    def intent_during_next_backend_call(self, data: st.DataObject) -> None:
        """Queue an intent that arrives while the next backend call is in flight."""
        kind = data.draw(st.sampled_from(["vm_stop", "vm_start", "vm_migrate", "detach", "delete"]))
        vm = data.draw(st.sampled_from(VMS))
        host = data.draw(st.sampled_from(HOSTS))
        rows = self.flow.list_eips()
        target = data.draw(st.sampled_from([r.uuid for r in rows])) if rows else None
        calls: dict[str, Callable[[], Any]] = {
            "vm_stop": lambda: self.flow.vm_stopped(vm, wait=False),
            "vm_start": lambda: self.flow.vm_started(vm, host, wait=False),
            "vm_migrate": lambda: self.flow.vm_migrated(vm, host, wait=False),
            "detach": lambda: target and self.flow.detach(target, wait=False),
            "delete": lambda: target and self.flow.delete_eip(target, wait=False),
        }
        self.backend.during.append(calls[kind])

    @precondition(lambda self: bool(self.backend.calls))
    @rule(data=st.data())
    def zombie_call_lands_late(self, data: st.DataObject) -> None:
        """A stale actor's call reaches the host late: a worker paused past its lease, a request still
        executing on the host after its caller was killed, a replayed request. Only the generation check
        stands between it and the dataplane: it must change nothing the database does not want."""
        call = data.draw(st.sampled_from(list(self.backend.calls)))
        try:
            (self.backend.apply if call.action == "apply" else self.backend.revoke)(call.spec)
        except EipflowError:
            pass  # refused (stale generation) or a fault: either way nothing changed

    @precondition(lambda self: any(c.action == "apply" for c in self.backend.calls))
    @rule(data=st.data())
    def late_cleanup_revoke(self, data: st.DataObject) -> None:
        """A cleanup revoke decided long ago (an orphaned apply's, a stray rule's) is queued now: it must
        never remove a rule of a newer generation, even of the same NIC, guest IP and host."""
        call = data.draw(st.sampled_from([c for c in self.backend.calls if c.action == "apply"]))
        spec = call.spec
        work = NewWork("revoke", spec.vip, spec.vm_nic_uuid, spec.guest_ip, spec.host_uuid, cleanup=True,
                       generation=spec.generation)
        self.flow.store.add_work(spec.eip_uuid, work)

    @rule(action=st.sampled_from(["apply", "revoke"]), timeout=st.booleans())
    def backend_fails_next(self, action: str, timeout: bool) -> None:
        self.backend.faults.fail(action, timeout=timeout)

    @precondition(lambda self: True)
    @rule()
    def run_due_work(self) -> None:
        self.clock.advance(10)
        self.flow.store.lease_clock.advance(10)
        self.flow.run_due(limit=3)

    @invariant()
    def contract_holds_between_steps(self) -> None:
        violations = check(self.flow.store, self.backend, quiescent=False)
        assert violations == [], "\n".join(map(str, violations))


SETTINGS = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestEipLifecycle = EipLifecycle.TestCase
TestEipLifecycle.settings = SETTINGS


class PostgresLifecycle(EipLifecycle):
    kind = "postgres"


class MariadbLifecycle(EipLifecycle):
    kind = "mariadb"


# Fewer examples on the servers: each example creates (and drops) its own schema or database.
SERVER_SETTINGS = settings(SETTINGS, max_examples=12)
TestEipLifecyclePostgres = pytest.mark.postgres(
    pytest.mark.skipif(bool(skip_reason("postgres")), reason=skip_reason("postgres") or "")(PostgresLifecycle.TestCase)
)
TestEipLifecyclePostgres.settings = SERVER_SETTINGS
TestEipLifecycleMariadb = pytest.mark.mariadb(
    pytest.mark.skipif(bool(skip_reason("mariadb")), reason=skip_reason("mariadb") or "")(MariadbLifecycle.TestCase)
)
TestEipLifecycleMariadb.settings = SERVER_SETTINGS

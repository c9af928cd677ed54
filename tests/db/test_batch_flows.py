"""Whole flows in batches: a VM stop, a host evacuation and a worker drain claim, call and complete in
O(1) transactions and one backend call per host, and end exactly as the one-at-a-time path ends."""

from __future__ import annotations

import collections
import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eipflow import Change, ChangeResult, Eipflow, InMemoryDataplane, Worker, run_changes
from eipflow.errors import BackendError, BackendTimeout, StaleGeneration
from eipflow.invariants import check
from eipflow.values import EipSpec


def _seed(flow: Eipflow, n: int, *, vm: str, host: str, net: int, tag: str, wait: bool = True) -> list[str]:
    """``n`` EIPs attached to ``vm`` on ``host`` (applied in one batched drain unless ``wait`` is false)."""
    uuids = []
    for i in range(n):
        eip = flow.create_eip(f"198.{net}.{i // 250}.{i % 250 + 1}", op_id=f"{tag}-{i}")
        flow.attach(eip.uuid, nic=f"{tag}-nic-{i}", guest_ip=f"10.{net}.{i // 250}.{i % 250 + 1}", vm=vm,
                    host=host, wait=False)
        uuids.append(eip.uuid)
    if wait:
        flow.run_due()
    return uuids


@contextmanager
def _counting(engine: sa.engine.Engine) -> Iterator[collections.Counter[str]]:
    """Statements (an executemany counts once) and commits executed while the block runs."""
    seen: collections.Counter[str] = collections.Counter()

    def statement(*_args: Any) -> None:
        seen["statements"] += 1

    def commit(_conn: Any) -> None:
        seen["commits"] += 1

    sa.event.listen(engine, "before_cursor_execute", statement)
    sa.event.listen(engine, "commit", commit)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", statement)
        sa.event.remove(engine, "commit", commit)


def test_a_vm_stop_costs_the_same_statements_and_one_backend_call_whatever_its_size(
    flow: Eipflow, backend: InMemoryDataplane
) -> None:
    costs = {}
    for n, net in ((8, 51), (40, 52)):
        uuids = _seed(flow, n, vm=f"vm-{n}", host="h1", net=net, tag=f"s{n}")
        assert {flow.get_eip(u).state for u in uuids} == {"attached"}
        before = len(backend.batches)
        with _counting(flow.store.engine) as seen:
            released = flow.vm_stopped(f"vm-{n}")
        assert sorted(e.uuid for e in released) == sorted(uuids)
        assert {e.state for e in released} == {"released"}
        assert backend.batches[before:] == [n]  # every revoke of the VM in one backend call
        costs[n] = dict(seen)
    assert costs[8] == costs[40], costs  # O(1) statements and transactions, not O(EIPs)
    assert backend.rules() == []
    assert check(flow.store, backend) == []


def test_host_down_releases_every_vm_on_the_host_in_one_fan_out(flow: Eipflow, backend: InMemoryDataplane) -> None:
    on_h1 = [u for k in range(6) for u in _seed(flow, 5, vm=f"vm-{k}", host="h1", net=60 + k, tag=f"h{k}")]
    elsewhere = _seed(flow, 3, vm="vm-other", host="h2", net=70, tag="o")
    before = len(backend.batches)
    with _counting(flow.store.engine) as seen:
        released = flow.host_down("h1")
    assert sorted(e.uuid for e in released) == sorted(on_h1)
    assert {e.state for e in released} == {"released"}
    assert all(e.vm_nic_uuid is not None for e in released)  # bindings kept for a start elsewhere
    assert backend.batches[before:] == [30]
    assert seen["commits"] <= 12, seen  # facts, intents, claim, completion: a handful, not 30 of each
    assert {flow.vm(f"vm-{k}").running for k in range(6)} == {False}  # type: ignore[union-attr]
    assert flow.vm("vm-other").running  # type: ignore[union-attr]
    assert {flow.get_eip(u).state for u in elsewhere} == {"attached"}
    assert sorted(r.eip_uuid for r in backend.rules()) == sorted(elsewhere)
    # The VMs start again elsewhere: their EIPs follow, applied in one batch per host.
    for k in range(6):
        flow.vm_started(f"vm-{k}", "h3", wait=False)
    assert flow.run_due() == 30
    assert {r.host_uuid for r in backend.rules() if r.eip_uuid in on_h1} == {"h3"}
    assert check(flow.store, backend) == []


def test_host_down_twice_and_for_an_unknown_host_change_nothing_more(flow: Eipflow, backend: InMemoryDataplane) -> None:
    _seed(flow, 3, vm="vm-1", host="h1", net=80, tag="t")
    assert len(flow.host_down("h1")) == 3
    rows = [(e.uuid, e.version) for e in flow.list_eips()]
    assert flow.host_down("h1") == []
    assert flow.host_down("h-unknown") == []
    assert [(e.uuid, e.version) for e in flow.list_eips()] == rows


def test_one_batch_with_a_refusal_a_failure_a_timeout_and_a_permanent_failure(
    flow: Eipflow, backend: InMemoryDataplane
) -> None:
    ok, failing, timing_out, permanent, superseded = _seed(flow, 5, vm="vm-1", host="h1", net=90, tag="m")
    backend.faults.fail("revoke", eip_uuid=failing)
    backend.faults.fail("revoke", eip_uuid=timing_out, timeout=True)
    backend.faults.fail("revoke", eip_uuid=permanent, retryable=False)
    newer = backend.record("h1", superseded)
    assert newer is not None and newer.spec is not None
    # The host saw a newer generation of this EIP (another controller's): our revoke must not remove it.
    backend.inject_rule(EipSpec(superseded, newer.spec.vip, newer.spec.vm_nic_uuid, newer.spec.guest_ip, "h1",
                                newer.generation + 10))
    before = len(backend.batches)
    flow.vm_stopped("vm-1")
    assert backend.batches[before:] == [5]
    states = {u: flow.get_eip(u).state for u in (ok, failing, timing_out, permanent, superseded)}
    assert states == {ok: "released", failing: "releasing", timing_out: "releasing", permanent: "releasing",
                      superseded: "released"}
    status = {w.eip_uuid: w.status for w in flow.work_items() if w.action == "revoke"}
    assert status[failing] == "pending" and status[timing_out] == "pending" and status[permanent] == "parked"
    assert [c.outcome for c in backend.calls_for(superseded, "revoke")] == ["refused"]
    assert backend.record("h1", superseded).generation == newer.generation + 10  # type: ignore[union-attr]
    # The newer rule stands, the failed revokes left theirs, the timed-out one took effect (its answer was lost).
    assert {r.eip_uuid for r in backend.rules()} == {superseded, failing, permanent}
    for item in flow.work_items(statuses=["pending"]):
        flow.store.requeue(item.id)
    assert flow.run_due() == 2
    assert {flow.get_eip(u).state for u in (failing, timing_out)} == {"released"}


class _Broken:
    """A batch backend whose answers are wrong or whose call fails as a whole."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def apply(self, spec: EipSpec) -> None:
        raise AssertionError("the batch call is used")

    def revoke(self, spec: EipSpec) -> None:
        raise AssertionError("the batch call is used")

    def apply_changes(self, host_uuid: str, changes: list[Change]) -> list[ChangeResult]:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer  # type: ignore[no-any-return]


def _changes(n: int) -> list[Change]:
    return [Change("apply", EipSpec(f"e{i}", "198.51.100.1", "nic", f"10.0.0.{i}", "h1", 3)) for i in range(n)]


@pytest.mark.parametrize(
    ("answer", "status", "error"),
    [
        (BackendTimeout("lost"), "unknown", BackendTimeout),
        (ConnectionResetError("reset"), "unknown", BackendTimeout),
        (BackendError("host full", retryable=False), "failed_permanent", BackendError),
        ([ChangeResult("done")], "unknown", BackendTimeout),  # one answer for three changes tells nothing
    ],
)
def test_a_batch_call_that_fails_as_a_whole_gives_every_change_its_outcome(
    answer: Any, status: str, error: type[BaseException]
) -> None:
    results = run_changes(_Broken(answer), "h1", _changes(3))
    assert [r.status for r in results] == [status] * 3
    assert all(isinstance(r.error, error) for r in results)


def test_run_changes_drives_a_simple_backend_one_change_at_a_time() -> None:
    backend = InMemoryDataplane()
    backend.faults.fail("apply", eip_uuid="e1")
    results = run_changes(_OneByOne(backend), "h1", _changes(3))
    assert [r.status for r in results] == ["done", "failed", "done"]
    assert [s.eip_uuid for s in backend.rules()] == ["e0", "e2"]
    with pytest.raises(ValueError, match="host"):
        run_changes(backend, "h2", _changes(1))
    with pytest.raises(ValueError, match="action"):
        Change("delete", _changes(1)[0].spec)


class _OneByOne:
    """Only the one-at-a-time methods (a simple backend)."""

    def __init__(self, inner: InMemoryDataplane) -> None:
        self.inner = inner

    def apply(self, spec: EipSpec) -> None:
        self.inner.apply(spec)

    def revoke(self, spec: EipSpec) -> None:
        self.inner.revoke(spec)


def test_refused_changes_in_a_batch_carry_the_hosts_generation() -> None:
    backend = InMemoryDataplane()
    spec = _changes(1)[0].spec
    backend.apply(EipSpec(spec.eip_uuid, spec.vip, spec.vm_nic_uuid, spec.guest_ip, "h1", 9))
    results = backend.apply_changes("h1", _changes(2))
    assert [r.status for r in results] == ["refused", "done"]
    assert isinstance(results[0].error, StaleGeneration) and results[0].error.current == 9


# -- batched and single paths agree ---------------------------------------------------------------
_COUNTER = itertools.count()
FAULTS = st.sampled_from([None, "fail", "timeout", "permanent"])
EVENTS = st.sampled_from(["vm_stopped", "vm_migrated", "host_down", "drain"])


def _normal(flow: Eipflow, backend: InMemoryDataplane, uuids: list[str], tag: str) -> list[Any]:
    def clean(text: Any) -> Any:
        if not isinstance(text, str):
            return text
        for i, u in enumerate(uuids):
            text = text.replace(u, f"E{i}")
        return re.sub(rf"\b{tag}-", "", re.sub(r"10\.\d+\.", "10.N.", text))

    out = []
    for i, u in enumerate(uuids):
        row = flow.store.get(u)
        out.append(("row", i, None if row is None else tuple(clean(x) for x in (
            row.state, row.version, row.desired, row.vm_nic_uuid, row.guest_ip, row.vm_uuid, row.host_uuid,
            row.applied_host, row.last_error))))
        out.append(("history", i, [(r.event, r.from_state, r.to_state, r.version) for r in flow.store.history(u)]))
        out.append(("work", i, [(w.action, w.status, w.attempts, w.cleanup, w.spec and w.spec.generation,
                                 clean(w.spec and w.spec.host_uuid),
                                 clean(w.last_error)) for w in flow.work_items(eip_uuid=u)]))
        out.append(("calls", i, [(c.action, c.outcome) for c in backend.calls_for(u)]))
    out.append(("rules", sorted((uuids.index(r.eip_uuid), clean(r.host_uuid), r.generation)
                                for r in backend.rules() if r.eip_uuid in uuids)))
    return out


def _scenario(flow: Eipflow, backend: InMemoryDataplane, plan: list[tuple[bool, str | None]], event: str,
              tag: str, net: int, batched: bool) -> list[Any]:
    vm, host = f"{tag}-vm", f"{tag}-h1"
    uuids = _seed(flow, len(plan), vm=vm, host=host, net=net, tag=tag, wait=False)
    for u, (attached, _) in zip(uuids, plan, strict=True):
        if attached:
            flow.runner.drive(u)
    for u, (_, fault) in zip(uuids, plan, strict=True):
        if fault is not None:
            for action in ("apply", "revoke"):
                backend.faults.fail(action, eip_uuid=u, timeout=fault == "timeout", retryable=fault != "permanent")
    if event == "drain":
        if batched:
            flow.run_due(batch_size=100)
        else:
            flow.run_due(batch_size=1)
    else:
        call = {"vm_stopped": lambda w: flow.vm_stopped(vm, wait=w),
                "vm_migrated": lambda w: flow.vm_migrated(vm, f"{tag}-h2", wait=w),
                "host_down": lambda w: flow.host_down(host, wait=w)}[event]
        call(batched)
        if not batched:
            for u in uuids:
                flow.runner.drive(u)
    backend.faults.clear()
    return _normal(flow, backend, uuids, tag)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(plan=st.lists(st.tuples(st.booleans(), FAULTS), min_size=1, max_size=5), event=EVENTS)
def test_batched_and_single_paths_end_alike(
    flow: Eipflow, backend: InMemoryDataplane, plan: list[tuple[bool, str | None]], event: str
) -> None:
    k = next(_COUNTER)
    batched = _scenario(flow, backend, plan, event, f"b{k}", 100 + 2 * (k % 60), batched=True)
    single = _scenario(flow, backend, plan, event, f"s{k}", 101 + 2 * (k % 60), batched=False)
    assert batched == single
    assert backend.overlaps == []


def test_a_worker_drains_a_backlog_in_batches(flow: Eipflow, backend: InMemoryDataplane) -> None:
    uuids = _seed(flow, 60, vm="vm-1", host="h1", net=95, tag="d", wait=False)
    worker = Worker(flow, heartbeat_interval=None, batch_size=25)
    before = len(backend.batches)
    with _counting(flow.store.engine) as seen:
        assert worker.run_once() == 60
    assert backend.batches[before:] == [25, 25, 10]
    assert seen["commits"] <= 3 * 4, seen  # claim, proceed, complete (+ a read's end) per batch
    assert {flow.get_eip(u).state for u in uuids} == {"attached"}
    with pytest.raises(ValueError, match="batch_size"):
        Worker(flow, batch_size=0)

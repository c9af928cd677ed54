"""The actors: threads (optionally in worker processes) that pull requests and call the public API."""

from __future__ import annotations

import resource
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import sqlalchemy as sa

from ..api import Eipflow
from ..backends.base import Backend
from ..backends.simulated import SimulatedDataplane
from ..errors import AttachFailed, EipflowError, EipNotFound, VipInUse
from ..runner import RetryPolicy
from ..store.schema import EipRow
from .chaos import ChaosBackend
from .config import Op, SimConfig, guest_ip_of, home_host, op_at, vip_of

EIP = EipRow.__table__  # type: ignore[attr-defined]


@dataclass
class _Tally:
    """What one process's actors saw (merged across processes; plain data so it pickles)."""

    outcomes: Counter[str] = field(default_factory=Counter)
    attach_latencies: list[float] = field(default_factory=list)
    failed_attaches: list[tuple[str, str, str]] = field(default_factory=list)  # (eip, nic, guest ip)
    errors: list[str] = field(default_factory=list)
    intervals: list[tuple[str, float, float]] = field(default_factory=list)
    backend_calls: Counter[str] = field(default_factory=Counter)
    overlaps: list[str] = field(default_factory=list)
    conflicts: int = 0
    peak_rss_kb: int = 0

    def merge(self, other: _Tally) -> None:
        self.outcomes.update(other.outcomes)
        self.attach_latencies += other.attach_latencies
        self.failed_attaches += other.failed_attaches
        self.errors += other.errors
        self.intervals += other.intervals
        self.backend_calls.update(other.backend_calls)
        self.overlaps += other.overlaps
        self.conflicts += other.conflicts
        self.peak_rss_kb = max(self.peak_rss_kb, other.peak_rss_kb)


class _Slots:
    """EIP slot → current uuid. A deleted EIP's slot is re-created (same VIP) on its next request."""

    def __init__(self, flow: Eipflow) -> None:
        self.flow = flow
        self._uuids: dict[int, str] = {}
        self._lock = threading.Lock()
        self._select = sa.select(EIP.c.uuid).where(EIP.c.vip == sa.bindparam("vip"))

    def current(self, slot: int, *, refresh: bool = False) -> str:
        with self._lock:
            known = self._uuids.get(slot)
        if known is not None and not refresh:
            return known
        vip = vip_of(slot)
        for _ in range(10):
            with self.flow.store.engine.connect().execution_options(eipflow_read=True) as conn:
                uuid = conn.execute(self._select, {"vip": vip}).scalar()
            if uuid is None:
                try:
                    uuid = self.flow.create_eip(vip, name=f"sim-{slot}").uuid
                except VipInUse:
                    continue  # another actor re-created it first: read it back
            with self._lock:
                self._uuids[slot] = uuid
            return str(uuid)
        raise RuntimeError(f"slot {slot}: could not find or create EIP {vip}")


_EXPECTED: Final = (EipflowError,)


def _act(flow: Eipflow, slots: _Slots, config: SimConfig, op: Op, tally: _Tally) -> None:
    vm = f"vm-{op.vm}"
    if op.kind in ("stop", "start", "migrate"):
        if op.kind == "stop":
            flow.vm_stopped(vm)
        elif op.kind == "start":
            flow.vm_started(vm, f"host-{op.host}")
        else:
            flow.vm_migrated(vm, f"host-{op.host}")
        tally.outcomes[f"{op.kind}.ok"] += 1
        return
    uuid = slots.current(op.slot)
    for attempt in range(2):
        try:
            if op.kind == "attach":
                nic, ip = f"nic-{op.vm}", guest_ip_of(op.vm, op.ip)
                started = time.perf_counter()
                try:
                    eip = flow.attach(uuid, nic=nic, guest_ip=ip, vm=vm, host=home_host(config, op.vm))
                except AttachFailed:
                    tally.failed_attaches.append((uuid, nic, ip))
                    raise
                if eip.state == "attached":
                    tally.attach_latencies.append(time.perf_counter() - started)
            elif op.kind == "detach":
                flow.detach(uuid)
            else:
                flow.delete_eip(uuid)
        except EipNotFound:
            if attempt == 0:
                uuid = slots.current(op.slot, refresh=True)  # deleted: the slot gets a fresh EIP
                continue
            raise
        tally.outcomes[f"{op.kind}.ok"] += 1
        return


def _actors(flow: Eipflow, config: SimConfig, next_index: Callable[[], int | None], tally: _Tally,
            progress: Callable[[], None]) -> None:
    slots = _Slots(flow)
    lock = threading.Lock()

    def actor() -> None:
        local = _Tally()
        while (index := next_index()) is not None:
            op = op_at(config, index)
            try:
                _act(flow, slots, config, op, local)
            except _EXPECTED as exc:
                local.outcomes[f"{op.kind}.{type(exc).__name__}"] += 1
            except Exception:  # noqa: BLE001 - an unexpected error fails the run; keep going to report it
                local.outcomes[f"{op.kind}.unexpected"] += 1
                local.errors.append(f"op {index} {op}: {traceback.format_exc(limit=6)}")
            progress()
        with lock:
            tally.merge(local)

    threads = [threading.Thread(target=actor, name=f"sim-actor-{n}") for n in range(config.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _counter_source(config: SimConfig, take: Callable[[], int]) -> Callable[[], int | None]:
    deadline = time.monotonic() + config.duration_s if config.duration_s is not None else None

    def next_index() -> int | None:
        if deadline is not None and config.ops is None and time.monotonic() >= deadline:
            return None
        index = take()
        if config.ops is not None and index >= config.ops:
            return None
        return index

    return next_index


def _open(config: SimConfig, url: str, dataplane: Backend, seed: int) -> tuple[Eipflow, ChaosBackend]:
    inner = config.backend_wrapper(dataplane) if config.backend_wrapper is not None else dataplane
    chaos = ChaosBackend(inner, latency=config.latency, failure_rate=config.failure_rate,
                         timeout_rate=config.timeout_rate, seed=seed)
    # Retries are due within milliseconds so the run quiesces quickly; the budget is large because
    # failures are random and retryable: a parked item would be a (false) in-flight violation.
    retry = RetryPolicy(max_attempts=1000, base_delay_s=0.001, factor=2.0, max_delay_s=0.05)
    flow = Eipflow.open(url, chaos, retry=retry, lease_seconds=30.0, create_schema=True)
    return flow, chaos


def _process_main(config: SimConfig, url: str, proc: int, counter: Any, results: Any) -> None:
    """A worker process: its own engine, DB-backed dataplane and actor threads; reports a tally."""
    tally = _Tally()
    try:
        flow, chaos = _open(config, url, SimulatedDataplane(), seed=config.seed * 1000 + proc + 1)

        def take() -> int:
            with counter.get_lock():
                value = int(counter.value)
                counter.value += 1
            return value

        with flow:
            _actors(flow, config, _counter_source(config, take), tally, lambda: None)
            tally.intervals = chaos.intervals
            tally.backend_calls = chaos.counts
            tally.overlaps = chaos.overlaps
            tally.conflicts = flow.runner.conflicts
    except Exception:  # noqa: BLE001 - reported to the parent, which fails the run
        tally.errors.append(f"process {proc}: {traceback.format_exc(limit=8)}")
    tally.peak_rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results.put(tally)

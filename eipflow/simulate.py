"""A seeded chaos run: many concurrent actors drive the public API, then the contract is checked.

``eipflow simulate`` (and the test suite) calls :func:`run`. Actors (threads, optionally in several
worker processes sharing the database and the database-backed simulated dataplane) pull requests
from a deterministic schedule — request *i* depends only on the seed and *i*, so the same seed
replays the same requests whatever the interleaving — and call attach/detach/VM stop/start/migrate/
delete as orchestrator workers would. Expected refusals (an illegal transition, a guest IP in use, an
attach that failed and rolled back) are counted, not errors. The backend is wrapped in
:class:`ChaosBackend`: random latency, failures and timeouts (effect applied, answer lost).

When the actors are done the run quiesces (drains due work until nothing is pending) and checks
:func:`eipflow.invariants.check` plus two rules only a run can see: every attach that raised
:class:`~eipflow.AttachFailed` was rolled back, and no EIP ever had two backend calls in flight —
also across processes, from the call intervals every process records on the shared monotonic clock.
"""

from __future__ import annotations

import ipaddress
import itertools
import multiprocessing
import os
import random
import resource
import shutil
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import sqlalchemy as sa
import structlog

from .api import Eipflow
from .backends.base import Backend, ListsRules
from .backends.simulated import InMemoryDataplane, SimulatedDataplane
from .errors import AttachFailed, BackendError, BackendTimeout, EipflowError, EipNotFound, InvalidInput, VipInUse
from .invariants import Violation, check
from .runner import RetryPolicy
from .store.schema import EipRow, TransitionRow, WorkRow
from .values import EipSpec, TransitionRecord

__all__ = [
    "DEFAULT_MIX",
    "OPS",
    "ChaosBackend",
    "Latency",
    "Op",
    "SimConfig",
    "SimReport",
    "op_at",
    "parse_mix",
    "run",
]

log = structlog.get_logger(__name__)

OPS: Final = ("attach", "detach", "stop", "start", "migrate", "delete")
DEFAULT_MIX: Final[Mapping[str, float]] = {
    "attach": 5, "detach": 2, "stop": 1, "start": 1, "migrate": 1, "delete": 0.5,
}
#: guest IPs per VM NIC: few enough that two attaches sometimes pick the same one (GuestIpInUse)
IPS_PER_VM: Final = 4
_VIP_BASE: Final = int(ipaddress.IPv4Address("100.64.0.0"))
_GUEST_BASE: Final = int(ipaddress.IPv4Address("10.0.0.0"))
EIP = EipRow.__table__  # type: ignore[attr-defined]
WORK = WorkRow.__table__  # type: ignore[attr-defined]
HISTORY = TransitionRow.__table__  # type: ignore[attr-defined]


# -- configuration --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Latency:
    """Backend latency distribution, in seconds: ``fixed``, ``uniform`` (low, high) or ``exp`` (mean)."""

    kind: str = "fixed"
    a: float = 0.0
    b: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Latency:
        """``0``, ``fixed:2``, ``uniform:1,5`` or ``exp:2`` — milliseconds."""
        kind, _, args = text.strip().partition(":")
        if not args:
            kind, args = "fixed", kind
        try:
            nums = [float(x) / 1000 for x in args.split(",")]
        except ValueError:
            raise InvalidInput(f"latency {text!r}: expected fixed:MS, uniform:LOW,HIGH or exp:MEAN") from None
        if any(n < 0 for n in nums):
            raise InvalidInput(f"latency {text!r}: milliseconds must not be negative")
        if kind == "fixed" and len(nums) == 1:
            return cls("fixed", nums[0])
        if kind == "uniform" and len(nums) == 2 and nums[0] <= nums[1]:
            return cls("uniform", nums[0], nums[1])
        if kind == "exp" and len(nums) == 1:
            return cls("exp", nums[0])
        raise InvalidInput(f"latency {text!r}: expected fixed:MS, uniform:LOW,HIGH or exp:MEAN")

    def sample(self, rng: random.Random) -> float:
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        if self.kind == "exp":
            return rng.expovariate(1 / self.a) if self.a > 0 else 0.0
        return self.a


def parse_mix(text: str) -> dict[str, float]:
    """``attach=4,detach=2,…`` → weights; unnamed operations keep weight 0."""
    mix = dict.fromkeys(OPS, 0.0)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight = part.partition("=")
        if not sep or name.strip() not in mix:
            raise InvalidInput(f"mix {part!r}: expected NAME=WEIGHT with NAME one of {', '.join(OPS)}")
        try:
            mix[name.strip()] = float(weight)
        except ValueError:
            raise InvalidInput(f"mix {part!r}: weight is not a number") from None
        if mix[name.strip()] < 0:
            raise InvalidInput(f"mix {part!r}: weight must not be negative")
    if sum(mix.values()) <= 0:
        raise InvalidInput("mix: at least one weight must be positive")
    return mix


@dataclass(frozen=True)
class SimConfig:
    """One simulation run. ``ops`` or ``duration_s`` bounds the actors' phase (``ops`` wins if both)."""

    db_url: str | None = None  # None: a temporary SQLite file, removed when the run passes
    eips: int = 200
    vms: int = 50
    hosts: int = 4
    workers: int = 4
    processes: int = 0  # 0: the actors are threads of this process (in-memory dataplane)
    ops: int | None = 2000
    duration_s: float | None = None
    mix: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    latency: Latency = field(default_factory=Latency)
    failure_rate: float = 0.0
    timeout_rate: float = 0.0
    seed: int = 0
    quiesce_timeout_s: float = 120.0
    #: wraps the base dataplane before the chaos layer (tests inject a broken backend here); must be
    #: picklable (a module-level callable) when ``processes`` > 0
    backend_wrapper: Callable[[Backend], Backend] | None = None

    def validate(self) -> None:
        if self.eips < 1 or self.vms < 1 or self.hosts < 1 or self.workers < 1 or self.processes < 0:
            raise InvalidInput("simulate: --eips, --vms, --hosts and --workers must be at least 1")
        if self.ops is None and self.duration_s is None:
            raise InvalidInput("simulate: give --ops or --duration")
        if not 0 <= self.failure_rate + self.timeout_rate <= 1 or min(self.failure_rate, self.timeout_rate) < 0:
            raise InvalidInput("simulate: failure and timeout rates are fractions in [0, 1] that sum to ≤ 1")
        if self.eips > 4_000_000 or self.vms * IPS_PER_VM > 16_000_000:
            raise InvalidInput("simulate: too many EIPs or VMs for the simulated address ranges")


# -- the schedule ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Op:
    """One request of the schedule."""

    index: int
    kind: str
    slot: int  # EIP slot (attach, detach, delete)
    vm: int  # VM index (attach, stop, start, migrate)
    host: int  # host index (start, migrate; the attach's host hint)
    ip: int  # which of the VM's guest IPs an attach uses


def op_at(config: SimConfig, index: int) -> Op:
    """Request ``index`` of the schedule: a function of the seed and the index only."""
    rng = random.Random(f"{config.seed}:{index}")
    kinds = [k for k in OPS if config.mix.get(k, 0) > 0]
    kind = rng.choices(kinds, weights=[config.mix[k] for k in kinds])[0]
    return Op(index, kind, rng.randrange(config.eips), rng.randrange(config.vms), rng.randrange(config.hosts),
              rng.randrange(IPS_PER_VM))


def vip_of(slot: int) -> str:
    return str(ipaddress.IPv4Address(_VIP_BASE + slot))


def guest_ip_of(vm: int, k: int) -> str:
    return str(ipaddress.IPv4Address(_GUEST_BASE + vm * IPS_PER_VM + k + 1))


def home_host(config: SimConfig, vm: int) -> str:
    return f"host-{vm % config.hosts}"


# -- the chaos backend ----------------------------------------------------------------------------
class ChaosBackend:
    """Wraps a dataplane: random latency, failures (before the effect) and timeouts (after it).

    Records every call's interval on the system-wide monotonic clock, so the parent can prove no EIP
    ever had two backend calls in flight, even when they came from different processes.
    """

    def __init__(self, inner: Backend, *, latency: Latency, failure_rate: float, timeout_rate: float,
                 seed: int) -> None:
        self.inner = inner
        self.latency = latency
        self.failure_rate = failure_rate
        self.timeout_rate = timeout_rate
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._in_flight: Counter[str] = Counter()
        self.own_overlaps: list[str] = []
        self.intervals: list[tuple[str, float, float]] = []
        self.counts: Counter[str] = Counter()

    def bind(self, engine: Any) -> None:
        bind = getattr(self.inner, "bind", None)
        if callable(bind):
            bind(engine)

    @property
    def overlaps(self) -> list[str]:
        """EIPs that saw two calls in flight at once, here or in the wrapped dataplane."""
        return [*self.own_overlaps, *getattr(self.inner, "overlaps", [])]

    def rules(self, host_uuid: str | None = None) -> list[EipSpec]:
        if not isinstance(self.inner, ListsRules):
            raise TypeError(f"{type(self.inner).__name__} cannot list its rules")
        return self.inner.rules(host_uuid)

    def apply(self, spec: EipSpec) -> None:
        self._call("apply", spec)

    def revoke(self, spec: EipSpec) -> None:
        self._call("revoke", spec)

    def _call(self, action: str, spec: EipSpec) -> None:
        with self._lock:
            self._in_flight[spec.eip_uuid] += 1
            if self._in_flight[spec.eip_uuid] > 1:
                self.own_overlaps.append(spec.eip_uuid)
            draw = self._rng.random()
            delay = self.latency.sample(self._rng)
        started = time.monotonic()
        outcome = "ok"
        try:
            if delay > 0:
                time.sleep(delay)  # the simulated backend's latency
            if draw < self.failure_rate:
                outcome = "failed"
                raise BackendError(f"chaos: injected {action} failure")
            getattr(self.inner, action)(spec)
            if draw < self.failure_rate + self.timeout_rate:
                outcome = "timeout"
                raise BackendTimeout(f"chaos: {action} applied but the answer was lost")
        except BackendError:
            raise
        except Exception:
            outcome = "error"
            raise
        finally:
            ended = time.monotonic()
            with self._lock:
                self._in_flight[spec.eip_uuid] -= 1
                self.intervals.append((spec.eip_uuid, started, ended))
                self.counts[f"{action}.{outcome}"] += 1


def _overlapping(intervals: list[tuple[str, float, float]]) -> list[str]:
    """EIPs whose recorded backend calls overlap in time (intervals from every actor and process)."""
    by_eip: dict[str, list[tuple[float, float]]] = {}
    for uuid, start, end in intervals:
        by_eip.setdefault(uuid, []).append((start, end))
    out = []
    for uuid, spans in by_eip.items():
        spans.sort()
        if any(b_start < a_end for (_, a_end), (b_start, _) in itertools.pairwise(spans)):
            out.append(uuid)
    return sorted(out)


# -- actors ---------------------------------------------------------------------------------------
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


# -- the report -----------------------------------------------------------------------------------
@dataclass
class SimReport:
    """The outcome of a run. ``ok`` is false when an invariant is violated or an unexpected error occurred."""

    config: dict[str, Any]
    db_url: str
    elapsed_s: float
    actors_s: float
    quiesce_s: float
    ops: int
    outcomes: dict[str, int]
    transitions: int
    transitions_per_s: float
    conflicts: int
    backend_retries: int
    backend_calls: dict[str, int]
    attach_latency_ms: dict[str, float]
    peak_rss_mb: float
    violations: list[Violation]
    errors: list[str]
    details: list[str]  # the first violations' EIP, history and dataplane, for humans

    @property
    def ok(self) -> bool:
        return not self.violations and not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "config": self.config, "db_url": self.db_url, "elapsed_s": round(self.elapsed_s, 3),
            "actors_s": round(self.actors_s, 3), "quiesce_s": round(self.quiesce_s, 3), "ops": self.ops,
            "outcomes": dict(sorted(self.outcomes.items())), "transitions": self.transitions,
            "transitions_per_s": round(self.transitions_per_s, 1), "conflicts": self.conflicts,
            "backend_retries": self.backend_retries, "backend_calls": dict(sorted(self.backend_calls.items())),
            "attach_latency_ms": self.attach_latency_ms, "peak_rss_mb": round(self.peak_rss_mb, 1),
            "violations": [{"rule": v.rule, "eip_uuid": v.eip_uuid, "detail": v.detail} for v in self.violations],
            "errors": self.errors, "details": self.details,
        }

    def text(self) -> str:
        lat = self.attach_latency_ms
        calls = ", ".join(f"{k}={v}" for k, v in sorted(self.backend_calls.items())) or "none"
        done = sum(v for k, v in self.outcomes.items() if k.endswith(".ok"))
        refused = {k: v for k, v in sorted(self.outcomes.items()) if not k.endswith(".ok")}
        lines = [
            f"simulate: {'PASS' if self.ok else 'FAIL'} on {self.db_url}",
            f"  requests         {self.ops} in {self.actors_s:.2f}s ({done} completed; quiesced in "
            f"{self.quiesce_s:.2f}s)",
            f"  refused          {', '.join(f'{k}={v}' for k, v in refused.items()) or 'none'}",
            f"  transitions      {self.transitions} ({self.transitions_per_s:.0f}/s)",
            f"  conflicts        {self.conflicts} lost compare-and-swaps; {self.backend_retries} backend retries",
            f"  backend calls    {calls}",
            f"  attach latency   p50 {lat.get('p50', 0):.1f} ms, p95 {lat.get('p95', 0):.1f} ms, "
            f"p99 {lat.get('p99', 0):.1f} ms ({int(lat.get('n', 0))} attaches)",
            f"  peak RSS         {self.peak_rss_mb:.1f} MB",
        ]
        if self.violations:
            lines.append(f"  VIOLATIONS       {len(self.violations)} (first ones below)")
            lines += [f"    {v}" for v in self.violations[:10]]
            lines += self.details
        if self.errors:
            lines.append(f"  UNEXPECTED ERRORS {len(self.errors)} (first below)")
            lines += ["    " + e.replace("\n", "\n    ") for e in self.errors[:3]]
        return "\n".join(lines)


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"n": len(ordered), "p50": round(at(0.50), 2), "p95": round(at(0.95), 2), "p99": round(at(0.99), 2),
            "max": round(ordered[-1] * 1000, 2)}


def _rolled_back(
    failed: list[tuple[str, str, str]], histories: Mapping[str, list[TransitionRecord]]
) -> list[Violation]:
    """Every attach that raised AttachFailed went to ``rolling_back`` and from there to detached/deleted."""
    out = []
    for uuid, nic, ip in failed:
        records = histories.get(uuid, [])
        ok = False
        for n, rec in enumerate(records):
            if rec.event != "attach" or (rec.details.get("nic"), rec.details.get("guest_ip")) != (nic, ip):
                continue
            later = records[n + 1:]
            for m, nxt in enumerate(later):
                if nxt.event == "attach":
                    break
                if nxt.to_state == "rolling_back":
                    leave = next((r for r in later[m + 1:] if r.to_state != "rolling_back"), None)
                    ok = ok or (leave is not None and leave.to_state in ("detached", "deleted"))
                    break
        if not ok:
            out.append(Violation("attach.not_rolled_back", uuid,
                                 f"attach to {nic}/{ip} raised AttachFailed but its binding was not rolled back"))
    return out


def _explain(flow: Eipflow, violations: list[Violation], histories: Mapping[str, list[TransitionRecord]],
             limit: int = 3) -> list[str]:
    lines: list[str] = []
    shown: set[str] = set()
    try:
        rules = flow.dataplane()
    except InvalidInput:
        rules = []
    for v in violations:
        if v.eip_uuid is None or v.eip_uuid in shown:
            continue
        shown.add(v.eip_uuid)
        row = flow.store.get(v.eip_uuid)
        lines.append(f"  EIP {v.eip_uuid}: " + (f"{row.state} v{row.version} desired={row.desired} "
                                                 f"nic={row.vm_nic_uuid} ip={row.guest_ip} host={row.host_uuid} "
                                                 f"applied={row.applied_host} work={row.work_id}"
                                                 if row is not None else "row gone"))
        for rec in histories.get(v.eip_uuid, [])[-15:]:
            lines.append(f"    v{rec.version} {rec.from_state or '-'} --{rec.event}--> {rec.to_state} {rec.details}")
        held = [r for r in rules if r.eip_uuid == v.eip_uuid]
        lines.append("    dataplane: " + (", ".join(f"{r.host_uuid}:{r.vm_nic_uuid}/{r.guest_ip}" for r in held)
                                          or "no rule"))
        if len(shown) >= limit:
            break
    return lines


# -- the run --------------------------------------------------------------------------------------
def _quiesce(flow: Eipflow, timeout_s: float) -> None:
    """Drain due work (retries are due within milliseconds) until nothing is pending or running."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ran = flow.run_due()
        if not flow.store.list_work(statuses=["pending", "running"]):
            return
        if ran == 0:
            time.sleep(0.005)  # the next retry is not due yet (or a lease is still held)


def _setup(flow: Eipflow, config: SimConfig) -> None:
    with flow.store.engine.connect() as conn:
        if conn.execute(sa.select(sa.func.count()).select_from(EIP)).scalar():
            raise InvalidInput(f"simulate needs an empty database; {flow.url} already holds EIPs")
    for slot in range(config.eips):
        flow.create_eip(vip_of(slot), name=f"sim-{slot}")
    for vm in range(config.vms):
        flow.vm_started(f"vm-{vm}", home_host(config, vm))


def run(config: SimConfig, *, progress: Callable[[int, int | None], None] | None = None) -> SimReport:
    """Run one simulation and check the behaviour contract at quiescence.

    Args:
        config: sizes, mix, faults and seed.
        progress: called with (requests done, total or ``None``) from actor threads (the CLI's bar).
    """
    config.validate()
    tmpdir = None
    url = config.db_url
    if url is None:
        tmpdir = tempfile.mkdtemp(prefix="eipflow-sim-")
        url = f"sqlite:///{os.path.join(tmpdir, 'sim.db')}"
    dataplane: Backend = SimulatedDataplane() if config.processes > 0 else InMemoryDataplane()
    flow, chaos = _open(config, url, dataplane, seed=config.seed * 1000)
    done = 0
    done_lock = threading.Lock()

    def tick() -> None:
        nonlocal done
        with done_lock:
            done += 1
            value = done
        if progress is not None:
            progress(value, config.ops)

    report: SimReport | None = None
    try:
        _setup(flow, config)
        with flow.store.engine.connect() as conn:
            transitions_before = conn.execute(sa.select(sa.func.count()).select_from(HISTORY)).scalar() or 0
        tally = _Tally()
        started = time.monotonic()
        if config.processes == 0:
            counter = iter(range(1 << 62))
            take_lock = threading.Lock()

            def take() -> int:
                with take_lock:
                    return next(counter)

            _actors(flow, config, _counter_source(config, take), tally, tick)
        else:
            tally.merge(_run_processes(config, url, tick))
        actors_s = time.monotonic() - started
        _quiesce(flow, config.quiesce_timeout_s)
        elapsed = time.monotonic() - started
        tally.intervals += chaos.intervals
        tally.backend_calls.update(chaos.counts)
        tally.overlaps += chaos.overlaps
        tally.conflicts += flow.runner.conflicts
        report = _report(flow, chaos, config, url, tally, transitions_before, actors_s, elapsed)
        return report
    finally:
        flow.close()
        if tmpdir is not None and report is not None and report.ok:
            shutil.rmtree(tmpdir, ignore_errors=True)


def _run_processes(config: SimConfig, url: str, tick: Callable[[], None]) -> _Tally:
    # spawn, not fork: the parent holds threads and pooled connections that must not be duplicated.
    ctx = multiprocessing.get_context("spawn")
    counter = ctx.Value("q", 0)
    results = ctx.Queue()
    procs = [ctx.Process(target=_process_main, args=(config, url, n, counter, results), name=f"sim-proc-{n}")
             for n in range(config.processes)]
    for p in procs:
        p.start()
    tally = _Tally()
    seen = 0
    got = 0
    while got < len(procs):
        try:
            tally.merge(results.get(timeout=0.2))
            got += 1
        except Exception:  # noqa: BLE001 - queue.Empty: report progress, check for dead children
            if all(not p.is_alive() for p in procs) and results.empty():
                tally.errors.append("a worker process died without reporting")
                break
        with counter.get_lock():
            now = int(counter.value)
        for _ in range(seen, min(now, config.ops or now)):
            tick()
        seen = max(seen, min(now, config.ops or now))
    for p in procs:
        p.join()
    return tally


def _report(flow: Eipflow, chaos: ChaosBackend, config: SimConfig, url: str, tally: _Tally,
            transitions_before: int, actors_s: float, elapsed: float) -> SimReport:
    histories: dict[str, list[TransitionRecord]] = {}
    for rec in flow.store.all_history():
        histories.setdefault(rec.eip_uuid, []).append(rec)
    violations = check(flow.store, chaos)
    violations += [Violation("backend.overlap", u, "two backend calls were in flight at once (intervals)")
                   for u in _overlapping(tally.intervals) if u not in set(chaos.overlaps)]
    violations += [Violation("backend.overlap", u, "two backend calls were in flight at once (worker process)")
                   for u in sorted(set(tally.overlaps) - set(chaos.overlaps))]
    violations += _rolled_back(tally.failed_attaches, histories)
    transitions = sum(len(h) for h in histories.values()) - transitions_before
    with flow.store.engine.connect() as conn:
        retries = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(WORK.c.attempts - 1), 0)).where(WORK.c.attempts > 1)
        ).scalar() or 0
    rss_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, tally.peak_rss_kb)
    cfg = {
        "eips": config.eips, "vms": config.vms, "hosts": config.hosts, "workers": config.workers,
        "processes": config.processes, "ops": config.ops, "duration_s": config.duration_s,
        "mix": dict(config.mix), "latency": f"{config.latency.kind}:{config.latency.a * 1000:g},"
        f"{config.latency.b * 1000:g}ms", "failure_rate": config.failure_rate, "timeout_rate": config.timeout_rate,
        "seed": config.seed,
    }
    return SimReport(
        config=cfg, db_url=flow.url, elapsed_s=elapsed, actors_s=actors_s, quiesce_s=elapsed - actors_s,
        ops=sum(tally.outcomes.values()), outcomes=dict(tally.outcomes), transitions=transitions,
        transitions_per_s=transitions / elapsed if elapsed > 0 else 0.0, conflicts=tally.conflicts,
        backend_retries=int(retries), backend_calls=dict(tally.backend_calls),
        attach_latency_ms=_percentiles(tally.attach_latencies), peak_rss_mb=rss_kb / 1024,
        violations=violations, errors=tally.errors,
        details=_explain(flow, violations, histories) if violations else [],
    )

"""The report: the contract check at quiescence, the run's figures, and their text and JSON forms."""

from __future__ import annotations

import resource
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..api import Eipflow
from ..errors import InvalidInput
from ..invariants import Violation, check
from ..store.schema import WorkRow
from ..values import TransitionRecord
from .actors import _Tally
from .chaos import ChaosBackend, _overlapping
from .config import SimConfig

WORK = WorkRow.__table__  # type: ignore[attr-defined]


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

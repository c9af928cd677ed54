"""(3) Scale: transition cost with a small vs a large table; VM stop releasing 10k EIPs of one VM.

Part A: the same ``Runner.fire`` transition and the raw driver's, on a table of 10k EIP rows and on a big
one (default 200k rows and 1M history rows; ``--big`` for 1M rows and 3M history rows: bulk loading takes
minutes), same process, interleaved. The ratio big/small must stay near 1 (indexed lookups only).

Part B: one VM holding 10k attached EIPs stops: ``Eipflow.vm_stopped(vm)`` (records the stop and
releases every EIP: intent, claim, revoke, revoke_ok each). Reported: seconds, and SQL statements
counted at the driver both as calls (an executemany is one) and as SQLite executions (its trace callback:
an executemany counts per row; COMMIT included) — SQLAlchemy's ``before_cursor_execute``, used before,
misses the fast path, which runs on the raw DBAPI connection.

Run: ``python benchmarks/bench_scale.py [--big] [--stop-eips 10000] [--synchronous NORMAL] [--seconds 2]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))
from _common import Target, bulk_load, machine, median, open_flow, run_threads, sqlite_statements, uuids, workdir
from bench_transition import maker, quiet_logging


def part_a(big_rows: int, big_history: int, seconds: float, rounds: int, sync: str) -> list[str]:
    base = workdir()
    big = f"{big_rows:,} rows, {big_rows * big_history:,} history"
    sizes = {"10k rows, 10k history": (10_000, 1), big: (big_rows, big_history)}
    flows: dict[str, tuple[Target, Any, list[str]]] = {}
    for label, (rows, hist) in sizes.items():
        path = os.path.join(base, f"scale-{rows}.db")
        t = Target(label, "sqlite", f"sqlite:///{path}", sync, path)
        flow = open_flow(t)
        started = time.perf_counter()
        bulk_load(flow.store.engine, rows, state="applying", bound=True, host="host-1", history_per_eip=hist)
        print(f"  loaded {label} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        # Writes spread over the whole table (a sample every rows/10k), so the B-tree depth counts.
        ids = uuids(rows)[:: max(1, rows // 10_000)]
        flows[label] = (t, flow, ids)
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for label, (t, flow, ids) in flows.items():
            for v in ("raw", "eipflow fire"):
                opened: list[Any] = []
                m = run_threads(1, seconds, maker(v, t, flow, ids, 1, opened))
                for raw in opened:
                    raw.close()
                samples.setdefault((label, v), []).append(m.rate)
    lines = ["| table | raw /s | eipflow fire /s | fire / raw |", "|---|---|---|---|"]
    small = None
    for label in flows:
        raw, fire = median(samples[(label, "raw")]), median(samples[(label, "eipflow fire")])
        lines.append(f"| {label} | {raw:,.0f} | {fire:,.0f} | {fire / raw:.2f} |")
        small = small or (raw, fire)
    large = (median(samples[(big, "raw")]), median(samples[(big, "eipflow fire")]))
    assert small is not None
    lines.append(f"\nbig / small: raw {large[0] / small[0]:.2f}, eipflow {large[1] / small[1]:.2f}")
    for _, flow, _ in flows.values():
        flow.close()
    return lines


def part_b(n: int, sync: str, wait: bool) -> str:
    path = os.path.join(workdir(), "stop.db")
    t = Target("stop", "sqlite", f"sqlite:///{path}", sync, path)
    flow = open_flow(t)
    bulk_load(flow.store.engine, n, state="attached", bound=True, vm="vm-big", host="host-1")
    flow.store.record_vm("vm-big", "host-1", running=True)
    with sqlite_statements(flow.store.engine) as counting:
        started = time.perf_counter()
        released = flow.vm_stopped("vm-big", wait=wait)
        ran = 0 if wait else flow.run_due()
        elapsed = time.perf_counter() - started
        calls, executions = Counter(counting.calls), Counter(counting.executions)  # before the pool empties
    states = Counter(e.state for e in flow.list_eips())
    flow.close()
    total, ran_total = sum(calls.values()), sum(executions.values())
    return (f"VM stop releasing {n:,} EIPs (wait={wait}{'' if wait else f', then run_due ran {ran}'}): "
            f"{elapsed:.1f}s; {total:,} driver calls ({total / n:.1f} per EIP: {dict(calls)}); "
            f"{ran_total:,} statement executions in SQLite ({ran_total / n:.1f} per EIP: {dict(executions)}); "
            f"{len(released)} returned; states after: {dict(states)}")

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big", action="store_true", help="1M EIP rows and 3M history rows (slow to load)")
    parser.add_argument("--stop-eips", type=int, default=10_000)
    parser.add_argument("--synchronous", default="NORMAL", help="SQLite durability (NORMAL isolates CPU/index cost)")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-a", action="store_true")
    parser.add_argument("--skip-b", action="store_true")
    args = parser.parse_args(argv)
    quiet_logging()
    print(f"machine: {machine()}; SQLite WAL synchronous={args.synchronous}")
    if not args.skip_a:
        rows, hist = (1_000_000, 3) if args.big else (200_000, 5)
        print("\n".join(part_a(rows, hist, args.seconds, args.rounds, args.synchronous)))
    if not args.skip_b:
        print(part_b(args.stop_eips, args.synchronous, wait=True))
        print(part_b(args.stop_eips, args.synchronous, wait=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

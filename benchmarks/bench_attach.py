"""(2) The full attach flow: request → binding → applying → attached, with a no-op backend.

Each thread attaches its own detached EIPs (``Eipflow.attach``, ``wait=True``: the flow runs inline:
attach intent, claim, proceed, backend apply, apply_ok). Reported: attaches/s, latency p50/p95/p99,
on SQLite the statements one attach issues (counted at the driver) and,
as the same-run baseline, the raw driver's version-checked transition rate (an attach is 3 state
transitions, a claim and a VM fact; the ratio says how many raw transitions one attach costs).

Run: ``python benchmarks/bench_attach.py [--db sqlite,postgres,mariadb] [--seconds 2] [--workers 1,4,16]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))
from _common import (
    bulk_load,
    fresh,
    machine,
    open_flow,
    partition,
    pct,
    run_threads,
    server_versions,
    sqlite_statements,
    targets,
    uuids,
    workdir,
)
from bench_transition import RawConn, quiet_logging

PRELOAD = 40_000


def statements_per_attach(flow: Any, n: int = 50) -> str:
    """SQL statements and transactions of one attach (SQLite, counted at the driver), over ``n`` fresh EIPs."""
    ids = uuids(PRELOAD + n)[PRELOAD:]
    bulk_load(flow.store.engine, n, state="detached", start=PRELOAD)
    with sqlite_statements(flow.store.engine) as counting:
        for i, u in enumerate(ids):
            flow.attach(u, nic=f"cnic-{i}", guest_ip=f"172.31.{i >> 8}.{i & 255}", vm=f"cvm-{i}", host="host-1")
        calls, runs = dict(counting.calls), dict(counting.executions)

    def per(counts: dict[str, int]) -> str:
        detail = ", ".join(f"{k} {v / n:.1f}" for k, v in sorted(counts.items()))
        return f"{sum(counts.values()) / n:.1f} ({detail})"

    return f"driver calls per attach {per(calls)}; SQLite executions {per(runs)}"

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="sqlite,postgres,mariadb")
    parser.add_argument("--workers", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    quiet_logging()
    workers_list = [int(w) for w in args.workers.split(",")]
    lines = ["| store | workers | attaches/s | p50 ms | p95 ms | p99 ms | raw transitions/s | raw per attach |",
             "|---|---|---|---|---|---|---|---|"]
    counts: list[str] = []
    for target in targets(args.db.split(","), workdir()):
        with fresh(target) as t:
            flow = open_flow(t)
            ids = uuids(PRELOAD)
            bulk_load(flow.store.engine, PRELOAD, state="detached")
            # A separate bound block for the raw baseline (applying, self-transition).
            raw_ids = uuids(2000, prefix=7)
            from _common import NOW

            from eipflow.store.schema import EipRow, TransitionRow
            with flow.store.engine.begin() as conn:
                conn.execute(EipRow.__table__.insert(), [
                    {"uuid": u, "name": None, "vip": f"198.19.{i >> 8}.{i & 255}", "state": "applying", "version": 1,
                     "desired": "attached", "vm_nic_uuid": f"rnic-{i}", "guest_ip": f"172.16.{i >> 8}.{i & 255}",
                     "vm_uuid": f"rvm-{i}", "host_uuid": "host-1", "applied_host": "host-1",
                     "attach_confirmed": False, "work_id": None, "last_error": None, "created_at": NOW,
                     "updated_at": NOW} for i, u in enumerate(raw_ids)])
                conn.execute(TransitionRow.__table__.insert(), [
                    {"eip_uuid": u, "event": "create", "from_state": "", "to_state": "detached", "version": 1,
                     "actor": "bench", "op_id": None, "at": NOW, "details": None} for u in raw_ids])
            size = PRELOAD // len(workers_list)
            for k, w in enumerate(workers_list):
                block = ids[k * size:(k + 1) * size]  # fresh detached EIPs for each figure

                def make(n: int, block: list[str] = block, w: int = w, flow: Any = flow) -> Callable[[], None]:
                    mine = iter(partition(block, w, n))

                    def step() -> None:
                        u = next(mine)
                        i = int(u.replace("-", ""), 16)
                        ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
                        eip = flow.attach(u, nic=f"nic-{i}", guest_ip=ip, vm=f"vm-{i}", host="host-1")
                        if eip.state != "attached":
                            raise RuntimeError(f"attach ended {eip.state}")

                    return step

                m = run_threads(w, args.seconds, make, latencies=True)
                opened: list[Any] = []

                def make_raw(n: int, w: int = w, opened: list[Any] = opened, raw_ids: list[str] = raw_ids,
                             t: Any = t) -> Callable[[], None]:
                    raw = RawConn(t)
                    opened.append(raw)
                    mine = partition(raw_ids, w, n)
                    versions = {u: raw.version(u) for u in mine}
                    pos = [0]

                    def step() -> None:
                        u = mine[pos[0] % len(mine)]
                        pos[0] += 1
                        versions[u] = raw.transition(u, versions[u], False)

                    return step

                r = run_threads(w, args.seconds, make_raw)
                for raw in opened:
                    raw.close()
                lines.append(f"| {t.label} | {w} | {m.rate:,.0f} | {pct(m.latencies, .5) * 1e3:.2f} | "
                             f"{pct(m.latencies, .95) * 1e3:.2f} | {pct(m.latencies, .99) * 1e3:.2f} | {r.rate:,.0f} | "
                             f"{r.rate / m.rate:.1f} |")
                print(lines[-1], file=sys.stderr)
            if t.kind == "sqlite":
                counts.append(f"{t.label}: {statements_per_attach(flow)}")
            flow.close()
    print(f"machine: {machine()}; {', '.join(server_versions()) or 'no servers'}")
    print("\n".join(lines))
    print("\n".join(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""(5) Memory: RSS of one worker draining N work items stays bounded.

Bulk-loads N EIPs in ``binding`` (bound, VM running) each with its pending apply item, then drains
them with :class:`eipflow.worker.Worker` (``run_once``; ``Eipflow.run_due`` if the worker is absent)
and a no-op backend, sampling RSS from ``/proc/self/status`` every half second.

Run: ``python benchmarks/bench_memory.py [--items 100000] [--synchronous NORMAL]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import NOW, Target, machine, open_flow, uuids, vip, workdir
from bench_transition import quiet_logging


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def load(flow: object, n: int, chunk: int = 20_000) -> None:
    from eipflow.store.schema import EipRow, TransitionRow, VmRow, WorkRow

    engine = flow.store.engine  # type: ignore[attr-defined]
    ids = uuids(n)
    for lo in range(0, n, chunk):
        eips, hist, work = [], [], []
        for i in range(lo, min(n, lo + chunk)):
            u, ip = ids[i], f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
            work.append({"id": i + 1, "eip_uuid": u, "action": "apply", "vip": vip(i), "vm_nic_uuid": f"nic-{i}",
                         "guest_ip": ip, "host_uuid": None, "status": "pending", "attempts": 0, "due_at": NOW,
                         "lease_owner": None, "lease_expires_at": None, "last_error": None, "cleanup": False,
                         "created_at": NOW, "updated_at": NOW})
            eips.append({"uuid": u, "name": None, "vip": vip(i), "state": "binding", "version": 2,
                         "desired": "attached", "vm_nic_uuid": f"nic-{i}", "guest_ip": ip, "vm_uuid": "vm-1",
                         "host_uuid": "host-1", "applied_host": None, "attach_confirmed": False, "work_id": i + 1,
                         "last_error": None, "created_at": NOW, "updated_at": NOW})
            hist += [{"eip_uuid": u, "event": "create", "from_state": "", "to_state": "detached", "version": 1,
                      "actor": "bench", "op_id": None, "at": NOW, "details": None},
                     {"eip_uuid": u, "event": "attach", "from_state": "detached", "to_state": "binding",
                      "version": 2, "actor": "bench", "op_id": None, "at": NOW, "details": None}]
        with engine.begin() as conn:
            conn.execute(WorkRow.__table__.insert(), work)
            conn.execute(EipRow.__table__.insert(), eips)
            conn.execute(TransitionRow.__table__.insert(), hist)
    with engine.begin() as conn:
        conn.execute(VmRow.__table__.insert(), [{"uuid": "vm-1", "host_uuid": "host-1", "running": True,
                                                 "version": 1, "updated_at": NOW}])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--synchronous", default="NORMAL")
    args = parser.parse_args(argv)
    quiet_logging()
    path = os.path.join(workdir(), "memory.db")
    flow = open_flow(Target("mem", "sqlite", f"sqlite:///{path}", args.synchronous, path))
    load(flow, args.items)
    # The item ids were given explicitly: on SQLite the next autoincrement follows the max id anyway.
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    started = time.perf_counter()

    def sample() -> None:
        while not stop.wait(0.5):
            samples.append((time.perf_counter() - started, rss_mb()))

    sampler = threading.Thread(target=sample, name="rss-sampler")
    before = rss_mb()
    sampler.start()
    try:
        try:
            from eipflow.worker import Worker

            ran = Worker(flow, heartbeat_interval=0).run_once()
            how = "Worker.run_once"
        except ImportError:
            ran = flow.run_due()
            how = "Eipflow.run_due"
    finally:
        stop.set()
        sampler.join()
    elapsed = time.perf_counter() - started
    states: dict[str, int] = {}
    for e in flow.list_eips():
        states[e.state] = states.get(e.state, 0) + 1
    flow.close()
    rss = [r for _, r in samples] or [rss_mb()]
    tenth = [r for t, r in samples if t >= elapsed * 0.1] or rss
    print(f"machine: {machine()}; SQLite WAL synchronous={args.synchronous}")
    print(f"{how} drained {ran:,} items in {elapsed:.0f}s ({ran / elapsed:,.0f} items/s); states after: {states}")
    print(f"RSS: before drain {before:.1f} MB, at 10% of the drain {tenth[0]:.1f} MB, peak {max(rss):.1f} MB, "
          f"end {rss[-1]:.1f} MB (growth after warm-up {max(rss) - tenth[0]:+.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

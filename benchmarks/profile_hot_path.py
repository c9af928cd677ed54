"""Where one transition's time goes: cProfile of ``Runner.fire`` on SQLite, per-call costs in µs.

Run: ``python benchmarks/profile_hot_path.py [--n 3000] [--synchronous NORMAL] [--top 25] [--info-logs]``.
Prints the cumulative µs per transition of the pieces (the fast path's transaction, the pinned-connection
lookup, the optimistic compare-and-swap, driver statements, row decoding, runner._plan, table.resolve,
logging; Store.get/commit when run with ``EIPFLOW_FASTPATH=0``) and the top functions by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import sys
import time

import structlog

sys.path.insert(0, os.path.dirname(__file__))
from _common import Target, bulk_load, open_flow, uuids, workdir

PIECES = {
    "Runner.fire (total)": ("runner.py", "fire"),
    "Store.transition": ("store.py", "transition"),
    "FastPath.transition (one transaction)": ("fastpath.py", "transition"),
    "  pinned connection lookup (_pin)": ("fastpath.py", "_pin"),
    "  pool checkout (raw_connection; 0 once pinned)": ("engine/base.py", "raw_connection"),
    "  optimistic CAS on the remembered row": ("fastpath.py", "_optimistic"),
    "  SQL execute (driver, all statements)": ("~", "<method 'execute' of 'sqlite3.Cursor' objects>"),
    "  COMMIT (driver)": ("~", "<method 'commit' of 'sqlite3.Connection' objects>"),
    "  FastPath._eip (row -> Eip)": ("fastpath.py", "_eip"),
    "  Runner._plan (decide)": ("runner.py", "_plan"),
    "    table.resolve": ("table.py", "resolve"),
    "  FastPath._write (params, UPDATE, INSERT)": ("fastpath.py", "_write"),
    "Runner._log_transition": ("runner.py", "_log_transition"),
    "structlog (filtered info call)": ("_native.py", "_nop"),
    # the Core path (EIPFLOW_FASTPATH=0): zero on the fast path
    "Store.get (Core)": ("store.py", "get"),
    "Store.commit (Core)": ("store.py", "commit"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--synchronous", default="NORMAL")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--info-logs", action="store_true", help="render INFO transition lines (JSON to /dev/null)")
    args = parser.parse_args(argv)
    if args.info_logs:
        structlog.configure(
            processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True),
                        structlog.processors.JSONRenderer()],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            logger_factory=structlog.PrintLoggerFactory(file=open(os.devnull, "w")),
            cache_logger_on_first_use=True,
        )
    else:
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                            cache_logger_on_first_use=True)
    path = os.path.join(workdir(), "profile.db")
    target = Target("sqlite", "sqlite", f"sqlite:///{path}", args.synchronous, path)
    flow = open_flow(target)
    ids = uuids(1000)
    bulk_load(flow.store.engine, 1000, state="applying", bound=True, host="host-1")
    fire = flow.runner.fire
    for u in ids[:200]:  # warm caches (compiled statements, pool)
        fire(u, "detach", {"desired": "detached"})
    t0 = time.perf_counter()
    for i in range(args.n):
        fire(ids[i % 1000], "detach", {"desired": "detached"})
    plain = (time.perf_counter() - t0) / args.n * 1e6
    prof = cProfile.Profile()
    prof.enable()
    for i in range(args.n):
        fire(ids[i % 1000], "detach", {"desired": "detached"})
    prof.disable()
    flow.close()
    stats = pstats.Stats(prof)
    print(f"Runner.fire without the profiler: {plain:.0f} µs per transition (SQLite WAL {args.synchronous})")
    print("cumulative µs per transition under cProfile (inflated by the profiler, compare shares):")
    raw = stats.stats  # type: ignore[attr-defined]
    for label, (file, func) in PIECES.items():
        total = sum(v[3] for (f, _, fn), v in raw.items() if f.endswith(file) and fn == func)
        print(f"  {label:42} {total / args.n * 1e6:8.1f}")
    print(f"\ntop {args.top} by own time:")
    stats.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""(1) One eipflow transition vs the raw driver doing the same version-checked write.

The transition is ``detach`` on an EIP held in ``applying``: a self-transition that records the intent
(``desired = detached``) with a compare-and-swap ``UPDATE eip … WHERE uuid = ? AND version = ?`` plus one
history ``INSERT`` in one transaction, and no work item — the physical floor of the design.

Variants, measured in the same run, rounds interleaved, median of the rounds:

- ``raw``: the driver (sqlite3 / psycopg / PyMySQL) with versions tracked in memory: UPDATE + INSERT + COMMIT.
- ``raw+read``: the same plus a ``SELECT`` of the row first (what a caller without a cache must do).
- ``eipflow write``: ``Runner._plan`` + ``Store.commit`` + the log call (legality, plan, write) on a row
  snapshot the thread already holds — the write path alone.
- ``eipflow fire``: ``Runner.fire`` — the public intent path: plan, commit, log, on the driver-level fast
  path (pinned connection; the row this process last wrote is the snapshot the compare-and-swap starts
  from, as ``raw`` tracks versions in memory). Compare with ``raw``.
- ``eipflow fire (cold)``: the same with the row cache off (``EIPFLOW_ROW_CACHE=0``): every intent reads the
  row first, under the write lock, in the same transaction. Compare with ``raw+read``.
- ``eipflow fire (Core path)``: the same with ``EIPFLOW_FASTPATH=0`` (a second ``Eipflow`` on the same
  database): SQLAlchemy Core statements, the read and the write in two transactions — the before/after.

``--interleave N``: one writer, ``raw`` and ``eipflow fire`` alternating *per transaction* (N each, on
disjoint halves of the table), so both see the same disk and server at the same moments — the
fsync latency of a shared disk drifts between 2-second windows by more than the difference measured.

Run: ``python benchmarks/bench_transition.py [--db sqlite,postgres,mariadb] [--seconds 2] [--rounds 3]``
or ``python benchmarks/bench_transition.py --interleave 4000 [--db …]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
import structlog

sys.path.insert(0, os.path.dirname(__file__))
from _common import (
    NOW,
    Target,
    bulk_load,
    fresh,
    machine,
    median,
    open_flow,
    partition,
    run_threads,
    server_versions,
    targets,
    uuids,
    workdir,
)

ROWS = 10_000
VARIANTS = ("raw", "raw+read", "eipflow write", "eipflow fire", "eipflow fire (cold)", "eipflow fire (Core path)")
CORE = "eipflow fire (Core path)"
COLD = "eipflow fire (cold)"


def quiet_logging() -> None:
    """What a service runs with: INFO transition lines filtered out (the CLI's default level)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                        cache_logger_on_first_use=True)


# -- the raw driver ------------------------------------------------------------------------------------
class RawConn:
    """One driver connection doing the transition by hand with the same durability settings."""

    def __init__(self, target: Target) -> None:
        self.kind = target.kind
        self._fairy: Any = None
        if target.kind == "sqlite":
            assert target.path is not None
            self.conn: Any = sqlite3.connect(target.path, isolation_level=None, check_same_thread=False,
                                             timeout=30)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(f"PRAGMA synchronous={target.synchronous}")
            self.conn.execute("PRAGMA busy_timeout=30000")
            p = "?"
        else:
            # The driver connection itself (URL options such as search_path honoured), outside any pool.
            self._engine = sa.create_engine(target.url, poolclass=sa.pool.NullPool, isolation_level="READ COMMITTED")
            self._fairy = self._engine.raw_connection()
            self.conn = self._fairy.driver_connection
            self.conn.autocommit = False
            p = "%s"
        self.cur = self.conn.cursor()
        self.update = (f"UPDATE eip SET desired={p}, state={p}, updated_at={p}, version={p} "
                       f"WHERE uuid={p} AND version={p}")
        self.insert = (f"INSERT INTO eip_transition (eip_uuid, event, from_state, to_state, version, actor, op_id, "
                       f"at, details) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})")
        self.select = f"SELECT uuid, state, version, desired FROM eip WHERE uuid={p}"
        # SQLAlchemy stores SQLite datetimes as ISO text; the raw client must do the same conversion.
        self.now: Any = NOW.replace(tzinfo=None)
        if self.kind == "sqlite":
            self.now = self.now.isoformat(sep=" ")

    def version(self, uuid: str) -> int:
        self.cur.execute(self.select, (uuid,))
        row = self.cur.fetchone()
        if self.kind != "sqlite":
            self.conn.rollback()
        return int(row[2])

    def transition(self, uuid: str, version: int, read: bool) -> int:
        if self.kind == "sqlite":
            self.cur.execute("BEGIN IMMEDIATE")
        if read:
            self.cur.execute(self.select, (uuid,))
            version = int(self.cur.fetchone()[2])
        self.cur.execute(self.update, ("detached", "applying", self.now, version + 1, uuid, version))
        if self.cur.rowcount != 1:
            raise RuntimeError(f"raw CAS lost on {uuid} v{version}")
        self.cur.execute(self.insert, (uuid, "detach", "applying", "applying", version + 1, "bench", None,
                                       self.now, None))
        if self.kind == "sqlite":
            self.cur.execute("COMMIT")
        else:
            self.conn.commit()
        return version + 1

    def close(self) -> None:
        self.cur.close()
        if self._fairy is not None:
            self._fairy.close()
            self._engine.dispose()
        else:
            self.conn.close()


# -- the variants ------------------------------------------------------------------------------------
def maker(variant: str, target: Target, flow: Any, ids: list[str], workers: int,
          opened: list[RawConn], core_flow: Any = None, cold_flow: Any = None) -> Callable[[int], Callable[[], None]]:
    def make(n: int) -> Callable[[], None]:
        mine = partition(ids, workers, n)
        pos = [0]
        if variant.startswith("raw"):
            raw = RawConn(target)
            opened.append(raw)
            versions = {u: raw.version(u) for u in mine}
            read = variant == "raw+read"

            def step() -> None:
                u = mine[pos[0] % len(mine)]
                pos[0] += 1
                versions[u] = raw.transition(u, versions[u], read)

            return step
        runner = core_flow.runner if variant == CORE else cold_flow.runner if variant == COLD else flow.runner
        if variant == "eipflow write":
            rows = {u: flow.store.get(u) for u in mine}
            changes = {"desired": "detached"}
            import time

            def step() -> None:
                u = mine[pos[0] % len(mine)]
                pos[0] += 1
                started = time.perf_counter()
                plan = runner._plan(rows[u], "detach", changes)
                result = runner.store.commit(plan)
                if result is None:
                    raise RuntimeError(f"eipflow CAS lost on {u}")
                runner._log_transition(plan, result, started)
                rows[u] = result

            return step

        def step() -> None:
            u = mine[pos[0] % len(mine)]
            pos[0] += 1
            runner.fire(u, "detach", {"desired": "detached"})

        return step

    return make


def _open_with(target: Target, var: str, value: str) -> Any:
    """An :class:`eipflow.Eipflow` opened with one environment switch set (read when its store is built)."""
    old = os.environ.get(var)
    os.environ[var] = value
    try:
        return open_flow(target)
    finally:
        if old is None:
            del os.environ[var]
        else:
            os.environ[var] = old


def open_core_flow(target: Target) -> Any:
    """An :class:`eipflow.Eipflow` with the fast path off."""
    flow = _open_with(target, "EIPFLOW_FASTPATH", "0")
    assert flow.store._fast is None
    return flow


def open_cold_flow(target: Target) -> Any:
    """An :class:`eipflow.Eipflow` on the fast path with the row cache off."""
    flow = _open_with(target, "EIPFLOW_ROW_CACHE", "0")
    assert flow.store._fast is not None and flow.store._fast.rows.size == 0
    return flow


def measure(target: Target, workers_list: list[int], seconds: float, rounds: int,
            variants: tuple[str, ...] = VARIANTS) -> dict[str, dict[int, float]]:
    with fresh(target) as t:
        flow = open_flow(t)
        core_flow = open_core_flow(t) if CORE in variants else None
        cold_flow = open_cold_flow(t) if COLD in variants else None
        try:
            ids = uuids(ROWS)
            bulk_load(flow.store.engine, ROWS, state="applying", bound=True, host="host-1")
            samples: dict[str, dict[int, list[float]]] = {v: {w: [] for w in workers_list} for v in variants}
            for r in range(rounds):
                for w in workers_list:
                    for v in variants:
                        opened: list[RawConn] = []
                        m = run_threads(w, seconds, maker(v, t, flow, ids, w, opened, core_flow, cold_flow))
                        for raw in opened:
                            raw.close()
                        samples[v][w].append(m.rate)
                        print(f"  {t.label:18} round {r + 1} workers {w:2} {v:24} {m.rate:9.0f}/s", file=sys.stderr)
            return {v: {w: median(samples[v][w]) for w in workers_list} for v in variants}
        finally:
            flow.close()
            for other in (core_flow, cold_flow):
                if other is not None:
                    other.close()


def interleaved(target: Target, n: int) -> tuple[float, float, float, float]:
    """One writer, raw and fire alternating per transaction; returns mean and median µs of each."""
    import time

    with fresh(target) as t:
        flow = open_flow(t)
        raw = RawConn(t)
        try:
            ids = uuids(ROWS)
            bulk_load(flow.store.engine, ROWS, state="applying", bound=True, host="host-1")
            raw_ids, fire_ids = ids[: ROWS // 2], ids[ROWS // 2:]
            versions = {u: raw.version(u) for u in raw_ids}
            for u in fire_ids:
                flow.store.get(u)  # what the other variants' warm-up does: this process has seen the row
            fire = flow.runner.fire
            took_raw: list[float] = []
            took_fire: list[float] = []
            for i in range(n):
                u = raw_ids[i % len(raw_ids)]
                started = time.perf_counter()
                versions[u] = raw.transition(u, versions[u], False)
                took_raw.append(time.perf_counter() - started)
                u = fire_ids[i % len(fire_ids)]
                started = time.perf_counter()
                fire(u, "detach", {"desired": "detached"})
                took_fire.append(time.perf_counter() - started)
        finally:
            raw.close()
            flow.close()
    us = 1e6
    return (sum(took_raw) / n * us, median(took_raw) * us, sum(took_fire) / n * us, median(took_fire) * us)


def table(results: dict[str, dict[str, dict[int, float]]], workers_list: list[int]) -> str:
    lines = [
        "| store | writers | raw /s | raw+read /s | write /s | Core /s | fire cold /s | fire /s | Core / raw | "
        "**fire / raw** | **fire cold / raw+read** | fire / Core |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, res in results.items():
        for w in workers_list:
            raw, rr, ew, ef, cold, ec = (res[v][w] for v in VARIANTS)
            lines.append(f"| {label} | {w} | {raw:,.0f} | {rr:,.0f} | {ew:,.0f} | {ec:,.0f} | {cold:,.0f} | "
                         f"{ef:,.0f} | {ec / raw:.2f} | **{ef / raw:.2f}** | **{cold / rr:.2f}** | {ef / ec:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="sqlite,postgres,mariadb", help="which databases (URLs from the env)")
    parser.add_argument("--workers", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=2.0, help="measurement window per figure")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--json", dest="json_path", help="also write the figures to this file")
    parser.add_argument("--interleave", type=int, default=0, metavar="N",
                        help="one writer, raw and fire alternating per transaction, N of each")
    args = parser.parse_args(argv)
    quiet_logging()
    if args.interleave:
        lines = ["| store | raw µs (mean / median) | fire µs (mean / median) | **fire / raw** (means) | "
                 "fire / raw (medians) |", "|---|---|---|---|---|"]
        for target in targets(args.db.split(","), workdir()):
            print(f"measuring {target.label} interleaved …", file=sys.stderr)
            rm, rmed, fm, fmed = interleaved(target, args.interleave)
            lines.append(f"| {target.label} | {rm:.0f} / {rmed:.0f} | {fm:.0f} / {fmed:.0f} | **{rm / fm:.2f}** | "
                         f"{rmed / fmed:.2f} |")
        print(f"machine: {machine()}; {', '.join(server_versions()) or 'no servers'}; 1 writer, "
              f"{args.interleave:,} transitions of each, alternating")
        print("\n".join(lines))
        return 0
    workers_list = [int(w) for w in args.workers.split(",")]
    results: dict[str, dict[str, dict[int, float]]] = {}
    base = workdir()
    for target in targets(args.db.split(","), base):
        print(f"measuring {target.label} …", file=sys.stderr)
        results[target.label] = measure(target, workers_list, args.seconds, args.rounds)
    print(f"machine: {machine()}; {', '.join(server_versions()) or 'no servers'}")
    print(table(results, workers_list))
    if args.json_path:
        with open(args.json_path, "w") as fh:
            json.dump({"machine": machine(), "servers": server_versions(), "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

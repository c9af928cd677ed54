"""(7) Whole flows against their protocol floor (issue 13): attach, VM stop, host evacuation, worker drain, DBOS.

Every figure is a ratio against a floor this script measures in the same run, on the same database: the
same protocol written by hand on the raw driver against eipflow's own schema (``_floor.py``: the fewest
statements and transactions the protocol allows, no SQLAlchemy on the statement path).

1. **Attach**, one caller and 16 (threads, each its own connection, disjoint EIPs): the two-transaction
   floor (T1: leased work item + version-checked binding to ``applying`` + history; no-op backend call; T2:
   fenced completion) vs ``Eipflow.attach(wait=True)`` with a no-op backend. Time windows, interleaved
   rounds (the order alternates), medians.
2. **VM stop** of K attached EIPs: the batched floor (T1: K rows to ``releasing``, K work items, K history
   rows, batched; K no-op revokes; T2: K items done, K rows ``released``, K history rows) vs
   ``Eipflow.vm_stopped(vm, wait=True)``; and eipflow's driver calls and transactions for the stop at K/10
   and K (do they grow with K?). **Host evacuation**: 10,000 EIPs on 1,000 VMs of one host — the floor
   releases them in one batch; eipflow's ``host_down(host)`` is measured when it exists (else the row is
   skipped with a note, and what a caller does today, ``vm_stopped`` per VM, is shown beside it).
   The attached EIPs are seeded with SQLAlchemy Core executemany (rows in ``attached`` with their VM rows
   in ``eip_vm``), outside every timed window.
3. **Worker drain** of N due apply items (EIPs in ``binding``, seeded): the batched floor (claim 500, proceed,
   500 no-op applies, complete 500) vs ``eipflow.Worker(flow).run_once()``, each on a fresh database loaded
   the same way (by a child process: memory the load freed here would hide what the drain grows); items/s and
   the RSS growth during the drain (``/proc/self/status`` VmRSS, sampled every 0.25 s; peak - start).
4. **DBOS Transact** peer (``_dbos_peer.py``): a workflow of three no-op steps, and the attach protocol as a
   DBOS workflow (T1 and T2 as datasource transactions, the backend call a step), on DBOS's SQLite system
   database and on PostgreSQL, vs eipflow's attach on the same database in the same run.

``--quick`` shrinks everything (a smoke test runs ``--quick --db sqlite-full`` in under a minute).

Run: ``python benchmarks/bench_flows.py [--db sqlite-full,sqlite-normal,postgres,mariadb] [--quick]
[--parts attach,release,drain,dbos] [--seconds 2] [--rounds 3] [--stop-eips 10000] [--drain 100000]
[--server-drain N] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
import uuid as uuidlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))
from _common import (
    MARIADB_ENV,
    PG_ENV,
    Target,
    driver_calls,
    fresh,
    machine,
    median,
    open_flow,
    server_versions,
    workdir,
)
from _floor import Floor
from _flows import (
    ATTACH_VM,
    HOST,
    Pool,
    Results,
    attach_rates,
    eipflow_variant,
    floor_variant,
    seed,
    seed_due_elsewhere,
    seed_vms,
    states,
)
from bench_transition import quiet_logging

DATABASES = ("sqlite-full", "sqlite-normal", "postgres", "mariadb")
TARGETS = {  # the issue's targets
    "attach1": 0.70, "attach16": 0.60, "stop": 0.50, "evac": 0.50, "drain": 0.50, "rss_mb": 5.0, "dbos": 4.0,
}


def make_targets(names: list[str], base: str) -> list[Target]:
    out: list[Target] = []
    for name in names:
        if name in ("sqlite-full", "sqlite-normal"):
            sync = name.split("-")[1].upper()
            path = os.path.join(base, f"flows-{sync.lower()}-{uuidlib.uuid4().hex[:6]}.db")
            out.append(Target(f"SQLite WAL {sync}", "sqlite", f"sqlite:///{path}", sync, path))
        elif name == "postgres":
            if os.environ.get(PG_ENV):
                out.append(Target("PostgreSQL", "postgres", os.environ[PG_ENV]))
            else:
                print(f"note: {PG_ENV} is not set: PostgreSQL skipped", file=sys.stderr)
        elif name == "mariadb":
            if os.environ.get(MARIADB_ENV):
                out.append(Target("MariaDB", "mariadb", os.environ[MARIADB_ENV]))
            else:
                print(f"note: {MARIADB_ENV} is not set: MariaDB skipped", file=sys.stderr)
        else:
            raise SystemExit(f"--db: {name!r} is not one of {', '.join(DATABASES)}")
    return out


# -- 1. attach -------------------------------------------------------------------------------------
def part_attach(t: Target, args: argparse.Namespace, res: Results) -> None:
    with fresh(t) as db:
        flow = open_flow(db)
        try:
            seed_vms(flow.store.engine, [ATTACH_VM], HOST)
            pool = Pool(flow.store.engine)
            guess = {"floor": 8000.0 if db.synchronous == "NORMAL" else 2500.0, "eipflow": 800.0}
            variants = {"floor": floor_variant(db), "eipflow": eipflow_variant(flow)}
            rates = attach_rates(t.label, pool, variants, args.workers, args.seconds, args.rounds, guess)
        finally:
            flow.close()
    for w in args.workers:
        res.put(t.label, f"attach{w}", {"floor": rates[("floor", w)], "eipflow": rates[("eipflow", w)],
                                        "ratio": rates[("eipflow", w)] / rates[("floor", w)]})


# -- 2. VM stop, host evacuation ---------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def part_release(t: Target, args: argparse.Namespace, res: Results) -> None:
    k = args.stop_eips
    with fresh(t) as db:
        flow = open_flow(db)
        floor = Floor(db)
        engine = flow.store.engine
        start = [1]

        def attached_vm(name: str, n: int) -> str:
            js = range(start[0], start[0] + n)
            start[0] += n
            seed_vms(engine, [name], HOST)
            seed(engine, js, state="attached", vm_of=lambda _j: name, host=HOST)
            return name

        def attached_host(name: str, n: int, vms: int) -> list[str]:
            js = range(start[0], start[0] + n)
            start[0] += n
            names = [f"{name}-vm-{i}" for i in range(vms)]
            seed_vms(engine, names, name)
            seed(engine, js, state="attached", vm_of=lambda j: names[(j - js.start) % vms], host=name)
            return names

        try:
            # VM stop: rounds, floor and eipflow alternating, each on its own freshly seeded VM of K EIPs.
            samples: dict[str, list[float]] = {"floor": [], "eipflow": []}
            for r in range(args.batch_rounds):
                for name in (("floor", "eipflow") if r % 2 == 0 else ("eipflow", "floor")):
                    vm = attached_vm(f"stop-{r}-{name}", k)
                    if name == "floor":
                        took, n = timed(lambda vm=vm: floor.release(vm=vm))
                    else:
                        took, out = timed(lambda vm=vm: flow.vm_stopped(vm, wait=True))
                        n = sum(1 for e in out if e.state == "released")
                    if n != k:
                        raise RuntimeError(f"{name} released {n} of {k} EIPs")
                    samples[name].append(k / took)
                    print(f"  {t.label:18} VM stop round {r + 1} {name:8} K={k:,}: {took:6.2f} s "
                          f"({k / took:,.0f} EIPs/s)", file=sys.stderr)
            fl, ef = median(samples["floor"]), median(samples["eipflow"])
            res.put(t.label, "stop", {"k": k, "floor": fl, "eipflow": ef, "ratio": ef / fl})
            # What eipflow's stop sends, at K/10 and K (counted at the driver, outside the timed runs).
            counts = {}
            for size in sorted({max(1, k // 10), k}):
                vm = attached_vm(f"count-{size}", size)
                before = floor.calls.copy()
                floor_vm = attached_vm(f"count-{size}-floor", size)
                floor.release(vm=floor_vm)
                floor_calls = floor.calls - before
                with driver_calls(engine) as c:
                    flow.vm_stopped(vm, wait=True)
                counts[size] = {"calls": dict(c.calls), "total": c.total, "commits": c.commits,
                                "rollbacks": c.rollbacks, "events": c.events,
                                "floor_total": sum(v for kw, v in floor_calls.items()
                                                   if kw not in ("COMMIT", "ROLLBACK")),
                                "floor_commits": floor_calls["COMMIT"]}
                print(f"  {t.label:18} VM stop K={size:,}: eipflow {c.summary()}; floor "
                      f"{counts[size]['floor_total']:,} statements, {floor_calls['COMMIT']} commits", file=sys.stderr)
            res.put(t.label, "stop_counts", counts)
            # Host evacuation: n EIPs across `vms` VMs of one host; floor and host_down alternating per round.
            n, vms = args.evac_eips, args.evac_vms
            samples = {"floor": [], "eipflow": [], "today": []}
            for r in range(args.batch_rounds):
                for name in (("floor", "eipflow") if r % 2 == 0 else ("eipflow", "floor")):
                    host = f"evac-{r}-{name}"
                    if name == "floor":
                        attached_host(host, n, vms)
                        took, got = timed(lambda host=host: floor.release(host=host))
                        if got != n:
                            raise RuntimeError(f"floor evacuated {got} of {n} EIPs")
                    elif hasattr(flow, "host_down"):
                        attached_host(host, n, vms)
                        took, out = timed(lambda host=host: flow.host_down(host, wait=True))
                        after = Counter(e.state for e in out)
                        if sum(after.values()) != n or after.get("attached"):
                            raise RuntimeError(f"host_down returned {dict(after)} for {n} attached EIPs")
                    else:
                        continue
                    samples[name].append(n / took)
                    print(f"  {t.label:18} evacuation round {r + 1} {name:8} {n:,} EIPs / {vms:,} VMs: "
                          f"{took:6.2f} s ({n / took:,.0f} EIPs/s)", file=sys.stderr)
                if args.evac_today and r == 0:  # what a caller does without host_down: once, for comparison
                    names = attached_host(f"evac-{r}-today", n, vms)
                    took, out = timed(lambda names=names: [e for vm in names for e in flow.vm_stopped(vm, wait=True)])
                    if sum(1 for e in out if e.state == "released") != n:
                        raise RuntimeError(f"vm_stopped per VM released {len(out)} of {n} EIPs")
                    samples["today"].append(n / took)
                    print(f"  {t.label:18} evacuation round {r + 1} vm_stopped per VM: {took:6.2f} s "
                          f"({n / took:,.0f} EIPs/s)", file=sys.stderr)
            evac: dict[str, Any] = {"eips": n, "vms": vms, "floor": median(samples["floor"])}
            if samples["eipflow"]:
                evac.update(eipflow=median(samples["eipflow"]), ratio=median(samples["eipflow"]) / evac["floor"])
            if samples["today"]:
                evac.update(today=median(samples["today"]), today_ratio=median(samples["today"]) / evac["floor"])
            res.put(t.label, "evac", evac)
        finally:
            floor.close()
            flow.close()


# -- 3. worker drain -------------------------------------------------------------------------------
def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def rss_sampled(interval: float = 0.25) -> Iterator[list[tuple[float, float]]]:
    samples: list[tuple[float, float]] = [(0.0, rss_mb())]
    stop = threading.Event()
    started = time.perf_counter()

    def sample() -> None:
        while not stop.wait(interval):
            samples.append((time.perf_counter() - started, rss_mb()))

    thread = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()
        samples.append((time.perf_counter() - started, rss_mb()))


def rss_growth(samples: list[tuple[float, float]]) -> dict[str, float]:
    """RSS at the start, at 10/25/50/75% of the drain, at its peak and at the end; growth = peak - start."""
    end = samples[-1][0]

    def at(share: float) -> float:
        return next((r for s, r in samples if s >= end * share), samples[-1][1])

    peak = max(r for _, r in samples)
    tenth = at(0.1)
    return {"start": samples[0][1], "tenth": tenth, "q1": at(0.25), "half": at(0.5), "q3": at(0.75), "peak": peak,
            "end": samples[-1][1], "growth": peak - samples[0][1], "growth_after_tenth": peak - tenth}


def part_drain(t: Target, args: argparse.Namespace, res: Results) -> None:
    n = args.server_drain if t.kind != "sqlite" and args.server_drain else args.drain
    out: dict[str, Any] = {"n": n}
    for name in ("floor", "eipflow"):
        with fresh(t) as db:
            flow = open_flow(db)
            try:
                seed_due_elsewhere(db, n)  # the load's memory is not this process's
                if name == "floor":
                    raw = Floor(db, owner="floor-worker")
                    try:
                        with rss_sampled() as samples:
                            took, ran = timed(lambda raw=raw: sum(iter(raw.drain_batch, 0)))
                    finally:
                        raw.close()
                else:
                    from eipflow.worker import Worker

                    worker = Worker(flow)  # the default heartbeat, as a deployed worker runs
                    with rss_sampled() as samples:
                        took, ran = timed(worker.run_once)
                after = states(flow.store.engine)
            finally:
                flow.close()
        if ran != n or after.get("attached") != n:
            raise RuntimeError(f"{name} drained {ran} of {n}; states after: {after}")
        mem = rss_growth(samples)
        out[name] = {"rate": n / took, "seconds": took, "rss": mem}
        print(f"  {t.label:18} drain {name:8} {n:,} items in {took:6.1f} s ({n / took:,.0f}/s); "
              f"RSS {mem['start']:.1f} → {mem['tenth']:.1f} / {mem['q1']:.1f} / {mem['half']:.1f} / {mem['q3']:.1f} "
              f"(10/25/50/75%) → end {mem['end']:.1f}, peak {mem['peak']:.1f} MB (growth {mem['growth']:+.1f} MB)",
              file=sys.stderr)
    out["ratio"] = out["eipflow"]["rate"] / out["floor"]["rate"]
    res.put(t.label, "drain", out)


# -- output ------------------------------------------------------------------------------------------
def verdict(value: float, target: float, higher: bool = True) -> str:
    return "met" if (value >= target if higher else value < target) else "not met"


def report(res: Results, args: argparse.Namespace) -> str:
    lines = [f"machine: {machine()}; {', '.join(server_versions()) or 'no servers'}",
             f"command: python benchmarks/bench_flows.py {' '.join(args.argv)}".rstrip(), ""]
    if any("attach1" in r or "attach16" in r for r in res.rows.values()):
        lines += ["### Attach: eipflow vs the two-transaction floor (attaches/s, medians)", "",
                  "| store | callers | floor /s | eipflow /s | **eipflow / floor** | target |",
                  "|---|---|---|---|---|---|"]
        for label, row in res.rows.items():
            for w in args.workers:
                a = row.get(f"attach{w}")
                if a:
                    goal = TARGETS.get(f"attach{w}")
                    lines.append(f"| {label} | {w} | {a['floor']:,.0f} | {a['eipflow']:,.0f} | **{a['ratio']:.2f}** | "
                                 + (f"≥ {goal:.2f} ({verdict(a['ratio'], goal)})" if goal else "-") + " |")
        lines.append("")
    if any("stop" in r for r in res.rows.values()):
        lines += ["### VM stop of K attached EIPs and host evacuation: eipflow vs the batched floor (EIPs/s)", "",
                  "| store | flow | floor EIPs/s | eipflow EIPs/s | **eipflow / floor** | target |",
                  "|---|---|---|---|---|---|"]
        for label, row in res.rows.items():
            s = row.get("stop")
            if s:
                lines.append(f"| {label} | VM stop, K={s['k']:,} | {s['floor']:,.0f} | {s['eipflow']:,.0f} | "
                             f"**{s['ratio']:.2f}** | ≥ 0.50 ({verdict(s['ratio'], TARGETS['stop'])}) |")
            e = row.get("evac")
            if e:
                flow_desc = f"host evacuation, {e['eips']:,} EIPs / {e['vms']:,} VMs"
                if "ratio" in e:
                    lines.append(f"| {label} | {flow_desc}: `host_down` | {e['floor']:,.0f} | {e['eipflow']:,.0f} | "
                                 f"**{e['ratio']:.2f}** | ≥ 0.50 ({verdict(e['ratio'], TARGETS['evac'])}) |")
                else:
                    lines.append(f"| {label} | {flow_desc}: `host_down` | {e['floor']:,.0f} | skipped: no "
                                 f"`Eipflow.host_down` yet | - | ≥ 0.50 |")
                if "today" in e:
                    lines.append(f"| {label} | (same, today: `vm_stopped` per VM) | {e['floor']:,.0f} | "
                                 f"{e['today']:,.0f} | {e['today_ratio']:.2f} | (not the target's API) |")
        lines += ["", "eipflow's VM stop, counted at the driver (an executemany is one call):", "",
                  "| store | K | driver calls | per EIP | commits | rollbacks | before_cursor_execute | "
                  "floor statements | floor commits |", "|---|---|---|---|---|---|---|---|---|"]
        for label, row in res.rows.items():
            for size, c in sorted(row.get("stop_counts", {}).items()):
                lines.append(f"| {label} | {size:,} | {c['total']:,} | {c['total'] / size:.1f} | {c['commits']:,} | "
                             f"{c['rollbacks']:,} | {c['events']:,} | {c['floor_total']:,} | {c['floor_commits']} |")
        lines.append("")
    if any("drain" in r for r in res.rows.values()):
        lines += ["### Worker drain of N due items: `Worker.run_once` vs the batched floor", "",
                  "| store | N | floor items/s | eipflow items/s | **eipflow / floor** | target | "
                  "eipflow RSS start → at 10% → peak | **growth** (peak - start) | after 10% | target |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for label, row in res.rows.items():
            d = row.get("drain")
            if d:
                mem = d["eipflow"]["rss"]
                lines.append(f"| {label} | {d['n']:,} | {d['floor']['rate']:,.0f} | {d['eipflow']['rate']:,.0f} | "
                             f"**{d['ratio']:.2f}** | ≥ 0.50 ({verdict(d['ratio'], TARGETS['drain'])}) | "
                             f"{mem['start']:.1f} → {mem['tenth']:.1f} → {mem['peak']:.1f} MB | "
                             f"**{mem['growth']:+.1f} MB** | {mem['growth_after_tenth']:+.1f} MB | < 5 MB "
                             f"({verdict(mem['growth'], TARGETS['rss_mb'], higher=False)}) |")
        lines.append("")
    if any("dbos" in r for r in res.rows.values()):
        lines += ["### eipflow attach vs DBOS Transact workflows (same database, same run, medians)", "",
                  "| store | callers | DBOS 3 no-op steps /s | DBOS attach protocol /s | eipflow attach /s | "
                  "**attach / DBOS 3 steps** | attach / DBOS protocol | target |", "|---|---|---|---|---|---|---|---|"]
        for label, row in res.rows.items():
            for w, d in sorted(row.get("dbos", {}).items()):
                lines.append(f"| {label} | {w} | {d['dbos3']:,.0f} | {d['dbos_protocol']:,.0f} | {d['eipflow']:,.0f} | "
                             f"**{d['ratio3']:.2f}x** | {d['ratio_protocol']:.2f}x | ≥ 4x "
                             f"({verdict(d['ratio3'], TARGETS['dbos'])}) |")
        lines.append("")
    lines += ["ratios (eipflow / floor unless said otherwise):"]
    for label, row in res.rows.items():
        for w in args.workers:
            if f"attach{w}" in row:
                lines.append(f"ratio attach {w} caller(s) {label}: {row[f'attach{w}']['ratio']:.2f}")
        if "stop" in row:
            lines.append(f"ratio VM stop K={row['stop']['k']} {label}: {row['stop']['ratio']:.2f}")
        if "evac" in row:
            e = row["evac"]
            lines.append(f"ratio host evacuation {label}: " + (f"{e['ratio']:.2f}" if "ratio" in e else
                                                              "skipped (Eipflow.host_down does not exist yet)"))
        if "drain" in row:
            d = row["drain"]
            lines.append(f"ratio drain N={d['n']} {label}: {d['ratio']:.2f}; "
                         f"RSS growth {d['eipflow']['rss']['growth']:+.1f} MB")
        for w, d in sorted(row.get("dbos", {}).items()):
            lines.append(f"ratio attach / DBOS 3-step workflow {w} caller(s) {label}: {d['ratio3']:.2f}")
    lines += [f"note: {n}" for n in res.notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default=",".join(DATABASES), help="which databases (server URLs from the env)")
    parser.add_argument("--quick", action="store_true", help="small sizes, short windows (< 60 s on SQLite)")
    parser.add_argument("--parts", default="attach,release,drain,dbos", help="which parts to run")
    parser.add_argument("--workers", default="1,16", help="attach callers")
    parser.add_argument("--seconds", type=float, help="attach window (default 2; --quick 0.5)")
    parser.add_argument("--rounds", type=int, help="interleaved attach rounds (default 3; --quick 1)")
    parser.add_argument("--batch-rounds", type=int, help="VM stop / evacuation rounds (default 2; --quick 1)")
    parser.add_argument("--stop-eips", type=int, help="K, the EIPs of the stopped VM (default 10,000; --quick 300)")
    parser.add_argument("--evac-eips", type=int, help="EIPs of the evacuated host (default 10,000; --quick 300)")
    parser.add_argument("--evac-vms", type=int, help="their VMs (default 1,000; --quick 30)")
    parser.add_argument("--no-evac-today", dest="evac_today", action="store_false",
                        help="without host_down, do not time vm_stopped per VM as today's substitute")
    parser.add_argument("--drain", type=int, help="N, due items to drain (default 100,000; --quick 1,000)")
    parser.add_argument("--server-drain", type=int,
                        help="N on PostgreSQL and MariaDB (default: --drain; a per-item worker drains ~150/s there)")
    parser.add_argument("--json", dest="json_path", help="also write the figures to this file")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    quick = args.quick
    sizes = (("seconds", 2.0, 0.5), ("rounds", 3, 1), ("batch_rounds", 2, 1), ("stop_eips", 10_000, 300),
             ("evac_eips", 10_000, 300), ("evac_vms", 1_000, 30), ("drain", 100_000, 1_000))
    for name, full, small in sizes:
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    args.workers = [int(w) for w in args.workers.split(",")]
    parts = set(args.parts.split(","))
    quiet_logging()
    res = Results()
    base = workdir()
    for target in make_targets(args.db.split(","), base):
        print(f"measuring {target.label} …", file=sys.stderr)
        if "attach" in parts:
            part_attach(target, args, res)
        if "release" in parts:
            part_release(target, args, res)
        if "drain" in parts:
            part_drain(target, args, res)
        if "dbos" in parts:
            from _dbos_peer import part_dbos

            part_dbos(target, args, res)
    from eipflow import Eipflow

    if "release" in parts and not hasattr(Eipflow, "host_down"):
        res.notes.append("Eipflow.host_down does not exist in this checkout: the host evacuation's eipflow row is "
                         "skipped (the floor is measured; vm_stopped per VM shown as today's substitute)")
    print(report(res, args))
    if args.json_path:
        with open(args.json_path, "w") as fh:
            json.dump({"machine": machine(), "servers": server_versions(), "args": args.argv,
                       "results": {k: {kk: (vv if not isinstance(vv, dict) else {str(a): b for a, b in vv.items()})
                                       for kk, vv in v.items()} for k, v in res.rows.items()}, "notes": res.notes},
                      fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())

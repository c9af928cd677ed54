"""Plumbing of ``bench_flows.py`` and ``_dbos_peer.py``: seeding, the timed window, the EIP pool, attach variants.

Seeding is SQLAlchemy Core executemany, outside every timed window. A window starts its caller threads on
a barrier; the callers of one variant pop fresh EIPs from one queue, so they work on disjoint EIPs and
none idles before the window closes.
"""

from __future__ import annotations

import sys
import uuid as uuidlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from _common import NOW, Target, median, run_threads, vip
from _floor import Floor

HOST = "host-1"
ATTACH_VM = "vm-attach"  # every attached EIP's VM (known, running on HOST): no VM insert inside an attach


# -- seeding (SQLAlchemy Core executemany, outside every timed window) ---------------------------------
def eip_uuid(j: int) -> str:
    return str(uuidlib.UUID(int=j))


def guest_ip(j: int) -> str:
    return f"10.{(j >> 16) & 255}.{(j >> 8) & 255}.{j & 255}"


def seed(engine: sa.Engine, js: range, *, state: str, vm_of: Callable[[int], str] | None = None,
         host: str | None = None, version: int = 1, chunk: int = 10_000) -> None:
    """EIP rows ``js`` in ``state`` at ``version`` (bound to ``vm_of(j)`` on ``host`` if given) + their history."""
    from eipflow.store.schema import EipRow, TransitionRow

    for lo in range(js.start, js.stop, chunk):
        rows, hist = [], []
        for j in range(lo, min(js.stop, lo + chunk)):
            u = eip_uuid(j)
            bound = vm_of is not None
            rows.append({
                "uuid": u, "name": None, "vip": vip(j), "state": state, "version": version,
                "desired": "attached" if bound else "detached", "vm_nic_uuid": f"nic-{j}" if bound else None,
                "guest_ip": guest_ip(j) if bound else None, "vm_uuid": vm_of(j) if vm_of else None,
                "host_uuid": host if bound else None,
                "applied_host": host if state == "attached" else None, "attach_confirmed": state == "attached",
                "work_id": None, "last_error": None, "created_at": NOW, "updated_at": NOW,
            })
            hist += [{"eip_uuid": u, "event": "create" if v == 1 else "bench_seed",
                      "from_state": "" if v == 1 else state, "to_state": "detached" if v == 1 else state,
                      "version": v, "actor": "bench", "op_id": None,
                      "at": NOW, "details": None} for v in range(1, version + 1)]
        with engine.begin() as conn:
            conn.execute(EipRow.__table__.insert(), rows)  # type: ignore[attr-defined]
            conn.execute(TransitionRow.__table__.insert(), hist)  # type: ignore[attr-defined]


def seed_vms(engine: sa.Engine, vms: list[str], host: str) -> None:
    from eipflow.store.schema import VmRow

    with engine.begin() as conn:
        conn.execute(VmRow.__table__.insert(), [  # type: ignore[attr-defined]
            {"uuid": vm, "host_uuid": host, "running": True, "version": 1, "updated_at": NOW} for vm in vms])


def seed_due(engine: sa.Engine, n: int, chunk: int = 10_000) -> None:
    """``n`` EIPs in ``binding`` (VM running on HOST), each with its pending, due apply item (ids 1…n)."""
    from eipflow.store.schema import EipRow, TransitionRow, WorkRow

    seed_vms(engine, ["vm-drain"], HOST)
    for lo in range(0, n, chunk):
        eips, hist, work = [], [], []
        for i in range(lo, min(n, lo + chunk)):
            u, ip = eip_uuid(i), guest_ip(i)
            work.append({"id": i + 1, "eip_uuid": u, "action": "apply", "vip": vip(i), "vm_nic_uuid": f"nic-{i}",
                         "guest_ip": ip, "host_uuid": None, "status": "pending", "attempts": 0, "due_at": NOW,
                         "lease_owner": None, "lease_expires_at": None, "last_error": None, "cleanup": False,
                         "created_at": NOW, "updated_at": NOW, "generation": None, "trace_context": None})
            eips.append({"uuid": u, "name": None, "vip": vip(i), "state": "binding", "version": 2,
                         "desired": "attached", "vm_nic_uuid": f"nic-{i}", "guest_ip": ip, "vm_uuid": "vm-drain",
                         "host_uuid": HOST, "applied_host": None, "attach_confirmed": False, "work_id": i + 1,
                         "last_error": None, "created_at": NOW, "updated_at": NOW})
            hist += [{"eip_uuid": u, "event": "create", "from_state": "", "to_state": "detached", "version": 1,
                      "actor": "bench", "op_id": None, "at": NOW, "details": None},
                     {"eip_uuid": u, "event": "attach", "from_state": "detached", "to_state": "binding",
                      "version": 2, "actor": "bench", "op_id": None, "at": NOW, "details": None}]
        with engine.begin() as conn:
            conn.execute(WorkRow.__table__.insert(), work)  # type: ignore[attr-defined]
            conn.execute(EipRow.__table__.insert(), eips)  # type: ignore[attr-defined]
            conn.execute(TransitionRow.__table__.insert(), hist)  # type: ignore[attr-defined]
    if engine.dialect.name == "postgresql":  # explicit ids do not move the serial's sequence
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "SELECT setval(pg_get_serial_sequence('eip_work', 'id'), (SELECT max(id) FROM eip_work))")


def _seed_due_child(url: str, synchronous: str | None, n: int) -> None:
    from eipflow.store import create_db_engine

    engine = create_db_engine(url, sqlite_synchronous=synchronous)
    try:
        seed_due(engine, n)
    finally:
        engine.dispose()


def seed_due_elsewhere(target: Target, n: int) -> None:
    """:func:`seed_due` in a child process, so that this process's heap is not grown (then freed) by the load:
    the RSS a drain adds afterwards is then the drain's own, not hidden in memory the load left free."""
    import multiprocessing

    child = multiprocessing.get_context("spawn").Process(target=_seed_due_child,
                                                         args=(target.url, target.synchronous, n))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"seeding {n:,} due items failed in the child process (exit {child.exitcode})")


def states(engine: sa.Engine, where: str = "") -> dict[str, int]:
    with engine.connect() as conn:
        return {s: n for s, n in conn.exec_driver_sql(f"SELECT state, COUNT(*) FROM eip {where} GROUP BY state")}


# -- the timed window ------------------------------------------------------------------------------
@dataclass
class Window:
    ops: int
    seconds: float
    ran_out: bool

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0


def window(workers: int, seconds: float, make: Callable[[int], Callable[[], bool]]) -> Window:
    """``workers`` threads started on a barrier, each calling its ``make(n)()`` until the window closes
    (or it returns ``False``: its rows ran out). ``make`` runs before the barrier (connections outside the window)."""
    m = run_threads(workers, seconds, make)
    return Window(m.ops, m.seconds, m.ran_out)


class Pool:
    """Fresh ``detached`` EIPs (indices), seeded on demand between windows, never reused."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.next = 1
        self.seeded = 1

    def take(self, n: int) -> deque[int]:
        """``n`` fresh EIPs as a queue the callers pop from (an atomic ``popleft``: disjoint EIPs, no idle caller)."""
        if self.next + n > self.seeded:
            more = max(n - (self.seeded - self.next), 2_000)
            seed(self.engine, range(self.seeded, self.seeded + more), state="detached")
            self.seeded += more
        out = deque(range(self.next, self.next + n))
        self.next += n
        return out


@dataclass
class Results:
    """Medians and ratios, by database label and figure; also what goes to ``--json``."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def put(self, label: str, key: str, value: Any) -> None:
        self.rows.setdefault(label, {})[key] = value


# -- 1. attach -------------------------------------------------------------------------------------
#: a variant: ``make(workers, queue of fresh EIPs, connections to close) -> make(n) -> step``; the callers of a
#: window pop their EIPs from the one queue (an atomic ``popleft``: disjoint EIPs, and no caller idles early)
Variant = Callable[[int, deque[int], list[Floor]], Callable[[int], Callable[[], bool]]]


def popping(queue: deque[int], attach: Callable[[int], None]) -> Callable[[], bool]:
    """A caller's step: attach the next EIP of ``queue`` (``False`` once it is empty).

    Called in the caller's thread before the window opens, it runs one attach first, uncounted: connections
    (eipflow's are pinned to the thread, and every window has new threads), prepared statements and pools are
    warm for every variant alike when the window opens.
    """
    take = queue.popleft
    attach(take())

    def step() -> bool:
        try:
            j = take()
        except IndexError:
            return False
        attach(j)
        return True

    return step


def floor_variant(t: Target) -> Variant:
    """The two-transaction floor: each caller its own driver connection."""
    def make(_workers: int, queue: deque[int], opened: list[Floor]) -> Callable[[int], Callable[[], bool]]:
        def per_thread(n: int) -> Callable[[], bool]:
            raw = Floor(t, owner=f"floor-{n}")
            opened.append(raw)

            def attach(j: int) -> None:
                raw.attach(eip_uuid(j), 1, vip(j), f"nic-{j}", guest_ip(j), ATTACH_VM, HOST)

            return popping(queue, attach)

        return per_thread
    return make


def eipflow_variant(flow: Any) -> Variant:
    """``Eipflow.attach(wait=True)``: each caller thread gets its own pinned connection from the fast path."""
    def attach(j: int) -> None:
        eip = flow.attach(eip_uuid(j), nic=f"nic-{j}", guest_ip=guest_ip(j), vm=ATTACH_VM, host=HOST)
        if eip.state != "attached":
            raise RuntimeError(f"attach ended {eip.state}")

    def make(_workers: int, queue: deque[int], _opened: list[Floor]) -> Callable[[int], Callable[[], bool]]:
        return lambda _n: popping(queue, attach)
    return make


def attach_rates(label: str, pool: Pool, variants: dict[str, Variant], workers_list: list[int], seconds: float,
                 rounds: int, guess: dict[str, float]) -> dict[tuple[str, int], float]:
    """Medians of ``rounds`` windows per variant and caller count, interleaved (the order alternates per round).

    Each window gets 1.5 times the EIPs its variant's best rate so far (or ``guess``) would use; a variant that
    still runs out is reported (its figure is then low).
    """
    best: dict[tuple[str, int], float] = {}
    samples: dict[tuple[str, int], list[float]] = {}
    names = list(variants)
    for r in range(rounds):
        for w in workers_list:
            for name in (names if r % 2 == 0 else names[::-1]):
                rate = best.get((name, w), guess.get(name, 3000.0))
                queue = pool.take(int(rate * seconds * 1.5) + 40 * w)
                opened: list[Floor] = []
                m = window(w, seconds, variants[name](w, queue, opened))
                for raw in opened:
                    raw.close()
                if m.ran_out:
                    print(f"  warning: {label} {name} x{w} ran out of EIPs: the figure is low", file=sys.stderr)
                best[(name, w)] = max(best.get((name, w), 0.0), m.rate)
                samples.setdefault((name, w), []).append(m.rate)
                print(f"  {label:18} attach round {r + 1} callers {w:2} {name:22} {m.rate:9.1f}/s", file=sys.stderr)
    return {k: median(v) for k, v in samples.items()}

"""The run: set up, let the actors loose (threads or processes), quiesce, report."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable

import sqlalchemy as sa

from ..api import Eipflow
from ..backends.base import Backend
from ..backends.simulated import InMemoryDataplane, SimulatedDataplane
from ..errors import InvalidInput
from ..store.schema import EipRow, TransitionRow
from .actors import _actors, _counter_source, _open, _process_main, _Tally
from .config import SimConfig, home_host, vip_of
from .report import SimReport, _report

EIP = EipRow.__table__  # type: ignore[attr-defined]
HISTORY = TransitionRow.__table__  # type: ignore[attr-defined]


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

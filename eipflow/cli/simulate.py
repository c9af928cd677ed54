"""``eipflow simulate``: a seeded chaos run that ends with the behaviour contract's invariant check."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click
from click.core import ParameterSource

from ..simulate import DEFAULT_MIX, Latency, SimConfig, parse_mix, run
from ._context import set_level

__all__ = ["register"]

_MIX_TEXT = ",".join(f"{k}={v:g}" for k, v in DEFAULT_MIX.items())


@contextmanager
def _progress(enabled: bool, total: int | None) -> Iterator[Callable[[int, int | None], None] | None]:
    """A rich progress bar on stderr when it is a terminal; nothing otherwise (stdout stays clean)."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("simulate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("requests", total=total)
        last = [0]

        def update(done: int, _total: int | None) -> None:
            # Called from many actor threads: refresh at most every 1% to keep the bar off the hot path.
            step = max(1, (total or 1000) // 100)
            if done - last[0] >= step or (total is not None and done >= total):
                last[0] = done
                bar.update(task, completed=done)

        yield update


@click.command("simulate")
@click.option("--db", "--sim-db", "sim_db", default=None, metavar="URL",
              help="database to run on (must hold no EIPs) [default: a temporary SQLite file, removed when the "
                   "run passes]. EIPFLOW_DB is deliberately ignored: a chaos run must never land on a real database "
                   "by accident; the global --db is honoured only when given on the command line.")
@click.option("--eips", default=200, show_default=True, help="EIP slots (a deleted EIP's slot is re-created)")
@click.option("--vms", default=50, show_default=True)
@click.option("--hosts", default=4, show_default=True)
@click.option("--workers", default=4, show_default=True, help="actor threads (per process with --processes)")
@click.option("--processes", default=0, show_default=True,
              help="separate worker processes sharing the database and the DB-backed simulated dataplane "
                   "(0: threads of this process, in-memory dataplane)")
@click.option("--ops", type=int, default=None, help="number of requests [default 2000 unless --duration]")
@click.option("--duration", "duration_s", type=float, default=None, help="run requests for this many seconds")
@click.option("--mix", default=_MIX_TEXT, show_default=True, help="request weights: attach, detach, stop, start, "
              "migrate, delete")
@click.option("--latency", "latency_text", default="0", show_default=True,
              help="backend latency in ms: fixed:MS, uniform:LOW,HIGH or exp:MEAN")
@click.option("--failure-rate", default=0.0, show_default=True, help="fraction of backend calls that fail")
@click.option("--timeout-rate", default=0.0, show_default=True,
              help="fraction of backend calls whose effect happens but whose answer is lost")
@click.option("--seed", default=0, show_default=True, help="the same seed replays the same requests")
@click.option("--json", "as_json_local", is_flag=True, help="print the report as one JSON document")
@click.pass_context
def simulate(ctx: click.Context, sim_db: str | None, eips: int, vms: int, hosts: int, workers: int, processes: int,
             ops: int | None, duration_s: float | None, mix: str, latency_text: str, failure_rate: float,
             timeout_rate: float, seed: int, as_json_local: bool) -> None:
    """Drive many concurrent actors against eipflow, quiesce, and check every invariant.

    Exits 0 when the contract holds, 1 (printing the first violations with the EIP, its history and the
    dataplane) when it does not.
    """
    root = ctx.find_root()
    if not root.params.get("verbose"):
        # Injected faults log a warning each; without -v keep stderr for the bar and real errors.
        set_level(logging.ERROR)
    as_json = as_json_local or bool(root.obj.as_json)
    url = sim_db
    if url is None and root.get_parameter_source("db_url") is ParameterSource.COMMANDLINE:
        url = root.params.get("db_url")
    if ops is None and duration_s is None:
        ops = 2000
    config = SimConfig(
        db_url=url, eips=eips, vms=vms, hosts=hosts, workers=workers, processes=processes, ops=ops,
        duration_s=duration_s, mix=parse_mix(mix), latency=Latency.parse(latency_text),
        failure_rate=failure_rate, timeout_rate=timeout_rate, seed=seed,
    )
    with _progress(sys.stderr.isatty() and not as_json, ops) as progress:
        report = run(config, progress=progress)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True, default=str))
    else:
        click.echo(report.text())
    if not report.ok:
        if not as_json:
            click.echo(f"error: {len(report.violations)} invariant violation(s), {len(report.errors)} unexpected "
                       f"error(s); database kept at {report.db_url}", err=True)
        ctx.exit(1)


def register(root: click.Group) -> None:
    """Add this module's commands to the root group."""
    root.add_command(simulate)

"""``eipflow worker``, ``eipflow work list|retry`` and ``eipflow reconcile``."""

from __future__ import annotations

from contextlib import ExitStack
from datetime import timedelta
from typing import Any

import click

from ..api import Eipflow
from ..backends.batch import MAX_BATCH
from ..reconcile import Reconciler, ReconcileReport
from ..values import WorkItem
from ..worker import DEFAULT_BATCH_SIZE, Worker
from ._context import State, emit, exit_partial, pass_state
from ._partial import tolerant_flow
from .eips import _table
from .prune import DURATION, PrunePolicy, Pruner

STATUSES = ("pending", "running", "done", "parked", "cancelled")


@click.command("worker")
@click.option("--once", is_flag=True, help="drain all work due now (including what it makes due), then exit")
@click.option("--lease-seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="lease per claimed item [default: $EIPFLOW_LEASE_SECONDS or 60]")
@click.option("--poll-interval", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="seconds between polls when idle")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH), default=DEFAULT_BATCH_SIZE, show_default=True,
              help="items one claim leases and runs together (one backend call per host, one completing "
                   "transaction); a stop finishes the batch in flight")
@click.option("--metrics-address", default=None, metavar="HOST:PORT", envvar="EIPFLOW_METRICS_ADDRESS",
              help="serve Prometheus /metrics and the /livez, /readyz probes here (needs eipflow[metrics]) "
                   "[env EIPFLOW_METRICS_ADDRESS]")
@click.option("--prune-every", type=DURATION, default=None, metavar="AGE",
              help="also prune every AGE (1h) with --history-older-than / --work-older-than")
@click.option("--history-older-than", "history_age", type=DURATION, default=None, metavar="AGE",
              help="with --prune-every: delete history older than AGE (30d)")
@click.option("--work-older-than", "work_age", type=DURATION, default=None, metavar="AGE",
              help="with --prune-every: delete finished work older than AGE (7d)")
@pass_state
def worker(state: State, once: bool, lease_seconds: float | None, poll_interval: float, batch_size: int,
           metrics_address: str | None, prune_every: timedelta | None, history_age: timedelta | None,
           work_age: timedelta | None) -> None:
    """Run backend work: until SIGTERM/SIGINT (finishing the batch in flight), or once with --once."""
    if (prune_every is None) != (history_age is None and work_age is None):
        raise click.UsageError("--prune-every needs --history-older-than and/or --work-older-than, and they need it")
    flow = state.flow
    with ExitStack() as stack:
        if metrics_address is not None:
            w: Worker = _serve_metrics(stack, flow, metrics_address, lease_seconds=lease_seconds,
                                       poll_interval=poll_interval, batch_size=batch_size)
        else:
            w = Worker(flow, lease_seconds=lease_seconds, poll_interval=poll_interval, batch_size=batch_size)
        if prune_every is not None:
            pruner = Pruner(flow.store, PrunePolicy(history_age, work_age), prune_every).start()
            stack.callback(pruner.stop)
        ran = w.run_once() if once else w.run_forever()
    remaining = flow.work_items(statuses=["pending", "running"])
    emit(state, {"ran": ran, "owner": w.owner, "remaining": len(remaining)},
         f"ran {ran} item(s); {len(remaining)} pending or running")


def _serve_metrics(stack: ExitStack, flow: Eipflow, address: str, **worker_options: Any) -> Worker:
    try:
        from ..metrics import (
            DatabaseProbe,
            InstrumentedWorker,
            Metrics,
            MetricsServer,
            QueueStateCollector,
            parse_address,
        )
    except ImportError as exc:
        raise click.ClickException(f"--metrics-address needs the 'metrics' extra: pip install 'eipflow[metrics]' "
                                   f"({exc})") from None
    where = parse_address(address)
    metrics = Metrics().install()
    stack.callback(metrics.uninstall)
    metrics.registry.register(QueueStateCollector(flow.store.engine, clock=flow.store.clock))
    probe = DatabaseProbe(flow.store.engine)
    stack.callback(probe.close)
    w = InstrumentedWorker(flow, metrics, **worker_options)
    server = MetricsServer(metrics, where, ready=probe).start()
    stack.callback(server.stop)
    return w


@click.group("work")
def work_group() -> None:
    """Inspect and retry durable backend work items."""


def _work_text(items: list[WorkItem]) -> str:
    if not items:
        return "no work items"
    rows: list[tuple[str, ...]] = [("ID", "EIP", "ACTION", "HOST", "STATUS", "ATTEMPTS", "DUE", "OWNER", "LAST ERROR")]
    for w in items:
        action = f"{w.action}*" if w.cleanup else w.action
        rows.append((
            str(w.id), w.eip_uuid, action, w.spec.host_uuid if w.spec else "-", w.status, str(w.attempts),
            w.due_at.strftime("%Y-%m-%d %H:%M:%S"), w.lease_owner or "-", w.last_error or "-",
        ))
    return _table(rows) + ("\n(* cleanup revoke of an orphaned or stray rule)" if any(w.cleanup for w in items) else "")


@work_group.command("list")
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES),
              help="only items with this status (repeatable) [default: all]")
@click.option("--eip", default=None, help="only items of this EIP")
@pass_state
def work_list(state: State, statuses: tuple[str, ...], eip: str | None) -> None:
    """List work items with their attempts and last error."""
    items = state.reader().list_work(statuses=list(statuses) or None, eip_uuid=eip)
    emit(state, [w.to_dict() for w in items], _work_text(items))


@work_group.command("retry")
@click.argument("work_id", type=int)
@pass_state
def work_retry(state: State, work_id: int) -> None:
    """Make a parked item due now with a fresh attempt budget (a worker or reconcile runs it)."""
    item = state.flow.retry_work(work_id)
    emit(state, item.to_dict(), f"work item {item.id} is {item.status}, due now")


def _report_text(report: ReconcileReport) -> str:
    lines = []
    if not report.drift_checked:
        lines.append("note: the backend cannot list its rules; only in-flight work was checked")
    if report.clean:
        lines.append("nothing to repair")
        return "\n".join(lines)
    outcomes = {id(r): o for r, o in report.outcomes}
    rows: list[tuple[str, ...]] = [("REPAIR", "EIP", "HOST", "WORK", "REASON", "OUTCOME" if not report.dry_run else "")]
    for r in report.planned:
        rows.append((r.kind, r.eip_uuid, r.host_uuid or "-", str(r.work_id or "-"), r.reason,
                     outcomes.get(id(r), "") if not report.dry_run else ""))
    lines.append(_table(rows))
    if report.dry_run:
        lines.append(f"dry run: {len(report.planned)} repair(s) planned, none executed")
    return "\n".join(lines)


@click.command("reconcile")
@click.option("--host", default=None, help="only this host's rules and EIPs")
@click.option("--dry-run", is_flag=True, help="print the plan, change nothing")
@pass_state
def reconcile(state: State, host: str | None, dry_run: bool) -> None:
    """Re-drive stuck in-flight work and repair dataplane drift both ways.

    A host whose agent cannot be reached is reported and left alone; the others are repaired,
    and the exit code is 6 (partial).
    """
    flow, view = tolerant_flow(state.flow)
    report = Reconciler(flow).run(host, dry_run=dry_run)
    data = report.to_dict()
    text = _report_text(report)
    if view is not None:
        hosts = {h: view.unreachable.get(h) for h in view.asked}
        data["hosts"] = {h: {"reachable": why is None, "error": why} for h, why in hosts.items()}
        lines = [f"host {h}: unreachable, its rules were not checked and nothing was repaired there: {why}"
                 for h, why in hosts.items() if why is not None]
        text = "\n".join([text, *lines])
    emit(state, data, text)
    if view is not None and view.unreachable:
        exit_partial(view.unreachable, len(view.asked))


def register(root: click.Group) -> None:
    """Add this module's commands to the root group."""
    for command in (worker, work_group, reconcile):
        root.add_command(command)

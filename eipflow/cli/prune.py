"""``eipflow prune``: remove finished work items and old history, in bounded batches."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from .._logging import get_logger
from ._context import State, emit, pass_state

if TYPE_CHECKING:
    from ..store import Store

__all__ = ["DURATION", "Pruner", "PrunePolicy", "prune"]

log = get_logger(__name__)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


class Duration(click.ParamType):  # type: ignore[type-arg]  # generic only in newer Click
    """``30d``, ``12h``, ``90m``, ``3600s``, ``2w``."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        m = _DURATION.match(str(value))
        if m is None or float(m.group(1)) <= 0:
            self.fail(f"{value!r} is not a positive duration like 30d, 12h, 90m, 3600s or 2w", param, ctx)
        return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


DURATION = Duration()


@dataclass(frozen=True)
class PrunePolicy:
    """What ``prune`` removes: history older than ``history``, finished work older than ``work``."""

    history: timedelta | None
    work: timedelta | None
    batch_size: int = 1000

    def run(self, store: Store, *, dry_run: bool = False) -> dict[str, Any]:
        now = store.clock.now()
        history_before = now - self.history if self.history is not None else None
        work_before = now - self.work if self.work is not None else None
        counts = store.prune(history_before=history_before, work_before=work_before, batch_size=self.batch_size,
                             dry_run=dry_run)
        return {"dry_run": dry_run, "history_deleted": counts["history"], "work_deleted": counts["work"],
                "history_before": _iso(history_before), "work_before": _iso(work_before)}


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


class Pruner:
    """Runs a :class:`PrunePolicy` now and then every ``every`` until :meth:`stop` (``worker --prune-every``)."""

    def __init__(self, store: Store, policy: PrunePolicy, every: timedelta) -> None:
        self.store = store
        self.policy = policy
        self.every = every
        self.runs = 0
        #: set after each run (tests wait on it instead of sleeping)
        self.ran = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="eipflow-prune", daemon=True)

    def start(self) -> Pruner:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                result = self.policy.run(self.store)
            except Exception as exc:  # noqa: BLE001 - a failed prune is retried next period, the worker goes on
                log.warning("prune.failed", error=str(exc))
            else:
                log.info("prune.done", **result)
            self.runs += 1
            self.ran.set()
            self._stop.wait(self.every.total_seconds())


@click.command("prune")
@click.option("--history-older-than", "history_age", type=DURATION, default=None, metavar="AGE",
              help="delete history recorded longer ago than AGE (30d); the latest row of each live EIP is kept")
@click.option("--work-older-than", "work_age", type=DURATION, default=None, metavar="AGE",
              help="delete done/cancelled work items finished longer ago than AGE (7d); unfinished work is kept")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="rows per transaction")
@click.option("--dry-run", is_flag=True, help="count what would be deleted, delete nothing")
@pass_state
def prune(state: State, history_age: timedelta | None, work_age: timedelta | None, batch_size: int,
          dry_run: bool) -> None:
    """Remove finished work items and old history (bounded batches, safe while eipflow runs)."""
    if history_age is None and work_age is None:
        raise click.UsageError("give --history-older-than AGE, --work-older-than AGE, or both")
    result = PrunePolicy(history_age, work_age, batch_size).run(state.reader(), dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    parts = []
    if history_age is not None:
        parts.append(f"{result['history_deleted']} history row(s) recorded before {result['history_before']}")
    if work_age is not None:
        parts.append(f"{result['work_deleted']} finished work item(s) last updated before {result['work_before']}")
    emit(state, result, f"{verb} " + " and ".join(parts))

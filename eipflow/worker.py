"""Workers: processes that claim due work items and run them.

Any number of workers on any number of machines can share one database. Each
claim is a compare-and-swap on the item's status and lease (the correctness
guarantee, :meth:`eipflow.store.Store.claim`); on PostgreSQL and MariaDB the
candidates are picked with ``SELECT … FOR UPDATE SKIP LOCKED`` first, so a herd
of workers spreads over the queue instead of all racing for its head.

A worker that dies leaves a lease that simply expires: the item becomes due
again and the next worker re-runs it (apply and revoke are idempotent). While a
backend call runs longer than a lease, the runner's heartbeat renews it, so a slow
but healthy worker is not mistaken for a dead one. Leases are judged on the database's
clock (:class:`~eipflow.store.LeaseClock`), so a worker whose own clock runs ahead cannot
take a live lease; and a worker that loses its lease anyway (paused past it) is stopped
at the host by the generation its calls carry.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from ._logging import get_logger
from .api import Eipflow
from .backends.batch import MAX_BATCH
from .runner import Runner, default_owner
from .values import WorkItem

__all__ = ["Worker"]

log = get_logger(__name__)

_SKIP_LOCKED_DIALECTS = frozenset({"postgresql", "mysql", "mariadb"})
#: items one worker claim leases and runs as one batch
DEFAULT_BATCH_SIZE = 100


class Worker:
    """Claims due work items and runs them through a :class:`~eipflow.runner.Runner`.

    Args:
        flow: the opened :class:`~eipflow.Eipflow` (database + backend).
        lease_seconds: how long a claim stays ours without renewal (default: the flow's,
            i.e. ``$EIPFLOW_LEASE_SECONDS`` or 60).
        poll_interval: the longest :meth:`run_forever` sleeps when nothing is due.
        heartbeat_interval: renew the lease this often while an item runs (default a third of
            the lease); ``None`` or ``0`` disables the heartbeat thread (freezegun tests).
        owner: the lease owner name (default ``host:pid:random``).
        skip_locked: pick candidates with ``FOR UPDATE SKIP LOCKED``; default: on PostgreSQL and
            MariaDB/MySQL, off on SQLite (which has one writer anyway).
        batch_size: the most items one claim leases and one batch runs (one backend call per host and
            one completing transaction per batch); ``1`` runs items one at a time.
    """

    def __init__(
        self,
        flow: Eipflow,
        *,
        lease_seconds: float | None = None,
        poll_interval: float = 1.0,
        heartbeat_interval: float | None = -1.0,
        owner: str | None = None,
        skip_locked: bool | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if lease_seconds is not None and lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be a whole number from 1 to {MAX_BATCH}, not {batch_size!r}")
        self.batch_size = batch_size
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.flow = flow
        self.store = flow.store
        lease = lease_seconds if lease_seconds is not None else flow.runner.lease_seconds
        self.heartbeat_interval = lease / 3 if heartbeat_interval == -1.0 else (heartbeat_interval or None)
        self.runner = Runner(
            flow.store, flow.backend, owner=owner or default_owner(), lease_seconds=lease, retry=flow.runner.retry,
            heartbeat_interval=self.heartbeat_interval,
        )
        self.poll_interval = poll_interval
        dialect = flow.store.engine.dialect.name
        self.skip_locked = dialect in _SKIP_LOCKED_DIALECTS if skip_locked is None else skip_locked
        self.ran = 0
        #: set every time the heartbeat renewed a lease (tests wait on it instead of sleeping)
        self.heartbeat = self.runner.heartbeat.beat
        self._stop = threading.Event()
        self._current: list[WorkItem] = []

    @property
    def owner(self) -> str:
        return self.runner.owner

    @property
    def lease_seconds(self) -> float:
        return self.runner.lease_seconds

    # -- claiming ------------------------------------------------------------------------------
    def claim_next(self) -> WorkItem | None:
        """Lease the next due item (pending and due, or running with an expired lease), if any."""
        claimed = self.claim_batch(1)
        return claimed[0] if claimed else None

    def claim_batch(self, limit: int | None = None) -> list[WorkItem]:
        """Lease up to ``limit`` (default :attr:`batch_size`) due items in one transaction
        (:meth:`~eipflow.store.Store.claim_due`)."""
        return self.store.claim_due(self.owner, self.lease_seconds, limit or self.batch_size,
                                    skip_locked=self.skip_locked)

    # -- running -------------------------------------------------------------------------------
    def run_one(self) -> WorkItem | None:
        """Claim and run one due item. Returns it, or ``None`` when nothing is due now."""
        ran = self.run_batch(1)
        return ran[0] if ran else None

    def run_batch(self, limit: int | None = None) -> list[WorkItem]:
        """Claim up to ``limit`` (default :attr:`batch_size`) due items and run them as one batch: one backend
        call per host, the completions in one transaction. Returns them (empty when nothing is due)."""
        items = self.claim_batch(limit)
        if not items:
            return []
        if self._stop.is_set():
            # Asked to stop between the claim and the work: hand them back rather than sit on them.
            for item in items:
                self.store.release_lease(item.id, self.owner)
                log.info("work.released", work_id=item.id, eip_uuid=item.eip_uuid)
            return []
        self._current = items
        try:
            with self.running(items):
                self.runner.run_batch(items)  # renews the leases while the backend calls run
        finally:
            self._current = []
        self.ran += len(items)
        return items

    @contextmanager
    def running(self, items: list[WorkItem]) -> Iterator[None]:
        """Hook around each claimed batch while it runs (tracing, metrics); does nothing here."""
        yield

    def run_once(self) -> int:
        """Run everything due *now*, including work that running items make due (``worker --once``).

        Returns:
            How many items ran. Items due later (backoff) and items leased by a live worker are
            left alone, so this returns even when some work remains.
        """
        ran = 0
        while not self._stop.is_set():
            batch = self.run_batch()
            if not batch:
                break
            ran += len(batch)
        log.info("worker.drained", worker=self.owner, ran=ran)
        return ran

    def run_forever(self, *, install_signal_handlers: bool = True) -> int:
        """Run until :meth:`stop` (or SIGTERM/SIGINT): the current item finishes, then we return.

        Returns:
            How many items ran.
        """
        restore = self._install_handlers() if install_signal_handlers else None
        log.info("worker.started", worker=self.owner, lease_seconds=self.lease_seconds, skip_locked=self.skip_locked)
        ran = 0
        try:
            while not self._stop.is_set():
                ran += self.run_once()
                if self._stop.is_set():
                    break
                self._stop.wait(self._idle_seconds())
        finally:
            if restore is not None:
                restore()
        log.info("worker.stopped", worker=self.owner, ran=ran)
        return ran

    def stop(self) -> None:
        """Ask the worker to stop after its current item (safe from signal handlers and other threads)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _idle_seconds(self) -> float:
        # Wake early for the next backoff that falls due, but never poll faster than 10 ms.
        nxt = self.store.next_due_at()
        if nxt is None:
            return self.poll_interval
        wait = (nxt - self.store.clock.now()).total_seconds()
        return min(self.poll_interval, max(0.01, wait))

    def _install_handlers(self) -> Callable[[], None] | None:
        if threading.current_thread() is not threading.main_thread():
            return None  # only the main thread may install signal handlers

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("worker.stopping", worker=self.owner, signal=signal.Signals(signum).name)
            self.stop()

        previous: dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

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
from collections.abc import Callable
from types import FrameType
from typing import Any

import sqlalchemy as sa

from ._logging import get_logger
from .api import Eipflow
from .runner import Runner, default_owner
from .store.database import retry_transient, translate_errors
from .store.statements import due_picks, work_claim
from .store.store import WORK, _work, lease_us
from .values import WorkItem

__all__ = ["Worker"]

log = get_logger(__name__)

_SKIP_LOCKED_DIALECTS = frozenset({"postgresql", "mysql", "mariadb"})


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
    ) -> None:
        if lease_seconds is not None and lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
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
        self._picks = [pick.with_for_update(skip_locked=True) for pick in due_picks(1)]
        self._claim_picked = work_claim()
        self.ran = 0
        #: set every time the heartbeat renewed a lease (tests wait on it instead of sleeping)
        self.heartbeat = self.runner.heartbeat.beat
        self._stop = threading.Event()
        self._current: WorkItem | None = None

    @property
    def owner(self) -> str:
        return self.runner.owner

    @property
    def lease_seconds(self) -> float:
        return self.runner.lease_seconds

    # -- claiming ------------------------------------------------------------------------------
    def claim_next(self) -> WorkItem | None:
        """Lease the next due item (pending and due, or running with an expired lease), if any."""
        if self.skip_locked:
            return self._claim_skip_locked()
        due = self.store.due_work(self.store.clock.now(), limit=20)
        for work_id in due:
            item = self.store.claim(work_id, self.owner, self.lease_seconds)
            if item is not None:
                return item
        return None

    @retry_transient
    def _claim_skip_locked(self) -> WorkItem | None:
        # Candidates locked by another worker's claim are skipped, not waited for; the UPDATE
        # repeats the claim's conditions, so the compare-and-swap stays the guarantee. Expired leases
        # first, then due items: each pick is one in-order scan of the (status, due_at) index.
        now = self.store.clock.now()
        engine = self.store.engine
        with translate_errors(engine), engine.begin() as conn:
            work_id = None
            for pick in self._picks:
                work_id = conn.execute(pick, {"now": now}).scalar()
                if work_id is not None:
                    break
            if work_id is None:
                return None
            claimed = conn.execute(
                self._claim_picked,
                {"w_id": work_id, "w_now": now, "s_owner": self.owner, "s_now": now,
                 "s_lease_us": lease_us(self.lease_seconds)},
            )
            if claimed.rowcount != 1:
                return None
            row = conn.execute(sa.select(WORK).where(WORK.c.id == work_id)).first()
        return _work(row)

    # -- running -------------------------------------------------------------------------------
    def run_one(self) -> WorkItem | None:
        """Claim and run one due item. Returns it, or ``None`` when nothing is due now."""
        item = self.claim_next()
        if item is None:
            return None
        if self._stop.is_set():
            # Asked to stop between the claim and the work: hand it back rather than sit on it.
            self.store.release_lease(item.id, self.owner)
            log.info("work.released", work_id=item.id, eip_uuid=item.eip_uuid)
            return None
        self._current = item
        try:
            self.runner.run_claimed(item)  # renews the lease while the backend call runs
        finally:
            self._current = None
        self.ran += 1
        return item

    def run_once(self) -> int:
        """Run everything due *now*, including work that running items make due (``worker --once``).

        Returns:
            How many items ran. Items due later (backoff) and items leased by a live worker are
            left alone, so this returns even when some work remains.
        """
        ran = 0
        while not self._stop.is_set():
            if self.run_one() is None:
                break
            ran += 1
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

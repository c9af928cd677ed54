"""Lease renewal for whoever runs backend work: workers, inline API calls, steps, the reconciler.

A backend call may outlive its lease; without renewal any claimer could then take the item and two calls
of one EIP would overlap. :class:`Heartbeat` renews, from one daemon thread per runner, the lease of every
item the runner is executing, every ``interval`` seconds, on the shared lease clock. It only keeps the
takeover rare: when a renewal is lost anyway (the process was paused past its lease), the host's
generation check is what stops the stale call (:mod:`eipflow.backends.fencing`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ._logging import get_logger

if TYPE_CHECKING:
    from .store import Store
    from .values import WorkItem

__all__ = ["Heartbeat"]

log = get_logger(__name__)


class Heartbeat:
    """Renews the leases one owner holds while their backend calls run.

    Args:
        store: where the leases live.
        owner: the lease owner (the runner's).
        lease_seconds: the length of each renewal.
        interval: seconds between renewals; ``None`` or ``0`` turns renewal off.
    """

    def __init__(self, store: Store, owner: str, lease_seconds: float, interval: float | None) -> None:
        self.store = store
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.interval = interval or None
        #: set on every successful renewal (tests wait on it instead of sleeping)
        self.beat = threading.Event()
        self.renewals = 0
        self._held: dict[int, WorkItem] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    @contextmanager
    def holding(self, item: WorkItem) -> Iterator[None]:
        """Keep ``item``'s lease renewed while the block runs."""
        if self.interval is None:
            yield
            return
        with self._lock:
            self._held[item.id] = item
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"eipflow-heartbeat-{self.owner}",
                                                daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(item.id, None)

    def close(self) -> None:
        """Stop the renewal thread (it also stops by itself one interval after the last item)."""
        self._closed.set()

    def _run(self) -> None:
        assert self.interval is not None
        while not self._closed.wait(self.interval):
            with self._lock:
                held = list(self._held.values())
                if not held:
                    self._thread = None  # idle for a whole interval: the next holding() starts a new one
                    return
            if len(held) == 1:
                self._renew(held[0])
            else:
                self._renew_many(held)
        with self._lock:
            self._thread = None

    def _renew_many(self, held: list[WorkItem]) -> None:
        """A batch's leases in one statement per 500 (a worker's batch, a VM's fan-out)."""
        try:
            kept = self.store.extend_leases([i.id for i in held], self.owner, self.lease_seconds)
        except Exception as exc:  # noqa: BLE001 - a failed renewal must not kill the calls in flight
            log.warning("work.heartbeat_failed", size=len(held), error=str(exc))
            return
        for item in held:
            if item.id not in kept:
                self._lost(item)
        if kept:
            self.renewals += len(kept)
            log.debug("work.heartbeat", size=len(kept))
            self.beat.set()

    def _lost(self, item: WorkItem) -> None:
        with self._lock:
            if self._held.pop(item.id, None) is None:
                return  # it finished meanwhile: nothing was lost
        try:
            now = self.store.work_item(item.id)
        except Exception:  # noqa: BLE001 - cannot tell: say it was lost (the completion is fenced anyway)
            now = None
        if now is not None and now.status != "running":
            return  # its completion committed just before this renewal (its holding block had not ended yet)
        # Another owner took it: the completion is fenced, and the host's generation check refuses
        # anything this call sends that is older than what the host has seen.
        log.warning("work.lease_lost", work_id=item.id, eip_uuid=item.eip_uuid, owner=self.owner)

    def _renew(self, item: WorkItem) -> None:
        try:
            renewed = self.store.extend_lease(item.id, self.owner, self.lease_seconds)
        except Exception as exc:  # noqa: BLE001 - a failed renewal must not kill the call in flight
            log.warning("work.heartbeat_failed", work_id=item.id, eip_uuid=item.eip_uuid, error=str(exc))
            return
        if not renewed:
            self._lost(item)
            return
        self.renewals += 1
        log.debug("work.heartbeat", work_id=item.id, eip_uuid=item.eip_uuid)
        self.beat.set()

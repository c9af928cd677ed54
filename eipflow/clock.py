"""Time, injectable: every timestamp eipflow writes comes from a :class:`Clock`."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock", "utcnow"]


def utcnow() -> datetime:
    """Timezone-aware UTC now (freezegun patches it in single-threaded tests)."""
    return datetime.now(UTC)


class Clock(Protocol):
    """Where eipflow reads the time; inject :class:`ManualClock` in tests that run threads."""

    def now(self) -> datetime:
        """Timezone-aware UTC now."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return utcnow()


class ManualClock:
    """A thread-safe clock that moves only when told to (use it where threads run; freezegun is not thread-safe)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now

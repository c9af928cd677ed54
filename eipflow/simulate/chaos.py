"""The chaos layer over a dataplane, and the overlap check on the call intervals it records."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter
from typing import Any

from ..backends.base import Backend, ListsRules
from ..errors import BackendError, BackendTimeout
from ..values import EipSpec
from .config import Latency


class ChaosBackend:
    """Wraps a dataplane: random latency, failures (before the effect) and timeouts (after it).

    Records every call's interval on the system-wide monotonic clock, so the parent can prove no EIP
    ever had two backend calls in flight, even when they came from different processes.
    """

    def __init__(self, inner: Backend, *, latency: Latency, failure_rate: float, timeout_rate: float,
                 seed: int) -> None:
        self.inner = inner
        self.latency = latency
        self.failure_rate = failure_rate
        self.timeout_rate = timeout_rate
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._in_flight: Counter[str] = Counter()
        self.own_overlaps: list[str] = []
        self.intervals: list[tuple[str, float, float]] = []
        self.counts: Counter[str] = Counter()

    def bind(self, engine: Any) -> None:
        bind = getattr(self.inner, "bind", None)
        if callable(bind):
            bind(engine)

    @property
    def overlaps(self) -> list[str]:
        """EIPs that saw two calls in flight at once, here or in the wrapped dataplane."""
        return [*self.own_overlaps, *getattr(self.inner, "overlaps", [])]

    def rules(self, host_uuid: str | None = None) -> list[EipSpec]:
        if not isinstance(self.inner, ListsRules):
            raise TypeError(f"{type(self.inner).__name__} cannot list its rules")
        return self.inner.rules(host_uuid)

    def apply(self, spec: EipSpec) -> None:
        self._call("apply", spec)

    def revoke(self, spec: EipSpec) -> None:
        self._call("revoke", spec)

    def _call(self, action: str, spec: EipSpec) -> None:
        with self._lock:
            self._in_flight[spec.eip_uuid] += 1
            if self._in_flight[spec.eip_uuid] > 1:
                self.own_overlaps.append(spec.eip_uuid)
            draw = self._rng.random()
            delay = self.latency.sample(self._rng)
        started = time.monotonic()
        outcome = "ok"
        try:
            if delay > 0:
                time.sleep(delay)  # the simulated backend's latency
            if draw < self.failure_rate:
                outcome = "failed"
                raise BackendError(f"chaos: injected {action} failure")
            getattr(self.inner, action)(spec)
            if draw < self.failure_rate + self.timeout_rate:
                outcome = "timeout"
                raise BackendTimeout(f"chaos: {action} applied but the answer was lost")
        except BackendError:
            raise
        except Exception:
            outcome = "error"
            raise
        finally:
            ended = time.monotonic()
            with self._lock:
                self._in_flight[spec.eip_uuid] -= 1
                self.intervals.append((spec.eip_uuid, started, ended))
                self.counts[f"{action}.{outcome}"] += 1


def _overlapping(intervals: list[tuple[str, float, float]]) -> list[str]:
    """EIPs whose recorded backend calls overlap in time (intervals from every actor and process)."""
    by_eip: dict[str, list[tuple[float, float]]] = {}
    for uuid, start, end in intervals:
        by_eip.setdefault(uuid, []).append((start, end))
    out = []
    for uuid, spans in by_eip.items():
        spans.sort()
        if any(b_start < a_end for (_, a_end), (b_start, _) in itertools.pairwise(spans)):
            out.append(uuid)
    return sorted(out)

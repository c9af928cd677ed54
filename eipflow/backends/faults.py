"""Fault injection for the simulated backends: failures, unknown outcomes, blocking gates, latency.

In-process hooks (``faults.fail``, ``faults.block``) force races with events, never sleeps.
Separate processes (the CLI tests) use environment variables:

- ``EIPFLOW_SIM_FAIL=apply`` (or ``revoke``, ``apply@HOST``): every matching call fails;
- ``EIPFLOW_SIM_GATE=DIR``: an apply announces itself and waits to be released. When ``DIR/entered``
  and ``DIR/release`` are named pipes (``os.mkfifo``) the apply writes a line to ``entered`` and reads
  ``release`` to its end — fully event-driven; otherwise it touches ``DIR/entered`` and waits until a
  file ``DIR/release`` exists.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BackendError, BackendTimeout
from ..values import EipSpec

__all__ = ["Faults", "Gate"]

GATE_TIMEOUT_S = 120.0


@dataclass
class Gate:
    """Blocks matching backend calls until released. ``entered`` is set when a call is waiting."""

    action: str
    eip_uuid: str | None = None
    host_uuid: str | None = None
    #: ``True``: the call has taken effect on the host and its *answer* is held (the caller is paused,
    #: or killed, after the host executed it); ``False``: held before the host sees it
    after: bool = False
    entered: threading.Event = field(default_factory=threading.Event)
    _open: threading.Event = field(default_factory=threading.Event)
    calls: int = 0

    def matches(self, action: str, spec: EipSpec) -> bool:
        return (
            self.action == action
            and self.eip_uuid in (None, spec.eip_uuid)
            and self.host_uuid in (None, spec.host_uuid)
        )

    def wait_entered(self, timeout: float = GATE_TIMEOUT_S) -> None:
        if not self.entered.wait(timeout):
            raise TimeoutError(f"no {self.action} call reached the gate within {timeout}s")

    def release(self) -> None:
        self._open.set()

    def _pass(self) -> None:
        self.calls += 1
        self.entered.set()
        if not self._open.wait(GATE_TIMEOUT_S):
            raise BackendTimeout(f"gate for {self.action} was never released")


@dataclass
class _Failure:
    action: str
    times: int | None  # None: forever
    host_uuid: str | None
    eip_uuid: str | None
    timeout: bool
    retryable: bool
    message: str

    def matches(self, action: str, spec: EipSpec) -> bool:
        return (
            self.action == action
            and (self.times is None or self.times > 0)
            and self.host_uuid in (None, spec.host_uuid)
            and self.eip_uuid in (None, spec.eip_uuid)
        )


class Faults:
    """Thread-safe fault plan consulted by a simulated backend around each call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: list[_Failure] = []
        self._gates: list[Gate] = []
        self.latency_s: dict[str, float] = {}

    def fail(
        self,
        action: str,
        times: int | None = 1,
        *,
        host_uuid: str | None = None,
        eip_uuid: str | None = None,
        timeout: bool = False,
        retryable: bool = True,
        message: str | None = None,
    ) -> None:
        """Make the next ``times`` matching calls fail (``timeout=True``: the effect happens, the answer is lost)."""
        msg = message or (f"simulated {action} timeout" if timeout else f"simulated {action} failure")
        with self._lock:
            self._failures.append(_Failure(action, times, host_uuid, eip_uuid, timeout, retryable, msg))

    def block(self, action: str, *, eip_uuid: str | None = None, host_uuid: str | None = None) -> Gate:
        """Hold matching calls at a gate, before they reach the host, until ``gate.release()``."""
        gate = Gate(action, eip_uuid, host_uuid)
        with self._lock:
            self._gates.append(gate)
        return gate

    def hold_answer(self, action: str, *, eip_uuid: str | None = None, host_uuid: str | None = None) -> Gate:
        """Let matching calls take effect on the host, then hold their answer until ``gate.release()``.

        The caller is then a worker paused right after the host executed its call: its lease may expire
        and another worker may run the same item meanwhile.
        """
        gate = Gate(action, eip_uuid, host_uuid, after=True)
        with self._lock:
            self._gates.append(gate)
        return gate

    def after(self, action: str, spec: EipSpec) -> None:
        """Called once the effect happened: waits at :meth:`hold_answer` gates."""
        with self._lock:
            gates = [g for g in self._gates if g.after and g.matches(action, spec)]
        for gate in gates:
            gate._pass()

    def clear(self) -> None:
        with self._lock:
            self._failures.clear()
            for gate in self._gates:
                gate.release()
            self._gates.clear()

    def before(self, action: str, spec: EipSpec, *, latency: bool = True) -> _Failure | None:
        """Called before the effect: waits at gates, sleeps latency, returns the failure to inject.

        ``latency=False`` for the changes of a batch: the batch waits once (:meth:`batch_latency`).
        """
        with self._lock:
            gates = [g for g in self._gates if not g.after and g.matches(action, spec)]
        for gate in gates:
            gate._pass()
        _env_gate(action)
        if latency:
            self.sleep_latency((action,))
        with self._lock:
            for failure in self._failures:
                if failure.matches(action, spec):
                    if failure.times is not None:
                        failure.times -= 1
                    return failure
        env = os.environ.get("EIPFLOW_SIM_FAIL", "")
        for item in filter(None, (p.strip() for p in env.split(","))):
            want, _, host = item.partition("@")
            if want == action and host in ("", spec.host_uuid):
                return _Failure(action, None, None, None, False, True, f"simulated {action} failure (EIPFLOW_SIM_FAIL)")
        return None

    def sleep_latency(self, actions: Iterable[str]) -> None:
        """One round trip's simulated latency for a call of ``actions`` (the slowest of them)."""
        delay = max((self.latency_s.get(a, 0.0) for a in actions), default=0.0)
        if delay > 0:
            time.sleep(delay)  # simulated backend latency (the simulate command), never a test's wait

    @staticmethod
    def error_for(failure: _Failure) -> BackendError:
        if failure.timeout:
            return BackendTimeout(failure.message)
        return BackendError(failure.message, retryable=failure.retryable)

    @staticmethod
    def raise_for(failure: _Failure) -> None:
        if failure.timeout:
            raise BackendTimeout(failure.message)
        raise BackendError(failure.message, retryable=failure.retryable)


def _env_gate(action: str) -> None:
    gate_dir = os.environ.get("EIPFLOW_SIM_GATE")
    if not gate_dir or action != "apply":
        return
    root = Path(gate_dir)
    entered, release = root / "entered", root / "release"
    if entered.is_fifo() and release.is_fifo():
        # Event-driven form: the test holds the other ends of two named pipes, so nobody polls.
        with entered.open("w") as pipe:
            pipe.write(f"{os.getpid()}\n")
        with release.open() as pipe:
            pipe.read()
        return
    entered.touch()
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while not (root / "release").exists():  # cross-process gate: the other side is a separate process
        if time.monotonic() > deadline:
            raise BackendTimeout("EIPFLOW_SIM_GATE was never released")
        time.sleep(0.01)

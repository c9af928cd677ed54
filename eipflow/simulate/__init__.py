"""A seeded chaos run: many concurrent actors drive the public API, then the contract is checked.

``eipflow simulate`` (and the test suite) calls :func:`run`. Actors (threads, optionally in several
worker processes sharing the database and the database-backed simulated dataplane) pull requests
from a deterministic schedule — request *i* depends only on the seed and *i*, so the same seed
replays the same requests whatever the interleaving — and call attach/detach/VM stop/start/migrate/
delete as orchestrator workers would. Expected refusals (an illegal transition, a guest IP in use, an
attach that failed and rolled back) are counted, not errors. The backend is wrapped in
:class:`ChaosBackend`: random latency, failures and timeouts (effect applied, answer lost).

When the actors are done the run quiesces (drains due work until nothing is pending) and checks
:func:`eipflow.invariants.check` plus two rules only a run can see: every attach that raised
:class:`~eipflow.AttachFailed` was rolled back, and no EIP ever had two backend calls in flight —
also across processes, from the call intervals every process records on the shared monotonic clock.
"""

from __future__ import annotations

from .chaos import ChaosBackend
from .config import DEFAULT_MIX, OPS, Latency, Op, SimConfig, op_at, parse_mix
from .harness import run
from .report import SimReport

__all__ = [
    "DEFAULT_MIX",
    "OPS",
    "ChaosBackend",
    "Latency",
    "Op",
    "SimConfig",
    "SimReport",
    "op_at",
    "parse_mix",
    "run",
]

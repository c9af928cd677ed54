"""Adapters that embed eipflow as a step of other orchestrators.

Each submodule imports its orchestrator (an optional dependency) when it is imported itself; the
core never imports this package:

- :mod:`eipflow.integrations.taskflow` — OpenStack TaskFlow tasks (``pip install 'eipflow[taskflow]'``);
- :mod:`eipflow.integrations.celery` — Celery tasks with late acks (``pip install 'eipflow[celery]'``);
- :mod:`eipflow.integrations.dbos` — DBOS Transact steps, recovered after a crash with one effect
  (``pip install 'eipflow[dbos]'``).

The asyncio face is part of the core: :class:`eipflow.AsyncEipflow`.
"""

from __future__ import annotations

from collections.abc import Callable

from ..api import Eipflow

__all__ = ["FlowSource", "resolve_flow"]

#: An engine, or a zero-argument callable that opens one on first use (per process).
FlowSource = Eipflow | Callable[[], Eipflow]


def resolve_flow(source: FlowSource) -> Eipflow:
    """The engine itself, or the one the callable returns."""
    return source if isinstance(source, Eipflow) else source()

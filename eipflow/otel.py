"""OpenTelemetry traces (``pip install 'eipflow[otel]'``): spans for public calls, transitions, work items
and backend calls, with the EIP uuid, event and states as attributes.

Nothing here is imported unless you use it, so the extra costs nothing when it is not installed. Like
:mod:`eipflow.metrics` it needs no line in the engine:

- :meth:`Tracing.wrap` puts a span around each public call of one :class:`~eipflow.Eipflow`
  (``eipflow.attach``, ``eipflow.vm_stopped``, …);
- :class:`TracedWorker` puts a span around each claimed work item (``eipflow.work``);
- the engine's structured events become child spans of whatever span is current: ``transition.applied``
  → ``eipflow.transition`` and ``backend.*_ok|failed`` → ``eipflow.backend.apply|revoke`` (their start is
  the event time minus the ``duration_ms`` the event carries, so they are not zero-length).

Attributes use an ``eipflow.*`` namespace, and ``workflow.*`` names where OpenTelemetry's draft workflow
conventions have them. While tracing is installed, every work item created inside a span carries that span's
W3C trace context (``eip_work.trace_context``), and :class:`TracedWorker` starts the item's span as its child:
a worker in another process — or a Celery worker running an eipflow task — continues the caller's trace.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.trace import Status, StatusCode, Tracer, TracerProvider

from . import _logging
from .api import Eipflow
from .store import statements
from .values import WorkItem
from .worker import Worker

__all__ = ["PUBLIC_CALLS", "TracedWorker", "Tracing", "current_trace_context"]

#: the :class:`~eipflow.Eipflow` methods :meth:`Tracing.wrap` traces
PUBLIC_CALLS = ("create_eip", "get_eip", "list_eips", "history", "delete_eip", "attach", "detach", "vm_stopped",
                "vm_started", "vm_migrated", "run_due", "retry_work", "dataplane")


def current_trace_context() -> str | None:
    """The current span's W3C trace context as JSON (``traceparent``/``tracestate``), or ``None`` outside a span."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return json.dumps(carrier, sort_keys=True) if carrier else None


class Tracing:
    """Turns eipflow's calls and events into spans on ``tracer_provider`` (default: the global one)."""

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self.tracer: Tracer = trace.get_tracer("eipflow", tracer_provider=tracer_provider)
        self._installed = False

    def install(self) -> Tracing:
        """Start turning this process's transition and backend events into spans, and storing the current
        trace context on the work items this process creates."""
        if not self._installed:
            _logging.add_listener(self._observe)
            statements.trace_carrier = current_trace_context
            self._installed = True
        return self

    def uninstall(self) -> None:
        _logging.remove_listener(self._observe)
        if statements.trace_carrier is current_trace_context:
            statements.trace_carrier = None
        self._installed = False

    def wrap(self, flow: Eipflow) -> Eipflow:
        """Trace ``flow``'s public calls (patched on this instance only); returns ``flow``."""
        for name in PUBLIC_CALLS:
            setattr(flow, name, self._traced(name, getattr(flow, name)))
        return flow

    def _traced(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            attributes: dict[str, Any] = {"workflow.operation.name": name}
            if args and isinstance(args[0], str):
                attributes["eipflow.eip.uuid" if name not in ("vm_stopped", "vm_started", "vm_migrated")
                           else "eipflow.vm.uuid"] = args[0]
            if kwargs.get("op_id"):
                attributes["eipflow.op_id"] = kwargs["op_id"]
            with self.tracer.start_as_current_span(f"eipflow.{name}", attributes=attributes):
                return fn(*args, **kwargs)

        return call

    def _observe(self, _logger: str, _level: str, event: str, f: dict[str, Any]) -> None:
        if event == "transition.applied":
            self._span("eipflow.transition", f, {
                "eipflow.eip.uuid": f.get("eip_uuid"), "eipflow.event": f.get("trigger"),
                "eipflow.state.from": f.get("state_from"), "eipflow.state.to": f.get("state_to"),
                "eipflow.version": f.get("version"), "eipflow.actor": f.get("actor"),
            })
        elif event.startswith("backend.") and event.endswith(("_ok", "_failed")):
            action = event.removeprefix("backend.").rsplit("_", 1)[0]
            failed = event.endswith("_failed")
            self._span(f"eipflow.backend.{action}", f, {
                "eipflow.eip.uuid": f.get("eip_uuid"), "eipflow.host.uuid": f.get("host_uuid"),
                "eipflow.action": action, "eipflow.outcome_unknown": bool(f.get("outcome_unknown")),
            }, error=str(f.get("error")) if failed else None)

    def _span(self, name: str, f: dict[str, Any], attributes: dict[str, Any], error: str | None = None) -> None:
        end = time.time_ns()
        start = end - int(float(f.get("duration_ms") or 0) * 1_000_000)
        span = self.tracer.start_span(name, start_time=start,
                                      attributes={k: v for k, v in attributes.items() if v is not None})
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=end)


class TracedWorker(Worker):
    """A :class:`~eipflow.Worker` that runs each claimed item inside an ``eipflow.work`` span, or each batch of
    several inside an ``eipflow.work_batch`` span linked to its items' traces (idle polls make none)."""

    def __init__(self, flow: Eipflow, tracing: Tracing, **kwargs: Any) -> None:
        super().__init__(flow, **kwargs)
        self.tracing = tracing

    @contextmanager
    def running(self, items: list[WorkItem]) -> Iterator[None]:
        """One ``eipflow.work`` span per item run alone (continuing the trace of the caller that created it);
        one ``eipflow.work_batch`` span per batch, linked to each item's trace."""
        contexts = [propagate.extract(json.loads(i.trace_context)) if i.trace_context else None for i in items]
        if len(items) == 1:
            (item,) = items
            span = self.tracing.tracer.start_span("eipflow.work", context=contexts[0], attributes={
                "eipflow.work.id": item.id, "eipflow.eip.uuid": item.eip_uuid, "eipflow.action": item.action,
                "eipflow.work.attempt": item.attempts, "eipflow.work.cleanup": item.cleanup,
            })
        else:
            links = [trace.Link(trace.get_current_span(c).get_span_context()) for c in contexts if c is not None]
            span = self.tracing.tracer.start_span("eipflow.work_batch", links=links, attributes={
                "eipflow.work.count": len(items), "eipflow.work.ids": [i.id for i in items],
            })
        token = context.attach(trace.set_span_in_context(span))
        try:
            yield
        finally:
            context.detach(token)
            span.end()

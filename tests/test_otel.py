"""OpenTelemetry traces, exported with the SDK's in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from eipflow import AttachFailed, Eipflow, InMemoryDataplane
from eipflow.otel import TracedWorker, Tracing


@pytest.fixture
def exported() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider).install()
    try:
        yield tracing, exporter
    finally:
        tracing.uninstall()
        provider.shutdown()


def _children(spans: tuple[ReadableSpan, ...], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def test_an_inline_attach_is_one_trace(db_url: str, exported: tuple[Tracing, InMemorySpanExporter]) -> None:
    """attach → one trace: the public call's span holds its three transitions and the backend call."""
    tracing, exporter = exported
    with Eipflow.open(db_url, InMemoryDataplane()) as flow:
        tracing.wrap(flow)
        eip = flow.create_eip("203.0.113.10")
        exporter.clear()
        flow.attach(eip.uuid, nic="nic-1", guest_ip="10.0.0.5", vm="vm-1", host="h1", op_id="op-1")
    spans = exporter.get_finished_spans()
    [root] = [s for s in spans if s.name == "eipflow.attach"]
    assert root.parent is None and root.attributes is not None
    assert (root.attributes["eipflow.eip.uuid"], root.attributes["eipflow.op_id"]) == (eip.uuid, "op-1")
    assert root.context is not None and {s.context.trace_id for s in spans if s.context} == {root.context.trace_id}
    children = _children(spans, root)
    transitions = [(s.attributes or {}).get("eipflow.event") for s in children if s.name == "eipflow.transition"]
    assert transitions == ["attach", "proceed", "apply_ok"]
    [call] = [s for s in children if s.name == "eipflow.backend.apply"]
    assert call.attributes is not None and call.attributes["eipflow.host.uuid"] == "h1"
    assert call.start_time is not None and call.end_time is not None and call.start_time <= call.end_time
    last = next(s for s in children if (s.attributes or {}).get("eipflow.event") == "apply_ok")
    assert (last.attributes or {})["eipflow.state.to"] == "attached"


def test_a_failed_backend_call_is_an_error_span(
    sqlite_url: str, exported: tuple[Tracing, InMemorySpanExporter]
) -> None:
    """A failing apply: its span has status ERROR with the message; the rollback follows in the same trace."""
    tracing, exporter = exported
    backend = InMemoryDataplane()
    with Eipflow.open(sqlite_url, backend) as flow:
        tracing.wrap(flow)
        eip = flow.create_eip("203.0.113.10")
        backend.faults.fail("apply")
        with pytest.raises(AttachFailed):
            flow.attach(eip.uuid, nic="nic-1", guest_ip="10.0.0.5", vm="vm-1", host="h1")
    spans = exporter.get_finished_spans()
    [call] = [s for s in spans if s.name == "eipflow.backend.apply"]
    assert call.status.status_code is StatusCode.ERROR and "simulated apply failure" in (call.status.description or "")
    [root] = [s for s in spans if s.name == "eipflow.attach"]
    events = [(s.attributes or {}).get("eipflow.event") for s in _children(spans, root)
              if s.name == "eipflow.transition"]
    assert events[-2:] == ["apply_failed", "revoke_ok"]


def test_each_claimed_work_item_is_a_span(sqlite_url: str, exported: tuple[Tracing, InMemorySpanExporter]) -> None:
    """A worker's item: an eipflow.work span with the item's attributes around its transitions and backend call;
    idle polls make no span."""
    tracing, exporter = exported
    with Eipflow.open(sqlite_url, InMemoryDataplane()) as flow:
        eip = flow.create_eip("203.0.113.10")
        flow.attach(eip.uuid, nic="nic-1", guest_ip="10.0.0.5", vm="vm-1", host="h1", wait=False)
        exporter.clear()
        worker = TracedWorker(flow, tracing, heartbeat_interval=None)
        assert worker.run_once() == 1
        assert worker.run_once() == 0
    spans = exporter.get_finished_spans()
    [work] = [s for s in spans if s.name == "eipflow.work"]
    assert work.attributes is not None
    assert (work.attributes["eipflow.eip.uuid"], work.attributes["eipflow.action"]) == (eip.uuid, "apply")
    names = sorted(s.name for s in _children(spans, work))
    assert names == ["eipflow.backend.apply", "eipflow.transition", "eipflow.transition"]

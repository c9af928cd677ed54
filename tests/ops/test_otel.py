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


def test_a_batch_of_items_is_one_span_linked_to_their_traces(
    sqlite_url: str, exported: tuple[Tracing, InMemorySpanExporter]
) -> None:
    """A worker's batch: one eipflow.work_batch span, linked to the trace of each call that created an item,
    around the batch's transitions and its one backend call."""
    tracing, exporter = exported
    with Eipflow.open(sqlite_url, InMemoryDataplane()) as flow:
        traced = tracing.wrap(flow)
        for n in range(3):
            eip = flow.create_eip(f"203.0.113.{n + 10}")
            traced.attach(eip.uuid, nic=f"nic-{n}", guest_ip=f"10.0.0.{n + 5}", vm=f"vm-{n}", host="h1", wait=False)
        callers = {s.context.trace_id for s in exporter.get_finished_spans() if s.name == "eipflow.attach"}
        exporter.clear()
        assert TracedWorker(flow, tracing, heartbeat_interval=None).run_once() == 3
    spans = exporter.get_finished_spans()
    [batch] = [s for s in spans if s.name == "eipflow.work_batch"]
    assert batch.attributes is not None and batch.attributes["eipflow.work.count"] == 3
    assert {link.context.trace_id for link in batch.links} == callers and len(callers) == 3
    names = [s.name for s in _children(spans, batch)]
    assert names.count("eipflow.backend.apply") == 3 and names.count("eipflow.transition") == 6
    assert not [s for s in spans if s.name == "eipflow.work"]


_WORKER_SCRIPT = """
import json, sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from eipflow import Eipflow, InMemoryDataplane
from eipflow.otel import TracedWorker, Tracing

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
tracing = Tracing(provider).install()
with Eipflow.open(sys.argv[1], InMemoryDataplane()) as flow:
    ran = TracedWorker(flow, tracing, heartbeat_interval=None).run_once()
spans = [{"name": s.name, "trace": s.context.trace_id, "span": s.context.span_id,
          "parent": s.parent.span_id if s.parent else None} for s in exporter.get_finished_spans()]
print(json.dumps({"ran": ran, "spans": spans}))
"""


def test_a_worker_in_another_process_continues_the_callers_trace(
    sqlite_url: str, exported: tuple[Tracing, InMemorySpanExporter]
) -> None:
    """The caller's trace context is stored on the work item it creates; a worker in another process starts the
    item's span as its child, so one attach is one connected trace across two processes."""
    import json
    import subprocess
    import sys

    tracing, _exporter = exported
    with Eipflow.open(sqlite_url, InMemoryDataplane()) as flow:
        eip = flow.create_eip("203.0.113.10")
        with tracing.tracer.start_as_current_span("caller.request") as root:
            flow.attach(eip.uuid, nic="nic-1", guest_ip="10.0.0.5", vm="vm-1", host="h1", wait=False)
        [item] = flow.work_items(eip_uuid=eip.uuid)
        assert item.trace_context is not None and "traceparent" in item.trace_context
    done = subprocess.run([sys.executable, "-c", _WORKER_SCRIPT, sqlite_url], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["ran"] == 1
    spans = out["spans"]
    [work] = [s for s in spans if s["name"] == "eipflow.work"]
    root_ctx = root.get_span_context()
    assert (work["trace"], work["parent"]) == (root_ctx.trace_id, root_ctx.span_id)
    assert {s["trace"] for s in spans} == {root_ctx.trace_id}  # transitions and the backend call too
    assert sorted(s["name"] for s in spans if s["parent"] == work["span"]) == [
        "eipflow.backend.apply", "eipflow.transition", "eipflow.transition"]


def test_outside_a_span_or_without_tracing_no_context_is_stored(
    sqlite_url: str, exported: tuple[Tracing, InMemorySpanExporter]
) -> None:
    tracing, _ = exported
    with Eipflow.open(sqlite_url, InMemoryDataplane()) as flow:
        first = flow.create_eip("203.0.113.10")
        flow.attach(first.uuid, nic="nic-1", guest_ip="10.0.0.5", vm="vm-1", host="h1", wait=False)
        tracing.uninstall()
        second = flow.create_eip("203.0.113.11")
        with tracing.tracer.start_as_current_span("untraced"):
            flow.attach(second.uuid, nic="nic-2", guest_ip="10.0.0.6", vm="vm-2", host="h1", wait=False)
        assert [w.trace_context for w in flow.work_items()] == [None, None]

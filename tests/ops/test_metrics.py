"""Prometheus metrics: a live worker and a live agent are scraped after a known sequence of operations."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from eipflow import Eipflow, InMemoryDataplane, RetryPolicy
from eipflow._logging import get_logger
from eipflow.agent.app import create_app
from eipflow.cli import main
from eipflow.metrics import (
    DatabaseProbe,
    InstrumentedWorker,
    Metrics,
    MetricsServer,
    QueueStateCollector,
    parse_address,
)
from eipflow.store import create_db_engine

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(got: Samples, name: str, **labels: str) -> float:
    return got.get((name, frozenset(labels.items())), 0.0)


def scrape(base: str, path: str = "/metrics") -> Samples:
    response = httpx.get(base + path, timeout=30)
    assert response.status_code == 200, response.text
    return samples(response.text)


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics().install()
    try:
        yield m
    finally:
        m.uninstall()


def test_live_worker_metrics_after_known_operations(db_url: str, metrics: Metrics) -> None:
    """3 attaches queued, a worker drains them, a revoke fails twice and is parked: every counter and gauge says so."""
    backend = InMemoryDataplane()
    retry = RetryPolicy(max_attempts=2, base_delay_s=0, jitter=0)  # the retry is due at once: run_once takes it
    with Eipflow.open(db_url, backend, owner="api", retry=retry) as flow:
        metrics.registry.register(QueueStateCollector(flow.store.engine, ttl=0, clock=flow.store.clock))
        probe = DatabaseProbe(flow.store.engine)
        worker = InstrumentedWorker(flow, metrics, heartbeat_interval=None, owner="w1")
        server = MetricsServer(metrics, ("127.0.0.1", 0), ready=probe).start()
        base = f"http://127.0.0.1:{server.port}"
        try:
            eips = [flow.create_eip(f"203.0.113.{10 + n}") for n in range(3)]
            for n, eip in enumerate(eips):
                flow.attach(eip.uuid, nic=f"nic-{n}", guest_ip=f"10.0.0.{n + 1}", vm=f"vm-{n}", host="h1", wait=False)
            got = scrape(base)
            assert value(got, "eipflow_workqueue_depth", action="apply") == 3
            assert value(got, "eipflow_eips", state="binding") == 3
            assert value(got, "eipflow_workqueue_adds_total", action="apply") == 3
            assert value(got, "eipflow_database_up") == 1

            assert worker.run_once() == 3
            got = scrape(base)
            assert value(got, "eipflow_workqueue_depth", action="apply") == 0
            assert value(got, "eipflow_eips", state="attached") == 3
            assert value(got, "eipflow_eips", state="binding") == 0
            for event, source, target in (("attach", "detached", "binding"), ("proceed", "binding", "applying"),
                                          ("apply_ok", "applying", "attached")):
                assert value(got, "eipflow_transitions_total", event=event, from_state=source, to_state=target) == 3
            assert value(got, "eipflow_backend_calls_total", action="apply", result="ok") == 3
            assert value(got, "eipflow_backend_call_duration_seconds_count", action="apply", result="ok") == 3
            assert value(got, "eipflow_workqueue_queue_duration_seconds_count", action="apply") == 3
            assert value(got, "eipflow_workqueue_work_duration_seconds_count", action="apply") == 3
            assert value(got, "eipflow_workqueue_unfinished_work_seconds") == 0
            assert value(got, "eipflow_workqueue_longest_running_processor_seconds") == 0
            assert value(got, "eipflow_workqueue_retries_total", action="apply") == 0

            flow.vm_stopped("vm-0", wait=False)
            backend.faults.fail("revoke", times=2)
            assert worker.run_once() == 2  # the attempt, then its retry; then parked
            got = scrape(base)
            assert value(got, "eipflow_workqueue_parked", action="revoke") == 1
            assert value(got, "eipflow_eips", state="releasing") == 1
            assert value(got, "eipflow_backend_calls_total", action="revoke", result="error") == 2
            assert value(got, "eipflow_transitions_total", event="revoke_failed", from_state="releasing",
                         to_state="releasing") == 2
            assert value(got, "eipflow_workqueue_adds_total", action="revoke") == 1
            assert value(got, "eipflow_workqueue_retries_total", action="revoke") == 1

            # Re-queued by an operator (a fresh budget, so not counted as a retry), and it goes through.
            flow.retry_work(flow.get_eip(eips[0].uuid).work_id or 0)
            assert worker.run_once() == 1
            got = scrape(base)
            assert value(got, "eipflow_workqueue_retries_total", action="revoke") == 1
            assert value(got, "eipflow_backend_calls_total", action="revoke", result="ok") == 1
            assert value(got, "eipflow_eips", state="released") == 1
            assert value(got, "eipflow_workqueue_parked", action="revoke") == 0
            assert httpx.get(base + "/readyz").json() == {"status": "ok"}
            assert httpx.get(base + "/livez").status_code == 200
        finally:
            server.stop()
            probe.close()


def test_stuck_work_shows_in_unfinished_and_longest_running(sqlite_url: str, metrics: Metrics) -> None:
    """While a backend call hangs, the worker's in-progress gauges grow (what the stuck-work alert watches)."""
    backend = InMemoryDataplane()
    with Eipflow.open(sqlite_url, backend) as flow:
        eip = flow.create_eip("203.0.113.50")
        flow.attach(eip.uuid, nic="n", guest_ip="10.0.0.50", vm="vm", host="h1", wait=False)
        worker = InstrumentedWorker(flow, metrics, heartbeat_interval=None)
        gate = backend.faults.block("apply", eip_uuid=eip.uuid)
        runner = threading.Thread(target=worker.run_one)
        runner.start()
        try:
            gate.wait_entered()
            got = samples(metrics.text().decode())
            assert value(got, "eipflow_workqueue_unfinished_work_seconds") > 0
            assert value(got, "eipflow_workqueue_longest_running_processor_seconds") > 0
        finally:
            gate.release()
            runner.join(timeout=60)
        got = samples(metrics.text().decode())
        assert value(got, "eipflow_workqueue_unfinished_work_seconds") == 0


def test_readiness_fails_when_the_database_is_unreachable(tmp_path: Path) -> None:
    """/readyz and /healthz answer 503 naming the database while it cannot be reached; /livez stays 200."""
    home = tmp_path / "db"
    home.mkdir()
    url = f"sqlite:///{home / 'eipflow.db'}"
    assert main(["--db", url, "db", "upgrade"]) == 0
    engine = create_db_engine(url)
    probe = DatabaseProbe(engine)
    server = MetricsServer(Metrics(), ("127.0.0.1", 0), ready=probe).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert httpx.get(base + "/readyz").status_code == 200
        home.rename(tmp_path / "moved")
        for path in ("/readyz", "/healthz"):
            answer = httpx.get(base + path)
            assert answer.status_code == 503
            assert answer.json()["status"] == "unavailable" and "eipflow.db" in answer.json()["error"]
        assert httpx.get(base + "/livez").status_code == 200
        (tmp_path / "moved").rename(home)
        assert httpx.get(base + "/healthz").status_code == 200
        unreachable = DatabaseProbe(create_db_engine("postgresql+psycopg://eipflow:secret@127.0.0.1:1/none"))
        problem = unreachable()
        assert problem is not None and "127.0.0.1:1" in problem and "secret" not in problem
        unreachable.close()
    finally:
        server.stop()
        probe.close()
        engine.dispose()


def test_metrics_address_is_checked() -> None:
    """HOST:PORT, with the port required; an empty host listens everywhere."""
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address(":9464") == ("0.0.0.0", 9464)
    assert parse_address("[::1]:0") == ("::1", 0)
    for bad in ("9464", "host:", "host:99999", "host:port"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(bad)


def _read_lines(stream: Any, into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


@pytest.mark.slow
def test_eipflow_worker_serves_metrics_and_health(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`eipflow worker --metrics-address` (a real process): the database's state on /metrics, readiness, SIGTERM."""
    home = tmp_path / "db"
    home.mkdir()
    url = f"sqlite:///{home / 'eipflow.db'}"

    def cli(*args: str) -> Any:
        code = main(["--db", url, "--json", *args])
        out = capsys.readouterr().out
        assert code == 0, out
        return json.loads(out)

    kept = cli("eip", "create", "--vip", "203.0.113.60")["uuid"]
    cli("attach", kept, "--nic", "n0", "--guest-ip", "10.0.2.1", "--vm", "vm0", "--host", "h1")
    stuck = cli("eip", "create", "--vip", "203.0.113.61")["uuid"]
    cli("attach", stuck, "--nic", "n1", "--guest-ip", "10.0.2.2", "--vm", "vm1", "--host", "h1")
    cli("vm", "stop", "vm1")
    monkeypatch.setenv("EIPFLOW_SIM_FAIL", "apply")
    cli("--retry-attempts", "1", "vm", "start", "vm1", "--host", "h2")  # parked after one failed attempt
    monkeypatch.delenv("EIPFLOW_SIM_FAIL")

    proc = subprocess.Popen([sys.executable, "-m", "eipflow", "--db", url, "-v", "--log-format", "json", "worker",
                             "--metrics-address", "127.0.0.1:0", "--poll-interval", "3600", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(proc.stderr, lines), daemon=True)
    reader.start()
    try:
        while True:
            event = json.loads(lines.get(timeout=60))
            if event["event"] == "metrics.listening":
                break
        base = f"http://127.0.0.1:{event['port']}"
        got = scrape(base)
        assert value(got, "eipflow_eips", state="attached") == 1
        assert value(got, "eipflow_eips", state="applying") == 1
        assert value(got, "eipflow_workqueue_parked", action="apply") == 1
        assert value(got, "eipflow_workqueue_depth", action="apply") == 0
        assert value(got, "eipflow_database_up") == 1
        assert ("process_cpu_seconds_total", frozenset()) in got
        assert httpx.get(base + "/readyz").status_code == 200
        home.rename(tmp_path / "moved")
        try:
            assert httpx.get(base + "/readyz").status_code == 503
        finally:
            (tmp_path / "moved").rename(home)
        assert httpx.get(base + "/readyz").status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
    assert proc.returncode == 0
    assert json.loads(out)["remaining"] == 0


# -- the agent -----------------------------------------------------------------------------------

TOKEN = "s3cret-token-0123456789"
HOST = "host-1"


def _spec(**over: object) -> dict[str, object]:
    import uuid

    data: dict[str, object] = {"eip_uuid": str(uuid.uuid4()), "vip": "203.0.113.100", "vm_nic_uuid": "nic-1",
                               "guest_ip": "192.0.2.10", "host_uuid": HOST, "generation": 1}
    data.update(over)
    return data


@pytest.fixture
def agent() -> Iterator[tuple[httpx.Client, Metrics]]:
    """A real uvicorn serving the agent app on a Unix socket, with its own metrics."""
    where = tempfile.mkdtemp(prefix="eipm-", dir="/tmp")
    socket_path = f"{where}/agent.sock"
    metrics = Metrics()
    app = create_app(InMemoryDataplane(), host_uuid=HOST, token=TOKEN, metrics=metrics)
    server = uvicorn.Server(uvicorn.Config(app, uds=socket_path, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, name="agent-under-test")
    thread.start()
    try:
        transport = httpx.HTTPTransport(uds=socket_path)
        with httpx.Client(base_url="http://agent", transport=transport,
                          headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            deadline = time.monotonic() + 10
            while not server.started and thread.is_alive() and time.monotonic() < deadline:
                time.sleep(0.02)  # bounded wait for the server to come up (not a race wait)
            assert server.started, "agent did not start"
            yield c, metrics
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        shutil.rmtree(where, ignore_errors=True)


def test_live_agent_metrics(agent: tuple[httpx.Client, Metrics]) -> None:
    """Requests by endpoint and status, auth failures and latency after a known sequence; /metrics needs no token."""
    client, _ = agent
    first, second = _spec(), _spec(guest_ip="192.0.2.11")
    assert client.post("/v1/apply", json=first).status_code == 200
    assert client.post("/v1/apply", json=second).status_code == 200
    assert client.post("/v1/revoke", json=first).status_code == 200
    assert client.get("/v1/rules").status_code == 200
    assert client.post("/v1/apply", json=first, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/v1/apply", json={"nope": 1}).status_code == 422
    assert client.post("/v1/apply", json=_spec(host_uuid="host-2")).status_code == 421
    assert client.post("/v1/apply", json={**first, "generation": 0}).status_code == 409  # older than its revoke
    page = client.get("/metrics", headers={"Authorization": ""})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    got = samples(page.text)
    assert value(got, "eipflow_agent_requests_total", endpoint="apply", status="200") == 2
    assert value(got, "eipflow_agent_requests_total", endpoint="revoke", status="200") == 1
    assert value(got, "eipflow_agent_requests_total", endpoint="rules", status="200") == 1
    assert value(got, "eipflow_agent_requests_total", endpoint="apply", status="401") == 1
    assert value(got, "eipflow_agent_requests_total", endpoint="apply", status="422") == 1
    assert value(got, "eipflow_agent_requests_total", endpoint="apply", status="421") == 1
    assert value(got, "eipflow_agent_requests_total", endpoint="apply", status="409") == 1
    assert value(got, "eipflow_agent_auth_failures_total") == 1
    assert value(got, "eipflow_agent_request_duration_seconds_count", endpoint="apply") == 2


def test_nft_transactions_and_reconcile_runs_are_observed(metrics: Metrics) -> None:
    """The nftables backend's and the reconciler's events land in their histograms and counters."""
    get_logger("eipflow.backends.nftables").info("nft.applied", eip_uuid="e", duration_ms=12.5)
    get_logger("eipflow.backends.nftables").info("nft.revoked", eip_uuid="e", duration_ms=2.0)
    get_logger("eipflow.reconcile").info("reconcile.planned", repairs=2, dry_run=False)
    get_logger("eipflow.reconcile").info("reconcile.planned", repairs=0, dry_run=False)
    get_logger("eipflow.reconcile").info("reconcile.repair", kind="stray", outcome="done")
    get_logger("eipflow.reconcile").info("reconcile.repair", kind="drift", outcome="skipped: the row moved")
    got = samples(metrics.text().decode())
    assert value(got, "eipflow_agent_nft_transaction_duration_seconds_count", action="apply") == 1
    assert value(got, "eipflow_agent_nft_transaction_duration_seconds_sum", action="apply") == 0.0125
    assert value(got, "eipflow_agent_nft_transaction_duration_seconds_count", action="revoke") == 1
    assert value(got, "eipflow_reconcile_runs_total", result="repaired") == 1
    assert value(got, "eipflow_reconcile_runs_total", result="clean") == 1
    assert value(got, "eipflow_drift_repairs_total", kind="stray", outcome="done") == 1
    assert value(got, "eipflow_drift_repairs_total", kind="drift", outcome="skipped") == 1


def test_worker_without_the_extra_says_what_to_install(capsys: pytest.CaptureFixture[str], sqlite_url: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Without prometheus_client, --metrics-address fails naming the extra (exit 1)."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "eipflow.metrics", raising=False)
    assert main(["--db", sqlite_url, "worker", "--once", "--metrics-address", "127.0.0.1:0"]) == 1
    assert "eipflow[metrics]" in capsys.readouterr().err
    assert os.environ.get("EIPFLOW_METRICS_ADDRESS") is None

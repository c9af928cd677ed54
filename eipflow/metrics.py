"""Prometheus metrics for workers and agents (``pip install 'eipflow[metrics]'``).

Named after client-go's work queue and controller-runtime's reconciler metrics, so dashboards and alerts
for Kubernetes controllers carry over (``docs/operations.md`` lists every metric). Three sources, none of
which needs a line in the engine:

- **the engine's log points**: :class:`Metrics` listens to the structured events the runner, store,
  reconciler, agent and nftables backend already emit (``transition.applied``, ``backend.apply_ok``, …;
  see :func:`eipflow._logging.add_listener`), at every level, whatever logging is configured;
- **the worker loop**: :class:`InstrumentedWorker` times each claimed item (due → claimed, claimed →
  done) and keeps the items in progress for the unfinished/longest-running gauges;
- **the database, at scrape time**: :class:`QueueStateCollector` counts due, running and parked items
  and EIPs by state with three grouped queries, cached for a few seconds so frequent scrapes never load
  the database.

:class:`MetricsServer` serves ``/metrics`` plus the worker's probes: ``/livez`` (the process answers),
``/readyz`` and ``/healthz`` (the database answers, checked on a fresh connection each time).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, GCCollector, Histogram, PlatformCollector, ProcessCollector
from prometheus_client import make_wsgi_app as _prometheus_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine

from . import _logging
from .api import Eipflow
from .clock import Clock, SystemClock
from .machine import CONTINUES, EFFECTS
from .store.database import create_db_engine, redacted
from .store.store import EIP, WORK
from .values import WorkItem
from .worker import Worker

__all__ = ["DatabaseProbe", "InstrumentedWorker", "Metrics", "MetricsServer", "QueueStateCollector", "parse_address"]

log = _logging.get_logger(__name__)

#: backend latency: a no-op backend answers in µs, an agent over HTTP in ms, a stuck host in seconds
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: due -> claimed: backoffs and backlogs go up to minutes
_QUEUE_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


class Metrics:
    """One registry with eipflow's counters and histograms, fed by the engine's structured events.

    Args:
        registry: where to register (default: a new one with the process, platform and GC collectors,
            as ``prometheus_client``'s default registry has).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.registry = registry
        r = registry
        self.transitions = Counter("eipflow_transitions_total", "State transitions written, by event and states.",
                                   ["event", "from_state", "to_state"], registry=r)
        self.conflicts = Counter("eipflow_transition_conflicts_total",
                                 "Lost compare-and-swaps (another writer moved the row first; reloaded and decided "
                                 "again).", registry=r)
        self.backend_calls = Counter("eipflow_backend_calls_total", "Backend apply/revoke calls by result "
                                     "(ok, error, timeout = outcome unknown).", ["action", "result"], registry=r)
        self.backend_duration = Histogram("eipflow_backend_call_duration_seconds", "Backend call latency.",
                                          ["action", "result"], buckets=_LATENCY_BUCKETS, registry=r)
        self.stale_refusals = Counter("eipflow_stale_generation_refusals_total",
                                      "Backend calls a host refused as older than what it has seen (fencing).",
                                      ["action"], registry=r)
        self.drift_repairs = Counter("eipflow_drift_repairs_total", "Reconciler repairs by kind and outcome.",
                                     ["kind", "outcome"], registry=r)
        self.reconcile_runs = Counter("eipflow_reconcile_runs_total",
                                      "Reconciler runs by result (clean, repaired, dry_run).", ["result"], registry=r)
        self.db_retries = Counter("eipflow_db_transient_retries_total",
                                  "Transactions re-run after a deadlock or serialization failure.", registry=r)
        self.adds = Counter("eipflow_workqueue_adds_total", "Work items this process enqueued.", ["action"],
                            registry=r)
        self.queue_duration = Histogram("eipflow_workqueue_queue_duration_seconds",
                                        "How long an item was due before a worker claimed it.", ["action"],
                                        buckets=_QUEUE_BUCKETS, registry=r)
        self.work_duration = Histogram("eipflow_workqueue_work_duration_seconds",
                                       "How long a worker took to run a claimed item (backend call and completion).",
                                       ["action"], buckets=_LATENCY_BUCKETS, registry=r)
        self.retries = Counter("eipflow_workqueue_retries_total",
                               "Claims of an item that had been tried before (a backoff retry or an expired lease).",
                               ["action"], registry=r)
        self.agent_requests = Counter("eipflow_agent_requests_total", "Agent API requests by endpoint and status.",
                                      ["endpoint", "status"], registry=r)
        self.agent_auth_failures = Counter("eipflow_agent_auth_failures_total",
                                           "Agent requests refused for a missing or wrong bearer token.", registry=r)
        self.agent_duration = Histogram("eipflow_agent_request_duration_seconds",
                                        "Agent requests answered 2xx, by endpoint.", ["endpoint"],
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.nft_duration = Histogram("eipflow_agent_nft_transaction_duration_seconds",
                                      "One nft transaction (apply or revoke of one EIP's rules).", ["action"],
                                      buckets=_LATENCY_BUCKETS, registry=r)
        self._installed = False

    # -- the engine's log points -----------------------------------------------------------------
    def install(self) -> Metrics:
        """Start observing this process's eipflow events."""
        if not self._installed:
            _logging.add_listener(self.observe)
            self._installed = True
        return self

    def uninstall(self) -> None:
        _logging.remove_listener(self.observe)
        self._installed = False

    def observe(self, _logger: str, _level: str, event: str, f: dict[str, Any]) -> None:
        """Count one structured event (the listener :meth:`install` registers)."""
        handler = _HANDLERS.get(event)
        if handler is not None:
            handler(self, f)
        elif event.startswith("backend.") and event.endswith(("_ok", "_failed", "_refused")):
            self._backend(event, f)

    def _transition(self, f: dict[str, Any]) -> None:
        source, target = f.get("state_from"), f.get("state_to")
        self.transitions.labels(f.get("trigger"), source, target).inc()
        effects = EFFECTS.get(target or "")
        action = effects.work if effects is not None else None
        if action and source != target and (source, target) not in CONTINUES:  # the one rule: machine.EFFECTS
            self.adds.labels(action).inc()

    def _backend(self, event: str, f: dict[str, Any]) -> None:
        action = f.get("action") or event.removeprefix("backend.").split("_")[0]
        if event.endswith("_ok"):
            result = "ok"
        elif event.endswith("_refused"):  # the host's generation check refused a stale call (fencing)
            result = "refused"
            self.stale_refusals.labels(action).inc()
        else:
            result = "timeout" if f.get("outcome_unknown") else "error"
            if f.get("stale_generation") or f.get("error_type") == "StaleGeneration":
                self.stale_refusals.labels(action).inc()
        self.backend_calls.labels(action, result).inc()
        if "duration_ms" in f:
            self.backend_duration.labels(action, result).observe(float(f["duration_ms"]) / 1000)

    def _reconcile_planned(self, f: dict[str, Any]) -> None:
        result = "dry_run" if f.get("dry_run") else "repaired" if f.get("repairs") else "clean"
        self.reconcile_runs.labels(result).inc()

    def _repair(self, f: dict[str, Any]) -> None:
        outcome = str(f.get("outcome", ""))
        outcome = "skipped" if outcome.startswith("skipped") else outcome.split(" ")[0]
        self.drift_repairs.labels(f.get("kind"), outcome).inc()

    def _agent(self, status: int, f: dict[str, Any]) -> None:
        endpoint = str(f.get("action", "unknown"))
        self.agent_requests.labels(endpoint, str(status)).inc()
        if status == 401:
            self.agent_auth_failures.inc()
        elif 200 <= status < 300 and "duration_ms" in f:
            self.agent_duration.labels(endpoint).observe(float(f["duration_ms"]) / 1000)

    def _nft(self, action: str, f: dict[str, Any]) -> None:
        if "duration_ms" in f:
            self.nft_duration.labels(action).observe(float(f["duration_ms"]) / 1000)

    # -- exposition --------------------------------------------------------------------------------
    def text(self) -> bytes:
        """The registry in Prometheus' text format."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


_HANDLERS: dict[str, Callable[[Metrics, dict[str, Any]], None]] = {
    "transition.applied": Metrics._transition,
    "transition.conflict": lambda m, f: m.conflicts.inc(),
    "work.orphan_revoke_enqueued": lambda m, f: m.adds.labels("revoke").inc(),
    "reconcile.planned": Metrics._reconcile_planned,
    "reconcile.repair": Metrics._repair,
    "reconcile.relinked": lambda m, f: m.drift_repairs.labels("relink", "done").inc(),
    "db.transient_retry": lambda m, f: m.db_retries.inc(),
    "agent.request": lambda m, f: m._agent(int(f.get("status", 200)), f),
    "agent.refused": lambda m, f: m._agent(int(f.get("status", 400)), f),
    "agent.stale_generation": lambda m, f: m._agent(409, f),
    "agent.unauthorized": lambda m, f: m._agent(401, f),
    "agent.backend_timeout": lambda m, f: m._agent(504, f),
    "agent.backend_failed": lambda m, f: m._agent(502, f),
    "nft.applied": lambda m, f: m._nft("apply", f),
    "nft.revoked": lambda m, f: m._nft("revoke", f),
}


class InstrumentedWorker(Worker):
    """A :class:`~eipflow.Worker` that times its items into :class:`Metrics` (what ``eipflow worker`` runs).

    Keeps the items it is running, for ``eipflow_workqueue_unfinished_work_seconds`` and
    ``eipflow_workqueue_longest_running_processor_seconds`` ("large values indicate stuck threads").
    """

    def __init__(self, flow: Eipflow, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(flow, **kwargs)
        self.metrics = metrics
        self._lock = threading.Lock()
        self._running: dict[int, tuple[str, float]] = {}
        metrics.registry.register(_InProgressCollector(self))

    def claim_batch(self, limit: int | None = None) -> list[WorkItem]:
        items = super().claim_batch(limit)
        for item in items:
            waited = (self.store.clock.now() - item.due_at).total_seconds()
            self.metrics.queue_duration.labels(item.action).observe(max(0.0, waited))
            if item.attempts > 1:
                self.metrics.retries.labels(item.action).inc()
            with self._lock:
                self._running[item.id] = (item.action, time.monotonic())
        return items

    def run_batch(self, limit: int | None = None) -> list[WorkItem]:
        try:
            return super().run_batch(limit)
        finally:
            with self._lock:
                finished, self._running = self._running, {}
            now = time.monotonic()
            for action, started in finished.values():
                self.metrics.work_duration.labels(action).observe(now - started)

    def in_progress(self) -> list[tuple[str, float]]:
        """``(action, seconds running)`` of each item this worker is running now."""
        now = time.monotonic()
        with self._lock:
            return [(action, now - started) for action, started in self._running.values()]


class _InProgressCollector(Collector):
    def __init__(self, worker: InstrumentedWorker) -> None:
        self.worker = worker

    def collect(self) -> Iterator[GaugeMetricFamily]:
        running = self.worker.in_progress()
        unfinished = GaugeMetricFamily("eipflow_workqueue_unfinished_work_seconds",
                                       "Seconds of work in progress not yet finished (large values indicate stuck "
                                       "threads).", value=sum(s for _, s in running))
        longest = GaugeMetricFamily("eipflow_workqueue_longest_running_processor_seconds",
                                    "How long the longest-running item of this worker has been running.",
                                    value=max((s for _, s in running), default=0.0))
        yield unfinished
        yield longest


class QueueStateCollector(Collector):
    """Queue and EIP gauges read from the database at scrape time (all workers' view), cached ``ttl`` seconds.

    ``eipflow_workqueue_depth{action}`` (due now: pending and due, or running with an expired lease),
    ``eipflow_workqueue_running{action}`` (live leases), ``eipflow_workqueue_parked{action}``,
    ``eipflow_eips{state}`` and ``eipflow_database_up`` (0 when the queries failed; the other gauges are
    then left out rather than reported stale).
    """

    def __init__(self, engine: Engine, *, ttl: float = 5.0, clock: Clock | None = None,
                 states: Iterable[str] | None = None) -> None:
        self.engine = engine
        self.ttl = ttl
        self.clock = clock or SystemClock()
        if states is None:
            from .machine import STATE_DESCRIPTIONS

            states = [s for s in STATE_DESCRIPTIONS if s != "deleted"]
        self.states = list(states)
        self._lock = threading.Lock()
        self._cached: tuple[float, list[GaugeMetricFamily]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] >= self.ttl:
                self._cached = (time.monotonic(), self._read())
            families = self._cached[1]
        yield from families

    def _read(self) -> list[GaugeMetricFamily]:
        up = GaugeMetricFamily("eipflow_database_up", "Whether the last scrape's queries reached the database.")
        now = self.clock.now()
        due = sa.or_(sa.and_(WORK.c.status == "pending", WORK.c.due_at <= now),
                     sa.and_(WORK.c.status == "running", WORK.c.lease_expires_at < now))
        live = sa.and_(WORK.c.status == "running", WORK.c.lease_expires_at >= now)
        kind = sa.case((due, "due"), (live, "running"), (WORK.c.status == "parked", "parked"), else_=None)
        try:
            with self.engine.connect().execution_options(eipflow_read=True) as conn:
                work = conn.execute(
                    sa.select(WORK.c.action, kind.label("kind"), sa.func.count())
                    .where(WORK.c.status.in_(["pending", "running", "parked"]))
                    .group_by(WORK.c.action, kind)
                ).all()
                eips: dict[str, int] = {
                    state: n for state, n in conn.execute(sa.select(EIP.c.state, sa.func.count()).group_by(EIP.c.state))
                }
        except Exception as exc:  # noqa: BLE001 - a scrape reports the database as down instead of failing
            log.warning("metrics.database_unreachable", error=str(exc))
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        families = {k: GaugeMetricFamily(f"eipflow_workqueue_{k}", text, labels=["action"]) for k, text in (
            ("depth", "Work items due now (pending and due, or running with an expired lease)."),
            ("running", "Work items leased by a live worker."),
            ("parked", "Work items that ran out of retries and wait for an operator (eipflow work retry)."),
        )}
        counts = {(a, k): n for a, k, n in work if k is not None}
        for key, family in families.items():
            for action in ("apply", "revoke"):
                family.add_metric([action], counts.get((action, "due" if key == "depth" else key), 0))
        by_state = GaugeMetricFamily("eipflow_eips", "EIPs by state.", labels=["state"])
        for state in sorted(set(self.states) | set(eips)):
            by_state.add_metric([state], eips.get(state, 0))
        return [up, *families.values(), by_state]


class DatabaseProbe:
    """Answers "can this process reach its database now?" on a fresh connection (no pool), with a short timeout."""

    def __init__(self, engine: Engine, *, timeout_s: int = 3) -> None:
        url = engine.url.render_as_string(hide_password=False)
        options: dict[str, Any] = {}
        if engine.dialect.name in ("postgresql", "mysql", "mariadb"):
            options.update(connect_args={"connect_timeout": timeout_s}, pool_size=1, max_overflow=0)
        self.engine = create_db_engine(url, **options)
        self._lock = threading.Lock()

    def __call__(self) -> str | None:
        """``None`` when the database answers (and holds eipflow's schema), else why not."""
        with self._lock:
            self.engine.dispose()  # a new connection every time: a pooled one may outlive the database's reach
            try:
                with self.engine.connect().execution_options(eipflow_read=True) as conn:
                    conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready"; the reason goes in the answer
                return f"database {redacted(self.engine.url)}: {str(exc).splitlines()[0]}"
            finally:
                self.engine.dispose()
        return None

    def close(self) -> None:
        self.engine.dispose()


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9000`` for IPv6; port 0 picks a free one)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        from .errors import InvalidInput

        raise InvalidInput(f"metrics address {text!r}: expected HOST:PORT, e.g. 0.0.0.0:9464")
    return host.strip("[]") or "0.0.0.0", int(port)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds the worker's shutdown


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics.request", line=format % args)


class MetricsServer:
    """``/metrics``, ``/livez``, ``/readyz`` and ``/healthz`` over HTTP in a background thread.

    Args:
        metrics: what ``/metrics`` exposes.
        address: ``(host, port)``; port 0 picks a free one (see :attr:`port`).
        ready: ``None`` when ready, else the reason (:class:`DatabaseProbe`); ``/readyz`` and
            ``/healthz`` answer 503 with it. Without one they always answer 200.
    """

    def __init__(self, metrics: Metrics, address: tuple[str, int],
                 ready: Callable[[], str | None] | None = None) -> None:
        self.metrics = metrics
        self.ready = ready
        self._exposition = _prometheus_app(metrics.registry)
        self._server = make_server(address[0], address[1], self._app, server_class=_Server,
                                   handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="eipflow-metrics")

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("metrics.listening", host=self.host, port=self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._exposition(environ, start_response)  # type: ignore[no-any-return]
        if path == "/livez":
            return _json(start_response, 200, {"status": "ok"})
        if path in ("/readyz", "/healthz"):
            problem = self.ready() if self.ready is not None else None
            if problem is not None:
                return _json(start_response, 503, {"status": "unavailable", "error": problem})
            return _json(start_response, 200, {"status": "ok"})
        return _json(start_response, 404, {"error": f"no such path {path}; try /metrics, /livez, /readyz"})


def _json(start_response: Any, status: int, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
    start_response(f"{status} {reason}", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]

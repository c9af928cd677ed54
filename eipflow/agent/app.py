"""The host agent as an ASGI app (Starlette): apply / revoke / list for one host's dataplane.

    GET  /healthz       liveness; no token, says only "ok"
    GET  /openapi.json  the OpenAPI description of this API; no token
    GET  /metrics       Prometheus metrics (requests, auth failures, nft latency); no token (eipflow[metrics])
    GET  /v1/rules      what is realized on this host      -> {"host_uuid": …, "rules": [spec, …]}
    POST /v1/apply      body: spec (see below)              -> {"ok": true, …}
    POST /v1/revoke     body: spec                          -> {"ok": true, …}
    POST /v1/batch      body: {"host_uuid"?, "changes": [{"action": "apply"|"revoke", "spec": spec}, …]}
                                                            -> {"host_uuid": …, "results": [result, …]}

A spec body is exactly ``{"eip_uuid", "vip", "vm_nic_uuid", "guest_ip", "host_uuid", "generation"}``,
each key once (``generation``: the fencing token, a non-negative integer; see :mod:`eipflow.backends.fencing`).
Every ``/v1`` call needs ``Authorization: Bearer <token>`` (compared in constant time) and is
checked before its body is read — or, with ``mtls=True``, a client certificate the TLS layer
verified. Answers: 401 bad/missing token, 403 an address this host will not program (outside its
VIP ranges, its own, its gateway's), 413 body too large, 422 invalid body, 421 spec for another
host, 409 stale generation (the host has seen a newer one: ``{"error", "reason", "eip_uuid",
"requested_generation", "current_generation"}``; nothing changed), 502 backend failed (``retryable``
in the body), 504 the backend's outcome is unknown.

A batch holds at most :data:`~eipflow.backends.batch.MAX_BATCH` changes, one per EIP, for this host
(413 beyond that, or a body over :data:`MAX_BATCH_BODY_BYTES`). It is checked whole before anything
runs: a malformed entry refuses the batch with 422 naming it (``index``, ``field``), a spec for another
host with 421, and nothing is applied. Then each change is judged on its own and the answer is 200 with
one result per change, in order: ``{"status": "done"|"refused"|"failed"|"failed_permanent"|"unknown",
"action", "eip_uuid"}`` plus, unless done, ``error`` and ``retryable``; a refused one carries the 409
body's ``reason``, ``requested_generation`` and ``current_generation``; one outside ``vip_ranges`` (or the
host's own address) ``field``, ``reason`` and ``address_not_allowed``; an unknown one ``outcome_unknown``.
The backend gets the whole batch in one call when it has ``apply_changes`` (nftables: one transaction).

Bad-token warnings are aggregated: at most one log line per :data:`WARN_EVERY_S` seconds, carrying
how many were suppressed since the last.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import validation as v
from .._logging import get_logger
from ..backends.batch import MAX_BATCH, STATUSES, Change, ChangeResult, result_of, run_changes
from ..errors import AddressNotAllowed, BackendError, BackendTimeout, InvalidInput, StaleGeneration
from ..values import EipSpec
from .openapi import openapi

__all__ = ["MAX_BATCH_BODY_BYTES", "MAX_BODY_BYTES", "WARN_EVERY_S", "AgentBackend", "create_app"]

log = get_logger(__name__)

MAX_BODY_BYTES = 4096  # a spec is ~300 bytes; anything much larger is not ours
#: a ``/v1/batch`` body: MAX_BATCH changes of at most ~600 bytes each, with room to spare
MAX_BATCH_BODY_BYTES = MAX_BATCH * 1024
WARN_EVERY_S = 60.0
_FIELDS = ("eip_uuid", "vip", "vm_nic_uuid", "guest_ip", "host_uuid", "generation")
_MAX_GENERATION = 2**63 - 1


class _Throttle:
    """One warning per window; the next one says how many were suppressed (a token-guessing flood is one line)."""

    def __init__(self, every: float, clock: Callable[[], float]) -> None:
        self.every = every
        self.clock = clock
        self._last: float | None = None
        self._suppressed = 0

    def admit(self) -> int | None:
        """``None``: stay quiet; else log now, reporting this many suppressed since the last line."""
        now = self.clock()
        if self._last is not None and now - self._last < self.every:
            self._suppressed += 1
            return None
        self._last, suppressed, self._suppressed = now, self._suppressed, 0
        return suppressed


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _Refused(422, f"duplicate key {key!r} in the body")
        seen[key] = value
    return seen


class AgentBackend(Protocol):
    """What the agent serves: a backend that can also list its rules."""

    def apply(self, spec: EipSpec) -> None: ...

    def revoke(self, spec: EipSpec) -> None: ...

    def rules(self, host_uuid: str | None = None) -> list[EipSpec]: ...


class _Refused(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        self.status = status
        self.message = message
        self.extra = extra
        super().__init__(message)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="eipflow-agent"'} if status == 401 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _hold(fifo: str) -> None:
    """Test hook: block until someone opens ``fifo`` for writing and closes it (a gate, no polling)."""
    with open(fifo, "rb") as gate:
        gate.read()


def create_app(
    backend: AgentBackend,
    *,
    host_uuid: str,
    token: str | None,
    mtls: bool = False,
    vip_ranges: Sequence[str] = (),
    hold_fifo: str | Path | None = None,
    clock: Callable[[], float] = time.monotonic,
    metrics: Any | None = None,
) -> Starlette:
    """Build the agent for ``host_uuid`` serving ``backend``.

    Args:
        backend: the host's dataplane (normally :class:`~eipflow.backends.nftables.NftablesBackend`).
        host_uuid: specs naming another host are refused (421), so a misrouted call changes nothing.
        token: the bearer token every ``/v1`` call must present; ``None`` only with ``mtls``.
        mtls: the server verifies client certificates (uvicorn ``ssl_cert_reqs=CERT_REQUIRED``), which
            then stand in for the token.
        vip_ranges: the networks an applied VIP must lie in (403 otherwise); empty: no restriction.
        hold_fifo: test hook: after each apply has committed, wait for a writer on this FIFO before
            answering (lets end-to-end tests stop or kill the agent "mid-apply" without sleeping).
        clock: monotonic seconds, for aggregating bad-token warnings (tests inject one).
        metrics: the :class:`~eipflow.metrics.Metrics` to count into and serve on ``/metrics`` (default:
            a new one when ``prometheus_client`` is installed; it observes while the app runs).
    """
    if token is None and not mtls:
        raise InvalidInput("the agent needs a token, or mtls=True with client certificates verified by TLS")
    if metrics is None:
        try:
            from ..metrics import Metrics
        except ImportError:
            metrics = None
        else:
            metrics = Metrics()
    expected = token.encode() if token is not None else None
    hold = str(hold_fifo) if hold_fifo is not None else None
    ranges = [ipaddress.ip_network(r) for r in vip_ranges]
    unauthorized = _Throttle(WARN_EVERY_S, clock)
    description = openapi(host_uuid)

    def authorized(request: Request) -> bool:
        if expected is None:
            return True  # mtls: the TLS handshake already refused clients without a valid certificate
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        # compare_digest on bytes: time does not depend on where the first wrong byte is
        return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), expected)

    async def read_json(request: Request, limit: int) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise _Refused(413, f"body larger than {limit} bytes", limit=limit)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _Refused(413, f"body larger than {limit} bytes", limit=limit)
        try:
            return json.loads(body, object_pairs_hook=_unique_keys)
        except _Refused:
            raise
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise _Refused(422, "body is not JSON") from None

    def parse_spec(data: object, *, creating: bool, where: str = "body") -> EipSpec:
        """A spec from its JSON (``where`` names it in errors: ``body``, ``changes[3].spec``)."""
        if not isinstance(data, dict):
            raise _Refused(422, f"{where} must be a JSON object")
        missing = [f for f in _FIELDS if f not in data]
        extra = sorted(set(data) - set(_FIELDS))
        if missing or extra:
            raise _Refused(422, f"{where} must have exactly the spec fields", missing=missing, unexpected=extra)
        generation = data["generation"]
        if type(generation) is not int or not 0 <= generation <= _MAX_GENERATION:
            raise _Refused(422, f"{_in(where)}generation must be a non-negative integer", field="generation")
        # Apply creates: the full address rules. Revoke removes: syntax only, so an old rule still goes.
        address = v.ip_address if creating else v.canonical_address
        try:
            spec = EipSpec(
                v.eip_uuid(data["eip_uuid"], "eip_uuid"),
                address("vip", data["vip"]),
                v.opaque_id("vm_nic_uuid", data["vm_nic_uuid"]),
                address("guest_ip", data["guest_ip"]),
                v.opaque_id("host_uuid", data["host_uuid"]),
                generation,
            )
            if creating:
                v.address_pair(spec.vip, spec.guest_ip)
        except InvalidInput as exc:
            raise _Refused(422, f"{_in(where)}{exc}", field=getattr(exc, "field", None)) from None
        if spec.host_uuid != host_uuid:
            raise _Refused(421, f"{_in(where)}this agent serves host {host_uuid}, not {spec.host_uuid}")
        return spec

    def check_range(spec: EipSpec) -> None:
        """An applied VIP must lie in this host's ``vip_ranges`` (when it has any)."""
        if ranges and not any(ipaddress.ip_address(spec.vip) in r for r in ranges):
            why = f"outside this host's vip_ranges ({', '.join(str(r) for r in ranges)})"
            raise AddressNotAllowed(host_uuid, "vip", spec.vip, why)

    async def read_spec(request: Request, *, creating: bool) -> EipSpec:
        spec = parse_spec(await read_json(request, MAX_BODY_BYTES), creating=creating)
        if creating:
            try:
                check_range(spec)
            except AddressNotAllowed as exc:
                raise _Refused(403, f"vip {spec.vip} is {exc.reason}", field="vip", reason=exc.reason,
                               retryable=False) from None
        return spec

    def parse_batch(data: object) -> list[Change]:
        """The changes of a ``/v1/batch`` body; any bad entry refuses the whole batch (nothing is applied)."""
        if not isinstance(data, dict):
            raise _Refused(422, "body must be a JSON object")
        extra = sorted(set(data) - {"host_uuid", "changes"})
        if "changes" not in data or extra:
            raise _Refused(422, "body must be {\"host_uuid\"?, \"changes\": [...]}",
                           missing=[] if "changes" in data else ["changes"], unexpected=extra)
        if "host_uuid" in data and data["host_uuid"] != host_uuid:
            raise _Refused(421, f"this agent serves host {host_uuid}, not {data['host_uuid']!r}")
        items = data["changes"]
        if not isinstance(items, list):
            raise _Refused(422, "changes must be a JSON array", field="changes")
        if len(items) > MAX_BATCH:
            raise _Refused(413, f"a batch has at most {MAX_BATCH} changes, not {len(items)}",
                           max_changes=MAX_BATCH, changes=len(items))
        changes: list[Change] = []
        first: dict[str, int] = {}
        for i, item in enumerate(items):
            where = f"changes[{i}]"
            if not isinstance(item, dict):
                raise _Refused(422, f"{where} must be a JSON object {{\"action\", \"spec\"}}", index=i)
            if set(item) != {"action", "spec"}:
                raise _Refused(422, f"{where} must have exactly the keys action and spec", index=i,
                               missing=sorted({"action", "spec"} - set(item)),
                               unexpected=sorted(set(item) - {"action", "spec"}))
            if item["action"] not in ("apply", "revoke"):
                raise _Refused(422, f"{where}.action must be \"apply\" or \"revoke\"", index=i, field="action")
            try:
                spec = parse_spec(item["spec"], creating=item["action"] == "apply", where=f"{where}.spec")
            except _Refused as exc:
                exc.extra = {"index": i, **exc.extra}
                raise
            if spec.eip_uuid in first:
                raise _Refused(422, f"{where}.spec.eip_uuid: EIP {spec.eip_uuid} is already changed by "
                                    f"changes[{first[spec.eip_uuid]}] (one change per EIP in a batch)",
                               index=i, field="eip_uuid")
            first[spec.eip_uuid] = i
            changes.append(Change(item["action"], spec))
        return changes

    def endpoint(
        action: str, fn: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            started = time.perf_counter()
            bound = log.bind(action=action, host_uuid=host_uuid, client=_peer(request))
            if not authorized(request):
                suppressed = unauthorized.admit()
                if suppressed is not None:
                    bound.warning("agent.unauthorized", status=401, suppressed=suppressed)
                return _error(401, "missing or invalid bearer token")
            try:
                response = await fn(request)
            except _Refused as exc:
                bound.warning("agent.refused", status=exc.status, reason=exc.message)
                return _error(exc.status, exc.message, **exc.extra)
            except StaleGeneration as exc:
                bound.warning("agent.stale_generation", status=409, eip_uuid=exc.eip_uuid, generation=exc.requested,
                              host_generation=exc.current, reason=exc.reason)
                return _error(409, str(exc), reason=exc.reason, eip_uuid=exc.eip_uuid,
                              requested_generation=exc.requested, current_generation=exc.current)
            except AddressNotAllowed as exc:
                bound.warning("agent.refused", status=403, reason=str(exc))
                return _error(403, str(exc), field=exc.field, reason=exc.reason, retryable=False)
            except BackendTimeout as exc:
                bound.error("agent.backend_timeout", error=str(exc))
                return _error(504, str(exc), retryable=True, outcome_unknown=True)
            except BackendError as exc:
                bound.error("agent.backend_failed", error=str(exc), retryable=exc.retryable)
                return _error(502, str(exc), retryable=exc.retryable)
            bound.info("agent.request", status=response.status_code,
                       duration_ms=round((time.perf_counter() - started) * 1000, 3))
            return response

        return handle

    async def apply(request: Request) -> Response:
        spec = await read_spec(request, creating=True)
        await run_in_threadpool(backend.apply, spec)
        if hold is not None:
            await run_in_threadpool(_hold, hold)
        return JSONResponse({"ok": True, "action": "apply", "eip_uuid": spec.eip_uuid})

    async def revoke(request: Request) -> Response:
        spec = await read_spec(request, creating=False)
        await run_in_threadpool(backend.revoke, spec)
        return JSONResponse({"ok": True, "action": "revoke", "eip_uuid": spec.eip_uuid})

    async def batch(request: Request) -> Response:
        changes = parse_batch(await read_json(request, MAX_BATCH_BODY_BYTES))
        results: list[ChangeResult | None] = [None] * len(changes)
        admitted: list[int] = []
        for i, change in enumerate(changes):
            try:
                if change.action == "apply":
                    check_range(change.spec)
            except AddressNotAllowed as exc:
                results[i] = result_of(exc)
            else:
                admitted.append(i)
        ran = await run_in_threadpool(run_changes, backend, host_uuid, [changes[i] for i in admitted])
        for i, result in zip(admitted, ran, strict=True):
            results[i] = result
        final = [r if r is not None else ChangeResult("unknown") for r in results]
        if hold is not None and any(c.action == "apply" and r.ok for c, r in zip(changes, final, strict=True)):
            await run_in_threadpool(_hold, hold)  # the test hook, as after a single apply
        out = [_result_json(c, r) for c, r in zip(changes, final, strict=True)]
        counts = {status: n for status in STATUSES if (n := sum(o["status"] == status for o in out))}
        log.info("agent.batch", host_uuid=host_uuid, changes=len(changes), **counts)
        return JSONResponse({"host_uuid": host_uuid, "results": out})

    async def rules(request: Request) -> Response:
        specs = await run_in_threadpool(backend.rules, host_uuid)
        return JSONResponse({"host_uuid": host_uuid, "rules": [asdict(s) for s in specs]})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(description)

    async def metrics_page(request: Request) -> Response:
        if metrics is None:
            return _error(501, "metrics need the 'metrics' extra: pip install 'eipflow[metrics]'")
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        if metrics is not None:
            metrics.install()
        log.info("agent.started", host_uuid=host_uuid, hold=hold is not None)
        try:
            yield
        finally:
            log.info("agent.stopped", host_uuid=host_uuid)
            if metrics is not None:
                metrics.uninstall()

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/openapi.json", openapi_json, methods=["GET"]),
            Route("/metrics", metrics_page, methods=["GET"]),
            Route("/v1/rules", endpoint("rules", rules), methods=["GET"]),
            Route("/v1/apply", endpoint("apply", apply), methods=["POST"]),
            Route("/v1/revoke", endpoint("revoke", revoke), methods=["POST"]),
            Route("/v1/batch", endpoint("batch", batch), methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def _in(where: str) -> str:
    return "" if where == "body" else f"{where}."


def _result_json(change: Change, result: ChangeResult) -> dict[str, Any]:
    """One entry of a ``/v1/batch`` answer: the status, and what the single endpoints' error bodies say."""
    out: dict[str, Any] = {"status": result.status, "action": change.action, "eip_uuid": change.spec.eip_uuid}
    error = result.error
    if error is None:
        return out
    out["error"] = str(error)
    out["retryable"] = error.retryable
    if isinstance(error, StaleGeneration):
        out.update(reason=error.reason, requested_generation=error.requested, current_generation=error.current)
    elif isinstance(error, AddressNotAllowed):
        out.update(field=error.field, reason=error.reason, address_not_allowed=True)
    elif isinstance(error, BackendTimeout):
        out["outcome_unknown"] = True
    return out


def _peer(request: Request) -> str | None:
    return f"{request.client.host}:{request.client.port}" if request.client else "unix"

"""The control plane's side of the host agents: a :class:`Backend` that calls ``eipflow agent`` over HTTP.

``host_uuid`` picks the agent from the hosts file (see :mod:`eipflow.agent.config`). Outcomes:

=============================================  =============================================
the agent answers 200                           done
no answer in time, connection dropped mid-call  :class:`~eipflow.BackendTimeout` (maybe applied)
connection refused (nothing was sent)           :class:`~eipflow.BackendError`, retryable
409 (the host has seen a newer generation)       :class:`~eipflow.StaleGeneration` (superseded, never retried)
401 / 403 / 413 / 421 / 422                     :class:`~eipflow.BackendError`, not retryable
502 (the agent's backend failed)                :class:`~eipflow.BackendError`, as the agent says
504 (the agent's nft timed out)                 :class:`~eipflow.BackendTimeout`
=============================================  =============================================

Batches (:meth:`HttpAgentBackend.apply_changes`) go as one ``POST /v1/batch`` per
:data:`~eipflow.backends.batch.MAX_BATCH` changes; each change's result maps as its single call's
answer would (``refused``: StaleGeneration with the host's generation; ``failed``/``failed_permanent``:
BackendError, retryable or not, AddressNotAllowed where the agent says so; ``unknown``: BackendTimeout).
A request that fails as a whole gives every change of it that failure's result (no answer, a dropped
connection: every change ``unknown``), except a batch the agent refused whole for its size (413) or for
one entry it names (422/421 with ``index``; nothing was applied): that one goes one request per change,
so the bad entry fails alone. An agent that answers 404 there predates batches: it gets one
request per change, then and from then on (remembered per agent URL).

``--backend eipflow.backends.http:factory`` reads the hosts file named by ``$EIPFLOW_HOSTS_FILE``.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import httpcore
import httpx

from .. import validation as v
from .._logging import get_logger
from ..agent.config import HostConfig, load_hosts
from ..errors import AddressNotAllowed, BackendError, BackendTimeout, InvalidInput, StaleGeneration
from ..values import EipSpec
from .batch import MAX_BATCH, Change, ChangeResult, result_of

__all__ = ["HOSTS_FILE_ENV", "HttpAgentBackend", "factory"]

log = get_logger(__name__)

HOSTS_FILE_ENV = "EIPFLOW_HOSTS_FILE"


class HttpAgentBackend:
    """Apply/revoke/list through each host's agent.

    Args:
        hosts: ``{host_uuid: HostConfig}`` (from :func:`eipflow.agent.load_hosts`).
        clients: pre-built clients by host (tests pass in-process transports); others are made on
            first use, one pooled :class:`httpx.Client` per host.
    """

    def __init__(self, hosts: Mapping[str, HostConfig], *, clients: Mapping[str, httpx.Client] | None = None) -> None:
        self.hosts = dict(hosts)
        self._clients: dict[str, httpx.Client] = dict(clients or {})
        self._no_batch: set[str] = set()  # agent URLs that answered 404 for /v1/batch
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | Path) -> HttpAgentBackend:
        """Read the hosts file at ``path``."""
        return cls(load_hosts(path))

    def close(self) -> None:
        """Close every connection pool."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def __enter__(self) -> HttpAgentBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the Backend protocol ------------------------------------------------------------------
    def apply(self, spec: EipSpec) -> None:
        """Ask ``spec.host_uuid``'s agent to realize ``spec``."""
        self._call("apply", spec)

    def revoke(self, spec: EipSpec) -> None:
        """Ask ``spec.host_uuid``'s agent to remove its rule for ``spec`` (absent is fine)."""
        self._call("revoke", spec)

    def rules(self, host_uuid: str | None = None) -> list[EipSpec]:
        """What the agents report as realized (every configured host, or one).

        Raises:
            BackendError: an agent could not be asked (the first one; see :meth:`rules_by_host`).
        """
        out: list[EipSpec] = []
        for got in self.rules_by_host(host_uuid).values():
            if isinstance(got, BackendError):
                raise got
            out.extend(got)
        return out

    def rules_by_host(self, host_uuid: str | None = None) -> dict[str, list[EipSpec] | BackendError]:
        """Each host's rules, or the error that kept its agent from answering: one dead agent hides no other."""
        hosts = [host_uuid] if host_uuid is not None else sorted(self.hosts)
        out: dict[str, list[EipSpec] | BackendError] = {}
        for host in hosts:
            try:
                out[host] = _specs(host, self._request(host, "GET", "/v1/rules", None, "rules"))
            except BackendError as exc:
                log.warning("agent.unreachable", host_uuid=host, error=str(exc))
                out[host] = exc
        return out

    # -- HTTP ----------------------------------------------------------------------------------
    def _client(self, host: str) -> tuple[HostConfig, httpx.Client]:
        config = self.hosts.get(host)
        if config is None:
            raise BackendError(f"host {host} has no agent in the hosts file", retryable=False)
        with self._lock:
            client = self._clients.get(host)
            if client is None:
                client = _new_client(config)
                self._clients[host] = client
        return config, client

    def _call(self, action: str, spec: EipSpec) -> None:
        self._request(spec.host_uuid, "POST", f"/v1/{action}", asdict(spec), action)

    def _request(self, host: str, method: str, path: str, body: dict[str, Any] | None, action: str) -> httpx.Response:
        response = self._send(host, method, path, body, action)
        if response.status_code != 200:
            raise self._failure(host, response, body, action)
        return response

    def _send(self, host: str, method: str, path: str, body: dict[str, Any] | None, action: str) -> httpx.Response:
        """One request; a transport failure raised as what it means for the outcome."""
        config, client = self._client(host)
        where = f"agent of host {host}"
        try:
            return client.request(method, path, json=body)
        except httpx.ConnectTimeout as exc:
            raise BackendTimeout(f"{action}: {where} did not accept a connection in time") from exc
        except httpx.TimeoutException as exc:
            raise BackendTimeout(f"{action}: {where} did not answer within {config.timeout}s") from exc
        except httpx.ConnectError as exc:
            # Nothing was sent: the outcome is known (not done), and a later retry may reach it.
            raise BackendError(f"{action}: cannot reach {where}: {exc}") from exc
        except httpx.TransportError as exc:
            # The connection broke after the request went out (e.g. the agent was killed mid-call).
            raise BackendTimeout(f"{action}: {where} dropped the connection: {exc}") from exc

    def _failure(self, host: str, response: httpx.Response, body: dict[str, Any] | None, action: str) -> BackendError:
        """The error an agent's non-200 answer means."""
        where = f"agent of host {host}"
        message = _message(response)
        log.warning("agent.call_failed", host_uuid=host, action=action, status=response.status_code, error=message)
        if response.status_code == 504:
            return BackendTimeout(f"{action} on host {host}: {message}")
        if response.status_code in (502, 503):
            retryable = True
            try:
                retryable = bool(response.json().get("retryable", True))
            except ValueError:
                pass
            return BackendError(f"{action} on host {host}: {message}", retryable=retryable)
        if response.status_code == 409 and action in ("apply", "revoke"):
            return _stale(response, host, body)
        if response.status_code == 401:
            return BackendError(f"{action}: {where} refused our token (check the hosts file)", retryable=False)
        if response.status_code == 403:
            field, reason = _detail(response, "field"), _detail(response, "reason")
            return AddressNotAllowed(host, field or "address", _address_of(body, field), reason or message)
        return BackendError(f"{action} on host {host}: HTTP {response.status_code}: {message}",
                            retryable=response.status_code >= 500)

    # -- batches -------------------------------------------------------------------------------
    def apply_changes(self, host_uuid: str, changes: Sequence[Change]) -> list[ChangeResult]:
        """Send a host's changes to its agent as ``POST /v1/batch``, :data:`MAX_BATCH` to a request.

        One result per change, in order: the agent's verdict for each, or, when a request as a whole
        failed, that failure for each of its changes (no answer: ``unknown``). An agent that answers
        404 (older than ``/v1/batch``) gets one request per change, then and from then on (remembered
        per agent URL for this backend's life).
        """
        try:
            config, _ = self._client(host_uuid)
        except BackendError as exc:
            return [result_of(exc)] * len(changes)
        out: list[ChangeResult] = []
        for start in range(0, len(changes), MAX_BATCH):
            chunk = changes[start:start + MAX_BATCH]
            with self._lock:
                batched = config.url not in self._no_batch
            if batched:
                try:
                    out += self._batch(host_uuid, chunk)
                    continue
                except _NoBatch:
                    with self._lock:
                        self._no_batch.add(config.url)
                    log.warning("agent.no_batch", host_uuid=host_uuid, url=config.url,
                                hint="the agent predates POST /v1/batch: one request per change")
                except _OneByOne as refused:
                    # The agent refused the batch as a whole for one entry (or its size) and applied
                    # nothing: one request per change, so that entry fails alone.
                    log.warning("agent.batch_refused", host_uuid=host_uuid, changes=len(chunk),
                                status=refused.status, error=refused.message)
                except BackendError as exc:
                    out += [result_of(exc)] * len(chunk)
                    continue
            out += [self._single(change) for change in chunk]
        return out

    def _single(self, change: Change) -> ChangeResult:
        try:
            self._call(change.action, change.spec)
        except BackendError as exc:
            return result_of(exc)
        return result_of(None)

    def _batch(self, host: str, chunk: Sequence[Change]) -> list[ChangeResult]:
        body = {"host_uuid": host, "changes": [{"action": c.action, "spec": asdict(c.spec)} for c in chunk]}
        response = self._send(host, "POST", "/v1/batch", body, "batch")
        if response.status_code == 404:
            raise _NoBatch
        if response.status_code == 413 or (response.status_code in (421, 422) and _detail(response, "index", int)
                                           is not None):
            raise _OneByOne(response.status_code, _message(response))
        if response.status_code != 200:
            raise self._failure(host, response, body, "batch")
        results = _batch_results(host, chunk, response)
        for change, result in zip(chunk, results, strict=True):
            if result.error is not None:
                log.warning("agent.call_failed", host_uuid=host, action=change.action, status=result.status,
                            eip_uuid=change.spec.eip_uuid, error=str(result.error))
        return results


class _NoBatch(Exception):
    """The agent has no ``/v1/batch`` (404): it predates batches."""


class _OneByOne(Exception):
    """The agent refused a batch whole (its size, or one entry it names) and applied nothing of it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _batch_results(host: str, chunk: Sequence[Change], response: httpx.Response) -> list[ChangeResult]:
    """The agent's results, one per change; an answer that does not fit the batch is an unknown outcome."""
    try:
        items = response.json()["results"]
        if not isinstance(items, list) or len(items) != len(chunk):
            raise ValueError(f"{len(items) if isinstance(items, list) else 'no'} results for {len(chunk)} changes")
        return [_result(host, change, item) for change, item in zip(chunk, items, strict=True)]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        unknown = BackendTimeout(f"batch: the agent of host {host} sent an unreadable answer ({exc})")
        return [result_of(unknown)] * len(chunk)


def _result(host: str, change: Change, item: dict[str, Any]) -> ChangeResult:
    spec = change.spec
    if item.get("eip_uuid") != spec.eip_uuid:
        raise ValueError(f"result for {item.get('eip_uuid')!r} where {spec.eip_uuid} was sent")
    status = item.get("status")
    message = f"{change.action} on host {host}: {item.get('error', status)}"
    if status == "done":
        return result_of(None)
    if status == "refused":
        return result_of(StaleGeneration(spec.eip_uuid, host, int(item.get("requested_generation", spec.generation)),
                                         int(item.get("current_generation", 0)), str(item.get("reason", "older"))))
    if status == "failed":
        return result_of(BackendError(message, retryable=True))
    if status == "failed_permanent":
        if item.get("address_not_allowed"):
            field = str(item.get("field", "vip"))
            address = spec.guest_ip if field == "guest_ip" else spec.vip
            return result_of(AddressNotAllowed(host, field, address, str(item.get("reason", message))))
        return result_of(BackendError(message, retryable=False))
    return result_of(BackendTimeout(message))  # "unknown", or a status this client does not know


def _new_client(config: HostConfig) -> httpx.Client:
    """The pooled client for one agent.

    ``trust_env=False``: ``HTTP(S)_PROXY``, ``ALL_PROXY``, ``SSL_CERT_FILE`` and ``.netrc`` are never
    read for agent traffic — a proxy variable set for some other tool must not receive a bearer
    token. TLS is verified against the entry's ``ca_file`` (else the system's CAs); with
    ``auth = "mtls"`` the client certificate is presented and no token is sent.
    """
    transport: httpx.BaseTransport | None = _UnixTransport(config.uds) if config.uds else None
    verify: ssl.SSLContext | bool = True
    if config.tls:
        verify = ssl.create_default_context(cafile=config.ca_file)
        if config.client_cert is not None:
            verify.load_cert_chain(config.client_cert, config.client_key)
    headers = {"Authorization": f"Bearer {config.token}"} if config.auth == "token" else {}
    return httpx.Client(
        base_url=config.base_url,
        transport=transport,
        timeout=httpx.Timeout(config.timeout, connect=config.connect_timeout),
        headers=headers,
        follow_redirects=False,
        trust_env=False,
        verify=verify,
    )


class _SocketStream(httpcore.NetworkStream):
    """A connected Unix socket as an httpcore stream (errors mapped as httpcore maps its own)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._sock.settimeout(timeout)
        try:
            return self._sock.recv(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(exc) from exc
        except OSError as exc:
            raise httpcore.ReadError(exc) from exc

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._sock.settimeout(timeout)
        try:
            self._sock.sendall(buffer)
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(exc) from exc
        except OSError as exc:
            raise httpcore.WriteError(exc) from exc

    def close(self) -> None:
        self._sock.close()

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # httpcore asks before reusing a pooled connection: readable while idle means the
            # agent closed it (keep-alive expiry, restart), so a fresh connection is opened.
            if self._sock.fileno() < 0:
                return True
            poller = select.poll()
            poller.register(self._sock.fileno(), select.POLLIN)
            return bool(poller.poll(0))
        return self._sock if info == "socket" else None


class _UnixBackend(httpcore.SyncBackend):
    """httpcore's Unix connect leaves a refused socket to the garbage collector; close it at once.

    A control plane retrying against a dead agent would otherwise leak one descriptor per attempt
    until the next collection (and tests, where warnings are errors, see ResourceWarnings).
    """

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.settimeout(timeout)
            sock.connect(path)
        except TimeoutError as exc:
            sock.close()
            raise httpcore.ConnectTimeout(exc) from exc
        except OSError as exc:
            sock.close()
            raise httpcore.ConnectError(exc) from exc
        return _SocketStream(sock)


class _UnixTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport(uds=...)`` with :class:`_UnixBackend` (httpx has no knob for the backend)."""

    def __init__(self, path: str) -> None:
        super().__init__(uds=path)
        self._pool = httpcore.ConnectionPool(uds=path, network_backend=_UnixBackend())


def _stale(response: httpx.Response, host: str, body: dict[str, Any] | None) -> StaleGeneration:
    """The agent's 409: the host has seen a newer generation of the EIP (its body says which)."""
    try:
        data = response.json()
    except ValueError:
        data = {}
    data = data if isinstance(data, dict) else {}
    sent = body or {}
    return StaleGeneration(
        str(data.get("eip_uuid", sent.get("eip_uuid", "?"))), host,
        int(data.get("requested_generation", sent.get("generation", 0))),
        int(data.get("current_generation", 0)), str(data.get("reason", "older")),
    )


def _specs(host: str, response: httpx.Response) -> list[EipSpec]:
    """The rules an agent listed, addresses in canonical form (so they compare equal to the rows')."""
    try:
        specs = []
        for item in response.json().get("rules", []):
            data = {f.name: str(item[f.name]) for f in fields(EipSpec) if f.name != "generation"}
            data["vip"] = v.canonical_address("vip", data["vip"])
            data["guest_ip"] = v.canonical_address("guest_ip", data["guest_ip"])
            specs.append(EipSpec(**data, generation=int(item.get("generation", 0))))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # InvalidAddress is a ValueError
        raise BackendError(f"rules: the agent of host {host} sent an unreadable rule list ({exc})") from exc
    return specs


def _detail(response: httpx.Response, key: str, kind: type = str) -> Any:
    """``key`` of the answer's JSON body if it is a ``kind``, else ``None``."""
    try:
        data = response.json()
    except ValueError:
        return None
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


def _address_of(body: dict[str, Any] | None, field: str | None) -> str:
    value = (body or {}).get(field or "")
    return value if isinstance(value, str) else "?"


def _message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:200]
    return str(data.get("error", data)) if isinstance(data, dict) else str(data)[:200]


def factory() -> HttpAgentBackend:
    """``--backend eipflow.backends.http:factory``: agents from the hosts file in ``$EIPFLOW_HOSTS_FILE``."""
    path = os.environ.get(HOSTS_FILE_ENV)
    if not path:
        raise InvalidInput(f"the http backend needs {HOSTS_FILE_ENV}=/path/to/hosts.toml")
    return HttpAgentBackend.from_file(path)

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

``--backend eipflow.backends.http:factory`` reads the hosts file named by ``$EIPFLOW_HOSTS_FILE``.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading
from collections.abc import Mapping
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
        config, client = self._client(host)
        where = f"agent of host {host}"
        try:
            response = client.request(method, path, json=body)
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
        if response.status_code == 200:
            return response
        message = _message(response)
        log.warning("agent.call_failed", host_uuid=host, action=action, status=response.status_code, error=message)
        if response.status_code == 504:
            raise BackendTimeout(f"{action} on host {host}: {message}")
        if response.status_code in (502, 503):
            retryable = True
            try:
                retryable = bool(response.json().get("retryable", True))
            except ValueError:
                pass
            raise BackendError(f"{action} on host {host}: {message}", retryable=retryable)
        if response.status_code == 409 and action in ("apply", "revoke"):
            raise _stale(response, host, body)
        if response.status_code == 401:
            raise BackendError(f"{action}: {where} refused our token (check the hosts file)", retryable=False)
        if response.status_code == 403:
            field, reason = _detail(response, "field"), _detail(response, "reason")
            raise AddressNotAllowed(host, field or "address", _address_of(body, field), reason or message)
        raise BackendError(f"{action} on host {host}: HTTP {response.status_code}: {message}",
                           retryable=response.status_code >= 500)


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


def _detail(response: httpx.Response, key: str) -> str | None:
    try:
        data = response.json()
    except ValueError:
        return None
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


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

"""Run the agent under uvicorn: TCP (plain or TLS) or a Unix socket, graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import os
import socket
import ssl
import stat
from pathlib import Path

import uvicorn

from .._logging import get_logger
from ..backends.nftables import NftablesBackend
from ..errors import InvalidInput
from .app import AgentBackend, create_app
from .config import DEFAULT_STATE_ROOT, HostConfig

__all__ = ["GRACEFUL_SHUTDOWN_S", "SOCKET_MODE", "backend_for", "build_server", "serve"]

log = get_logger(__name__)

#: how long in-flight applies may finish after SIGTERM before they are cut off
GRACEFUL_SHUTDOWN_S = 15
#: the Unix socket: owner and group may connect (the control plane's group), nobody else
SOCKET_MODE = 0o660


def backend_for(host: HostConfig) -> NftablesBackend:
    """The nftables backend an agent runs for its hosts-file entry."""
    return NftablesBackend(
        host.host_uuid,
        public_interface=host.public_interface,
        announce=host.announce,
        namespace=host.namespace,
        table=host.table,
        timeout=host.nft_timeout,
        state_dir=host.state_dir or str(Path(DEFAULT_STATE_ROOT) / host.host_uuid),
    )


def _unix_socket(path: str) -> socket.socket:
    """A listening-ready Unix socket at ``path`` created with :data:`SOCKET_MODE` (never world-writable).

    The umask is set around ``bind`` so there is no moment at which the socket file is more open
    than that (uvicorn's own ``uds=`` makes it 0666).
    """
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # left behind by an agent that was killed
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~SOCKET_MODE)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, SOCKET_MODE)
    return sock


def build_server(
    host: HostConfig,
    *,
    listen: str | None = None,
    hold_fifo: str | Path | None = None,
    backend: AgentBackend | None = None,
) -> tuple[uvicorn.Server, list[socket.socket]]:
    """The uvicorn server for ``host``'s agent and the sockets it must be run with (``server.run(sockets)``).

    Args:
        host: this host's entry from the hosts file (read with ``load_hosts(path, host=…)``).
        listen: override where to bind: ``HOST:PORT`` (port 0: any free one, see ``sockets[0]``) or
            ``unix:///path.sock``; default from ``host.url``.
        hold_fifo: test hook, see :func:`eipflow.agent.app.create_app`.
        backend: the dataplane to serve (default: nftables as the entry configures it).

    Raises:
        InvalidInput: TLS is configured but the agent would listen on a Unix socket.
    """
    app = create_app(
        backend if backend is not None else backend_for(host),
        host_uuid=host.host_uuid,
        token=host.token if host.auth == "token" else None,
        mtls=host.auth == "mtls",
        vip_ranges=host.vip_ranges,
        hold_fifo=hold_fifo,
    )
    where: tuple[str, int] | str = host.listen
    if listen is not None:
        if listen.startswith("unix://"):
            where = listen.removeprefix("unix://")
        else:
            addr, _, port = listen.rpartition(":")
            where = (addr.strip("[]") or "127.0.0.1", int(port))
    options: dict[str, object] = {}
    sockets: list[socket.socket] = []  # bound before anything else can fail: closed by the caller
    if isinstance(where, str):
        if host.tls:
            raise InvalidInput(f"host {host.host_uuid}: TLS is configured (https url); listen on HOST:PORT, "
                               f"not on the Unix socket {where}")
        sockets.append(_unix_socket(where))
    else:
        # Bound here (not by uvicorn) so that port 0 works and the caller learns the port from the socket.
        family = socket.AF_INET6 if ":" in where[0] else socket.AF_INET
        sockets.append(socket.create_server(where, family=family, reuse_port=False))
    if host.tls:
        options["ssl_certfile"], options["ssl_keyfile"] = host.tls_cert, host.tls_key
        if host.client_ca is not None:
            options["ssl_ca_certs"], options["ssl_cert_reqs"] = host.client_ca, ssl.CERT_REQUIRED
    try:
        config = uvicorn.Config(
            app,
            log_config=None,  # logging is structlog's, configured by the CLI
            access_log=False,  # the app logs one canonical line per call instead
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            server_header=False,
            proxy_headers=False,
            **options,  # type: ignore[arg-type]
        )
        config.load()  # the certificate and key are read now: a bad file fails here, not at the first call
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    if host.vip_ranges == ():
        log.warning("agent.no_vip_ranges", host_uuid=host.host_uuid,
                    hint="set vip_ranges in the hosts file to limit which VIPs this host programs")
    log.info("agent.listening", host_uuid=host.host_uuid, listen=str(where), tls=host.tls, auth=host.auth)
    return uvicorn.Server(config), sockets


def serve(host: HostConfig, *, listen: str | None = None, hold_fifo: str | Path | None = None) -> None:
    """Serve ``host``'s agent until SIGTERM/SIGINT (then finish in-flight calls, up to a bound).

    Args:
        host: this host's entry from the hosts file.
        listen: override where to bind: ``HOST:PORT`` or ``unix:///path.sock``; default from ``host.url``.
        hold_fifo: test hook, see :func:`eipflow.agent.app.create_app`.
    """
    server, sockets = build_server(host, listen=listen, hold_fifo=hold_fifo)
    try:
        server.run(sockets=sockets or None)
    finally:
        for sock in sockets:
            sock.close()

"""Run the agent under uvicorn: TCP or a Unix socket, graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

from pathlib import Path

import uvicorn

from .._logging import get_logger
from ..backends.nftables import NftablesBackend
from .app import create_app
from .config import HostConfig

__all__ = ["GRACEFUL_SHUTDOWN_S", "backend_for", "serve"]

log = get_logger(__name__)

#: how long in-flight applies may finish after SIGTERM before they are cut off
GRACEFUL_SHUTDOWN_S = 15


def backend_for(host: HostConfig) -> NftablesBackend:
    """The nftables backend an agent runs for its hosts-file entry."""
    return NftablesBackend(
        host.host_uuid,
        public_interface=host.public_interface,
        announce=host.announce,
        namespace=host.namespace,
        table=host.table,
        timeout=host.nft_timeout,
    )


def serve(host: HostConfig, *, listen: str | None = None, hold_fifo: str | Path | None = None) -> None:
    """Serve ``host``'s agent until SIGTERM/SIGINT (then finish in-flight calls, up to a bound).

    Args:
        host: this host's entry from the hosts file.
        listen: override where to bind: ``HOST:PORT`` or ``unix:///path.sock``; default from ``host.url``.
        hold_fifo: test hook, see :func:`eipflow.agent.app.create_app`.
    """
    app = create_app(backend_for(host), host_uuid=host.host_uuid, token=host.token, hold_fifo=hold_fifo)
    where: tuple[str, int] | str = host.listen
    if listen is not None:
        if listen.startswith("unix://"):
            where = listen.removeprefix("unix://")
        else:
            addr, _, port = listen.rpartition(":")
            where = (addr.strip("[]") or "127.0.0.1", int(port))
    options: dict[str, object] = {}
    if isinstance(where, str):
        options["uds"] = where
    else:
        options["host"], options["port"] = where
    config = uvicorn.Config(
        app,
        log_config=None,  # logging is structlog's, configured by the CLI
        access_log=False,  # the app logs one canonical line per call instead
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        server_header=False,
        proxy_headers=False,
        **options,  # type: ignore[arg-type]
    )
    log.info("agent.listening", host_uuid=host.host_uuid, listen=str(where))
    uvicorn.Server(config).run()

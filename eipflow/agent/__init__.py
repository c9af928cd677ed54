"""The per-host agent: an HTTP service that realizes EIPs on its host's kernel (``eipflow agent``).

``eipflow.agent.config`` (the hosts file) needs only the standard library; the web app
(``eipflow.agent.app``) and server (``eipflow.agent.server``) need the ``agent`` extra
(``pip install 'eipflow[agent]'``) and are imported only when used.
"""

from __future__ import annotations

from .config import HostConfig, InvalidHostsFile, load_hosts, parse_hosts

__all__ = ["HostConfig", "InvalidHostsFile", "load_hosts", "parse_hosts"]

"""The hosts file: which agent serves which host, and how that host's dataplane is set up.

One TOML file is read by both sides — the control plane (:class:`~eipflow.backends.http.HttpAgentBackend`
picks the agent URL and token by ``host_uuid``) and each agent (its own entry says where to listen,
which namespace and interface to program)::

    [defaults]                           # optional; every key of a host entry may be given here
    announce = "address"
    public_interface = "pub0"
    timeout = 5.0

    [hosts."host-1"]
    url = "http://198.51.100.11:9600"    # or "unix:///run/eipflow/host-1.sock"
    token_file = "/etc/eipflow/host-1.token"   # or token = "…" (at least 16 characters)
    namespace = "eip-pub"                # optional: nft/ip run inside this network namespace
    public_interface = "pub0"
    state_dir = "/var/lib/eipflow/host-1"   # optional: the agent's generation records (default shown)

Only the standard library (``tomllib``) is needed here, so the control plane can read the file
without the agent's web dependencies.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .. import validation as v
from ..backends.nftables import ANNOUNCE_MODES, check_interface
from ..errors import InvalidInput

__all__ = ["DEFAULT_STATE_ROOT", "MIN_TOKEN_LENGTH", "HostConfig", "InvalidHostsFile", "load_hosts", "parse_hosts"]

MIN_TOKEN_LENGTH = 16
_KEYS = {
    "url", "token", "token_file", "namespace", "public_interface", "announce", "table", "timeout",
    "connect_timeout", "nft_timeout", "state_dir",
}
#: where an agent keeps its per-EIP generation records when the hosts file names no ``state_dir``
DEFAULT_STATE_ROOT = "/var/lib/eipflow"


class InvalidHostsFile(InvalidInput):
    """The hosts file cannot be used; the message names the file, the host and the key."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"hosts file {source}: {reason}")


@dataclass(frozen=True, slots=True)
class HostConfig:
    """One host's entry. ``repr`` hides the token."""

    host_uuid: str
    url: str
    token: str
    namespace: str | None = None
    public_interface: str | None = None
    announce: str = "address"
    table: str = "eipflow"
    timeout: float = 5.0  # seconds the control plane waits for an answer (then: outcome unknown)
    connect_timeout: float = 2.0
    nft_timeout: float = 10.0  # seconds one nft/ip command may take on the agent
    state_dir: str | None = None  # the agent's generation records (default DEFAULT_STATE_ROOT/<host>)

    def __repr__(self) -> str:
        return f"HostConfig(host_uuid={self.host_uuid!r}, url={self.url!r}, token='***')"

    @property
    def uds(self) -> str | None:
        """The Unix socket path for a ``unix://`` URL, else ``None``."""
        parts = urlsplit(self.url)
        return parts.path if parts.scheme == "unix" else None

    @property
    def base_url(self) -> str:
        """What an HTTP client puts in front of paths (a placeholder host for Unix sockets)."""
        return "http://agent" if self.uds else self.url.rstrip("/")

    @property
    def listen(self) -> tuple[str, int] | str:
        """Where the agent binds: ``(host, port)`` or a Unix socket path."""
        if self.uds:
            return self.uds
        parts = urlsplit(self.url)
        assert parts.hostname is not None
        return parts.hostname, parts.port or 80


def _fail(source: str, reason: str) -> InvalidHostsFile:
    return InvalidHostsFile(source, reason)


def _entry(source: str, host: str, raw: Mapping[str, Any], base: Path | None) -> HostConfig:
    where = f"hosts.{host}"
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise _fail(source, f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_KEYS))})")
    try:
        host_uuid = v.opaque_id("host uuid", host)
    except InvalidInput as exc:
        raise _fail(source, f"{where}: {exc}") from None

    url = raw.get("url")
    if not isinstance(url, str):
        raise _fail(source, f"{where}.url is required (http://host:port or unix:///path.sock)")
    parts = urlsplit(url)
    if parts.scheme == "unix":
        if not parts.path.startswith("/"):
            raise _fail(source, f"{where}.url: {url!r} needs an absolute socket path (unix:///run/x.sock)")
    elif parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise _fail(source, f"{where}.url: {url!r} has no host")
    else:
        raise _fail(source, f"{where}.url: {url!r} must start with http://, https:// or unix://")

    token = raw.get("token")
    token_file = raw.get("token_file")
    if token is not None and token_file is not None:
        raise _fail(source, f"{where}: give token or token_file, not both")
    if token_file is not None:
        if not isinstance(token_file, str):
            raise _fail(source, f"{where}.token_file must be a path")
        path = Path(token_file)
        if not path.is_absolute() and base is not None:
            path = base / path
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise _fail(source, f"{where}.token_file {path}: {exc.strerror}") from None
    if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
        raise _fail(source, f"{where}: a token of at least {MIN_TOKEN_LENGTH} characters is required")
    if any(c.isspace() for c in token) or not token.isprintable():
        raise _fail(source, f"{where}: the token must be printable and contain no whitespace")

    announce = raw.get("announce", "address")
    if announce not in ANNOUNCE_MODES:
        raise _fail(source, f"{where}.announce: {announce!r} is not one of {', '.join(ANNOUNCE_MODES)}")
    iface = raw.get("public_interface")
    try:
        if iface is not None:
            check_interface(f"{where}.public_interface", iface)
    except InvalidInput as exc:
        raise _fail(source, str(exc)) from None
    if iface is None and announce == "address":
        raise _fail(source, f"{where}: public_interface is required with announce = 'address'")
    namespace = raw.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        raise _fail(source, f"{where}.namespace must be a string")
    table = raw.get("table", "eipflow")
    if not isinstance(table, str):
        raise _fail(source, f"{where}.table must be a string")

    state_dir = raw.get("state_dir")
    if state_dir is not None:
        if not isinstance(state_dir, str) or not state_dir:
            raise _fail(source, f"{where}.state_dir must be a directory path")
        state_path = Path(state_dir)
        if not state_path.is_absolute() and base is not None:
            state_path = base / state_path
        state_dir = str(state_path)

    numbers: dict[str, float] = {}
    for key, default in (("timeout", 5.0), ("connect_timeout", 2.0), ("nft_timeout", 10.0)):
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
            raise _fail(source, f"{where}.{key}: {value!r} must be a number of seconds in (0, 3600]")
        numbers[key] = float(value)
    return HostConfig(host_uuid, url, token, namespace, iface, announce, table, **numbers, state_dir=state_dir)


def parse_hosts(data: Mapping[str, Any], source: str = "<memory>", base: Path | None = None) -> dict[str, HostConfig]:
    """Validate a parsed hosts document; returns ``{host_uuid: HostConfig}``."""
    unknown = sorted(set(data) - {"defaults", "hosts"})
    if unknown:
        raise _fail(source, f"unknown top-level key(s) {', '.join(unknown)} (allowed: defaults, hosts)")
    defaults = data.get("defaults", {})
    hosts = data.get("hosts")
    if not isinstance(defaults, dict):
        raise _fail(source, "[defaults] must be a table")
    if not isinstance(hosts, dict) or not hosts:
        raise _fail(source, "needs at least one [hosts.\"HOST-UUID\"] table")
    out: dict[str, HostConfig] = {}
    for host, raw in hosts.items():
        if not isinstance(raw, dict):
            raise _fail(source, f"hosts.{host} must be a table")
        entry = _entry(source, host, {**defaults, **raw}, base)
        out[entry.host_uuid] = entry
    return out


def load_hosts(path: str | Path) -> dict[str, HostConfig]:
    """Read and validate a hosts file (relative ``token_file`` paths are relative to it)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise _fail(str(path), exc.strerror or str(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise _fail(str(path), f"not valid TOML: {exc}") from None
    return parse_hosts(data, str(path), path.parent)

"""The hosts file: which agent serves which host, and how that host's dataplane is set up.

One TOML file is read by both sides — the control plane (:class:`~eipflow.backends.http.HttpAgentBackend`
picks the agent URL and token by ``host_uuid``) and each agent (its own entry says where to listen,
which namespace and interface to program)::

    [defaults]                           # optional; every key of a host entry may be given here
    announce = "address"
    public_interface = "pub0"
    timeout = 5.0

    [hosts."host-1"]
    url = "https://198.51.100.11:9600"   # or "http://…", or "unix:///run/eipflow/host-1.sock"
    token_file = "/etc/eipflow/host-1.token"   # or token = "…"; not readable by every user
    namespace = "eip-pub"                # optional: nft/ip run inside this network namespace
    public_interface = "pub0"
    state_dir = "/var/lib/eipflow/host-1"   # optional: the agent's generation records (default shown)
    vip_ranges = ["203.0.113.0/24"]      # the only VIPs this host's agent will program
    tls_cert = "/etc/eipflow/host-1.pem" # agent: serve https with this certificate ...
    tls_key = "/etc/eipflow/host-1.key"  # ... and key
    ca_file = "/etc/eipflow/ca.pem"      # control plane: the CA the agent's certificate must chain to
    # auth = "mtls": instead of a token, the control plane presents client_cert/client_key and the
    # agent accepts only certificates signed by client_ca.

Each side reads only what it needs: the control plane (:func:`load_hosts`) every host's URL and
credentials; an agent (``load_hosts(path, host=…)``) only its own entry, so its file need hold no
other host's token (one compromised host yields no other host's key).

Only the standard library (``tomllib``) is needed here, so the control plane can read the file
without the agent's web dependencies.
"""

from __future__ import annotations

import ipaddress
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .. import validation as v
from .._logging import get_logger
from ..backends.nftables import ANNOUNCE_MODES, check_interface
from ..errors import InvalidInput

__all__ = [
    "AUTH_MODES", "DEFAULT_STATE_ROOT", "MIN_TOKEN_DISTINCT", "MIN_TOKEN_LENGTH", "HostConfig", "InvalidHostsFile",
    "load_hosts", "parse_hosts",
]

log = get_logger(__name__)

MIN_TOKEN_LENGTH = 16
#: a token of one repeated letter (or two) is not a secret, whatever its length
MIN_TOKEN_DISTINCT = 8
AUTH_MODES = ("token", "mtls")
_TLS_FILES = ("tls_cert", "tls_key", "ca_file", "client_ca", "client_cert", "client_key")
_KEYS = {
    "url", "token", "token_file", "namespace", "public_interface", "announce", "table", "timeout",
    "connect_timeout", "nft_timeout", "state_dir", "auth", "vip_ranges", *_TLS_FILES,
}
_MAKE_TOKEN = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
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
    token: str | None  # None only with auth = "mtls"
    namespace: str | None = None
    public_interface: str | None = None
    announce: str = "address"
    table: str = "eipflow"
    timeout: float = 5.0  # seconds the control plane waits for an answer (then: outcome unknown)
    connect_timeout: float = 2.0
    nft_timeout: float = 10.0  # seconds one nft/ip command may take on the agent
    state_dir: str | None = None  # the agent's generation records (default DEFAULT_STATE_ROOT/<host>)
    auth: str = "token"
    #: the only VIP networks the agent programs (empty: any VIP the address rules allow)
    vip_ranges: tuple[str, ...] = ()
    tls_cert: str | None = None  # agent: serve TLS
    tls_key: str | None = None
    ca_file: str | None = None  # control plane: verify the agent's certificate against this CA
    client_ca: str | None = None  # agent: require client certificates signed by this CA (mTLS)
    client_cert: str | None = None  # control plane: present this certificate (mTLS)
    client_key: str | None = None

    @property
    def tls(self) -> bool:
        """The agent is reached over https."""
        return urlsplit(self.url).scheme == "https"

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
        return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _fail(source: str, reason: str) -> InvalidHostsFile:
    return InvalidHostsFile(source, reason)


def _path(source: str, where: str, key: str, value: object, base: Path | None) -> Path:
    if not isinstance(value, str) or not value:
        raise _fail(source, f"{where}.{key} must be a path")
    path = Path(value)
    return base / path if not path.is_absolute() and base is not None else path


def _secret_file(source: str, where: str, key: str, path: Path) -> str:
    """Read a file holding a secret, refusing one that every user of the host can read (or write)."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as exc:
        raise _fail(source, f"{where}.{key} {path}: {exc.strerror}") from None
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise _fail(source, f"{where}.{key} {path} is readable or writable by every user "
                            f"(mode {stat.filemode(mode)}): chmod 600 {path}")
    return text


def _token(source: str, where: str, raw: Mapping[str, Any], base: Path | None, required: bool) -> str | None:
    token = raw.get("token")
    token_file = raw.get("token_file")
    if token is not None and token_file is not None:
        raise _fail(source, f"{where}: give token or token_file, not both")
    if token_file is not None:
        token = _secret_file(source, where, "token_file", _path(source, where, "token_file", token_file, base)).strip()
    if token is None and not required:
        return None
    if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
        raise _fail(source, f"{where}: a token of at least {MIN_TOKEN_LENGTH} characters is required "
                            f"(make one: {_MAKE_TOKEN})")
    if any(c.isspace() for c in token) or not token.isprintable():
        raise _fail(source, f"{where}: the token must be printable and contain no whitespace")
    if len(set(token)) < MIN_TOKEN_DISTINCT:
        raise _fail(source, f"{where}: the token is too weak ({len(set(token))} distinct characters, at least "
                            f"{MIN_TOKEN_DISTINCT} are needed; make one: {_MAKE_TOKEN})")
    return token


def _vip_ranges(source: str, where: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not value or not all(isinstance(x, str) for x in value):
        raise _fail(source, f"{where}.vip_ranges must be a non-empty list of networks like \"203.0.113.0/24\"")
    out = []
    for text in value:
        try:
            out.append(ipaddress.ip_network(text, strict=True).compressed)
        except ValueError as exc:
            raise _fail(source, f"{where}.vip_ranges: {text!r} is not a network ({exc})") from None
    return tuple(out)


def _tls(source: str, where: str, raw: Mapping[str, Any], base: Path | None, scheme: str, auth: str,
         side: str) -> dict[str, str | None]:
    """The TLS files of one entry, checked for the side that reads them (``agent`` or ``control``)."""
    given = {k: str(_path(source, where, k, raw[k], base)) for k in _TLS_FILES if raw.get(k) is not None}
    if scheme != "https":
        if given:
            raise _fail(source, f"{where}: {', '.join(sorted(given))} need an https:// url (the url is {scheme}://)")
        if auth == "mtls":
            raise _fail(source, f"{where}: auth = 'mtls' needs an https:// url")
        return {}
    needed = {"agent": ["tls_cert", "tls_key"] + (["client_ca"] if auth == "mtls" else []),
              "control": ["client_cert", "client_key"] if auth == "mtls" else []}[side]
    missing = [k for k in needed if k not in given]
    if missing:
        what = "serve https" if side == "agent" else "present a client certificate (auth = 'mtls')"
        raise _fail(source, f"{where}: an https:// url cannot be honoured: {', '.join(missing)} "
                            f"required to {what}")
    # Each side checks only the files it reads: one file may serve both, and the control plane has
    # no business with (and no access to) an agent's private key, nor an agent with the client's.
    mine = {"agent": ("tls_cert", "tls_key", "client_ca"), "control": ("ca_file", "client_cert", "client_key")}[side]
    for key, path in given.items():
        if key not in mine:
            continue
        if key in ("tls_key", "client_key"):
            _secret_file(source, where, key, Path(path))
        elif not Path(path).is_file():
            raise _fail(source, f"{where}.{key} {path}: no such file")
    return dict(given)


def _entry(source: str, host: str, raw: Mapping[str, Any], base: Path | None, side: str = "control") -> HostConfig:
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

    auth = raw.get("auth", "token")
    if auth not in AUTH_MODES:
        raise _fail(source, f"{where}.auth: {auth!r} is not one of {', '.join(AUTH_MODES)}")
    token = _token(source, where, raw, base, required=auth == "token")
    tls = _tls(source, where, raw, base, parts.scheme, auth, side)
    vip_ranges = _vip_ranges(source, where, raw.get("vip_ranges"))

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
    return HostConfig(
        host_uuid, url, token, namespace, iface, announce, table, timeout=numbers["timeout"],
        connect_timeout=numbers["connect_timeout"], nft_timeout=numbers["nft_timeout"], auth=auth,
        vip_ranges=vip_ranges, tls_cert=tls.get("tls_cert"), tls_key=tls.get("tls_key"), ca_file=tls.get("ca_file"),
        client_ca=tls.get("client_ca"), client_cert=tls.get("client_cert"), client_key=tls.get("client_key"),
        state_dir=state_dir,
    )


def parse_hosts(data: Mapping[str, Any], source: str = "<memory>", base: Path | None = None, *,
                host: str | None = None) -> dict[str, HostConfig]:
    """Validate a parsed hosts document; returns ``{host_uuid: HostConfig}``.

    Args:
        data: the parsed TOML.
        source: the file's name, for messages.
        base: where relative paths (``token_file``, TLS files) are relative to.
        host: read as that host's agent: only its entry is checked and returned (other entries
            may lack tokens, or be absent), with the agent's TLS requirements.
    """
    unknown = sorted(set(data) - {"defaults", "hosts"})
    if unknown:
        raise _fail(source, f"unknown top-level key(s) {', '.join(unknown)} (allowed: defaults, hosts)")
    defaults = data.get("defaults", {})
    hosts = data.get("hosts")
    if not isinstance(defaults, dict):
        raise _fail(source, "[defaults] must be a table")
    if not isinstance(hosts, dict) or not hosts:
        raise _fail(source, "needs at least one [hosts.\"HOST-UUID\"] table")
    if host is not None:
        if host not in hosts:
            raise _fail(source, f"host {host!r} is not in it (known: {', '.join(sorted(hosts))})")
        hosts = {host: hosts[host]}
    out: dict[str, HostConfig] = {}
    for name, raw in hosts.items():
        if not isinstance(raw, dict):
            raise _fail(source, f"hosts.{name} must be a table")
        entry = _entry(source, name, {**defaults, **raw}, base, side="control" if host is None else "agent")
        out[entry.host_uuid] = entry
    return out


def load_hosts(path: str | Path, *, host: str | None = None) -> dict[str, HostConfig]:
    """Read and validate a hosts file (relative paths in it are relative to it).

    With ``host``, read it as that host's agent does: only its own entry (see :func:`parse_hosts`).
    """
    path = Path(path)
    try:
        text = path.read_text()
        mode = path.stat().st_mode
    except OSError as exc:
        raise _fail(str(path), exc.strerror or str(exc)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _fail(str(path), f"not valid TOML: {exc}") from None
    hosts = parse_hosts(data, str(path), path.parent, host=host)
    if mode & stat.S_IROTH and _inline_tokens(data):
        log.warning("agent.token_file_readable", path=str(path), mode=stat.filemode(mode),
                    hint="every user can read the tokens in it: chmod 600, or use token_file")
    return hosts


def _inline_tokens(data: Mapping[str, Any]) -> bool:
    tables = [data.get("defaults", {}), *(data.get("hosts") or {}).values()]
    return any(isinstance(t, dict) and "token" in t for t in tables)

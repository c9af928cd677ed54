"""The agent trusts no one it need not: its own token only, TLS and mTLS, no proxies, an address allow-list,
a private socket, safe token files, strong tokens, one log line per bad-token flood, no duplicate keys.

In process and without root: real uvicorn servers in threads (stopped after each test), the real
HTTP backend, ``trustme`` certificates. Every refused request is checked to change nothing.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
import trustme

from eipflow import AddressNotAllowed, BackendError, InMemoryDataplane
from eipflow.agent import HostConfig, InvalidHostsFile, load_hosts, parse_hosts
from eipflow.agent.app import WARN_EVERY_S, create_app
from eipflow.agent.server import SOCKET_MODE, build_server
from eipflow.backends.batch import MAX_BATCH
from eipflow.backends.http import HttpAgentBackend
from eipflow.cli import main
from eipflow.values import EipSpec

TOKEN = "s3cret-token-0123456789"
HOST = "host-1"


def spec(**over: str) -> EipSpec:
    data = {"eip_uuid": str(uuid.uuid4()), "vip": "203.0.113.100", "vm_nic_uuid": "nic-1",
            "guest_ip": "192.0.2.10", "host_uuid": HOST}
    data.update(over)
    return EipSpec(**data)


def entry(**over: object) -> dict[str, object]:
    data: dict[str, object] = {"url": "http://127.0.0.1:9600", "token": TOKEN, "announce": "none"}
    data.update(over)
    return {k: v for k, v in data.items() if v is not None}


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to ~107 bytes: pytest's tmp_path can be longer.
    where = Path(tempfile.mkdtemp(prefix="eiph-", dir="/tmp"))
    try:
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


@contextmanager
def running(config: HostConfig, backend: InMemoryDataplane, listen: str) -> Iterator[list[socket.socket]]:
    """``build_server`` (what ``eipflow agent`` runs) serving ``backend`` in a thread, stopped afterwards."""
    server, sockets = build_server(config, listen=listen, backend=backend)
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, name="agent-under-test")
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)  # bounded wait for the server to come up (not a race wait)
        assert server.started, "agent did not start"
        yield sockets
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        for sock in sockets:
            sock.close()


def port_of(sockets: list[socket.socket]) -> int:
    return int(sockets[0].getsockname()[1])


# -- each agent needs only its own token ---------------------------------------------------------
def test_an_agent_reads_only_its_own_entry(tmp_path: Path) -> None:
    """host-1's file holds no other host's token: the agent starts; the control plane would refuse it."""
    path = tmp_path / "hosts.toml"
    path.write_text(f'[hosts."host-1"]\nurl = "http://127.0.0.1:9600"\ntoken = "{TOKEN}"\nannounce = "none"\n\n'
                    '[hosts."host-2"]\nurl = "http://127.0.0.1:9601"\nannounce = "none"\n')
    path.chmod(0o600)
    assert list(load_hosts(path, host="host-1")) == ["host-1"]
    with pytest.raises(InvalidHostsFile, match=r"hosts\.host-2: a token of at least 16"):
        load_hosts(path)
    with pytest.raises(InvalidHostsFile, match="'host-9' is not in it"):
        load_hosts(path, host="host-9")


def test_the_agent_command_refuses_an_unknown_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text(f'[hosts."host-1"]\nurl = "http://127.0.0.1:9600"\ntoken = "{TOKEN}"\nannounce = "none"\n')
    assert main(["agent", "--config", str(path), "--host", "host-9"]) == 2
    assert "'host-9' is not in it (known: host-1)" in capsys.readouterr().err


# -- tokens and token files ----------------------------------------------------------------------
@pytest.mark.parametrize(("token", "why"), [
    ("a" * 16, "too weak"), ("ab" * 20, "too weak"), ("abcdefg" * 3, "too weak"), ("short", "at least 16"),
    ("with space 0123456789", "no whitespace"),
])
def test_weak_tokens_are_refused(token: str, why: str) -> None:
    with pytest.raises(InvalidHostsFile, match=why):
        parse_hosts({"hosts": {HOST: entry(token=token)}})


def test_a_world_readable_token_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "h1.token"
    secret.write_text(TOKEN)
    secret.chmod(0o644)
    with pytest.raises(InvalidHostsFile, match=r"readable or writable by every user .*chmod 600"):
        parse_hosts({"hosts": {HOST: entry(token=None, token_file=str(secret))}})
    secret.chmod(0o640)
    assert parse_hosts({"hosts": {HOST: entry(token=None, token_file=str(secret))}})[HOST].token == TOKEN


def test_inline_tokens_in_a_world_readable_hosts_file_are_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text(f'[hosts."host-1"]\nurl = "http://127.0.0.1:9600"\ntoken = "{TOKEN}"\nannounce = "none"\n')
    path.chmod(0o644)
    with structlog.testing.capture_logs() as logs:
        load_hosts(path)
    assert [e["event"] for e in logs] == ["agent.token_file_readable"]
    path.chmod(0o600)
    with structlog.testing.capture_logs() as logs:
        load_hosts(path)
    assert logs == []


# -- https must be honoured ----------------------------------------------------------------------
@pytest.mark.parametrize(("over", "host", "why"), [
    ({"url": "https://127.0.0.1:9600"}, HOST, "cannot be honoured: tls_cert, tls_key required to serve https"),
    ({"tls_cert": "/x.pem", "tls_key": "/x.key"}, None, "need an https:// url"),
    ({"url": "unix:///run/a.sock", "ca_file": "/ca.pem"}, None, "need an https:// url"),
    ({"auth": "mtls", "token": None}, None, "auth = 'mtls' needs an https:// url"),
    ({"url": "https://127.0.0.1:9600", "auth": "mtls", "token": None}, None,
     "client_cert, client_key required to present a client certificate"),
    ({"url": "https://127.0.0.1:9600", "ca_file": "/no/such/ca.pem"}, None, "no such file"),
    ({"auth": "kerberos"}, None, "is not one of token, mtls"),
])
def test_an_https_url_that_cannot_be_honoured_is_refused(over: dict[str, object], host: str | None,
                                                         why: str) -> None:
    with pytest.raises(InvalidHostsFile, match=why):
        parse_hosts({"hosts": {HOST: entry(**over)}}, host=host)


@pytest.fixture
def ca(tmp_path: Path) -> trustme.CA:
    return trustme.CA()


def _pem(tmp_path: Path, name: str, blob: Any) -> str:
    path = tmp_path / name
    blob.write_to_path(str(path))
    path.chmod(0o600)
    return str(path)


def tls_entries(tmp_path: Path, ca: trustme.CA, *, mtls: bool, client_ca: trustme.CA | None = None
                ) -> tuple[HostConfig, dict[str, object]]:
    """The agent's own config, and the control plane's entry (without its port) for one TLS host."""
    cert = ca.issue_cert("127.0.0.1")
    agent_side = entry(url="https://127.0.0.1:9600", tls_cert=_pem(tmp_path, "agent.pem", cert.cert_chain_pems[0]),
                       tls_key=_pem(tmp_path, "agent.key", cert.private_key_pem))
    control = entry(url="https://127.0.0.1:9600", ca_file=_pem(tmp_path, "ca.pem", ca.cert_pem))
    if mtls:
        signer = client_ca or ca
        agent_side.update(auth="mtls", client_ca=_pem(tmp_path, "client-ca.pem", signer.cert_pem))
        agent_side.pop("token")
        client = signer.issue_cert("control-plane")
        control.update(auth="mtls", client_cert=_pem(tmp_path, "client.pem", client.cert_chain_pems[0]),
                       client_key=_pem(tmp_path, "client.key", client.private_key_pem))
        control.pop("token")
    return parse_hosts({"hosts": {HOST: agent_side}}, host=HOST)[HOST], control


def control_backend(control: dict[str, object], port: int) -> HttpAgentBackend:
    return HttpAgentBackend(parse_hosts({"hosts": {HOST: {**control, "url": f"https://127.0.0.1:{port}"}}}))


def test_tls_serves_and_the_client_verifies_the_configured_ca(tmp_path: Path, ca: trustme.CA) -> None:
    dataplane = InMemoryDataplane()
    agent, control = tls_entries(tmp_path, ca, mtls=False)
    with running(agent, dataplane, "127.0.0.1:0") as sockets:
        port = port_of(sockets)
        with control_backend(control, port) as backend:
            s = spec()
            backend.apply(s)
            assert backend.rules() == [s]
        other = trustme.CA()  # a client trusting another CA does not talk to this agent
        with control_backend({**control, "ca_file": _pem(tmp_path, "other.pem", other.cert_pem)}, port) as backend:
            with pytest.raises(BackendError, match="CERTIFICATE_VERIFY_FAILED"):
                backend.revoke(s)
        with httpx.Client(trust_env=False) as plain:  # plain HTTP to the TLS port is not served
            with pytest.raises(httpx.TransportError):
                plain.post(f"http://127.0.0.1:{port}/v1/revoke", json=vars_of(s),
                           headers={"Authorization": f"Bearer {TOKEN}"})
    assert dataplane.rules() == [s]


def vars_of(s: EipSpec) -> dict[str, object]:
    return {"eip_uuid": s.eip_uuid, "vip": s.vip, "vm_nic_uuid": s.vm_nic_uuid, "guest_ip": s.guest_ip,
            "host_uuid": s.host_uuid, "generation": s.generation}


def test_mtls_replaces_the_token_and_refuses_clients_without_a_certificate(tmp_path: Path, ca: trustme.CA) -> None:
    dataplane = InMemoryDataplane()
    agent, control = tls_entries(tmp_path, ca, mtls=True)
    assert agent.token is None
    with running(agent, dataplane, "127.0.0.1:0") as sockets:
        port = port_of(sockets)
        with control_backend(control, port) as backend:
            s = spec()
            backend.apply(s)  # no Authorization header at all: the certificate is the credential
            assert backend.rules() == [s]
        # A client with the right CA and a bearer token but no certificate: refused in the handshake.
        verify = ssl.create_default_context(cafile=str(control["ca_file"]))
        with httpx.Client(verify=verify, trust_env=False) as bare:
            with pytest.raises(httpx.TransportError):
                bare.post(f"https://127.0.0.1:{port}/v1/revoke", json=vars_of(s),
                          headers={"Authorization": f"Bearer {TOKEN}"})
        # A certificate from another CA: refused too.
        stranger = trustme.CA().issue_cert("intruder")
        forged = {**control, "client_cert": _pem(tmp_path, "x.pem", stranger.cert_chain_pems[0]),
                  "client_key": _pem(tmp_path, "x.key", stranger.private_key_pem)}
        with control_backend(forged, port) as backend, pytest.raises(BackendError):
            backend.revoke(s)
    assert dataplane.rules() == [s]


# -- no proxy from the environment ---------------------------------------------------------------
def test_agent_traffic_ignores_proxy_variables(monkeypatch: pytest.MonkeyPatch, short_dir: Path) -> None:
    """HTTP_PROXY points at a listener of ours: the call goes straight to the agent, the listener sees nothing."""
    dataplane = InMemoryDataplane()
    config = parse_hosts({"hosts": {HOST: entry()}})[HOST]
    with socket.create_server(("127.0.0.1", 0)) as proxy, running(config, dataplane, "127.0.0.1:0") as sockets:
        proxy.setblocking(False)
        where = f"http://127.0.0.1:{proxy.getsockname()[1]}"
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, where)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        control = parse_hosts({"hosts": {HOST: entry(url=f"http://127.0.0.1:{port_of(sockets)}")}})
        with HttpAgentBackend(control) as backend:
            s = spec()
            backend.apply(s)
        with pytest.raises(BlockingIOError):
            proxy.accept()  # nobody ever connected to the "proxy"
    assert dataplane.rules() == [s]


# -- the unix socket -----------------------------------------------------------------------------
def test_the_unix_socket_is_not_world_writable(short_dir: Path) -> None:
    path = short_dir / "agent.sock"
    path.write_bytes(b"")  # not a socket: never removed
    config = parse_hosts({"hosts": {HOST: entry(url=f"unix://{short_dir / 'other.sock'}")}})[HOST]
    with running(config, InMemoryDataplane(), f"unix://{short_dir / 'a.sock'}"):
        mode = stat.S_IMODE((short_dir / "a.sock").stat().st_mode)
        assert mode == SOCKET_MODE == 0o660
    with pytest.raises(OSError):
        build_server(config, listen=f"unix://{path}", backend=InMemoryDataplane())
    assert path.read_bytes() == b""


# -- the app: allow-list, duplicate keys, aggregated warnings ------------------------------------
def call(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize("vip", ["198.51.100.254", "203.0.114.1", "2001:db8::1"])
def test_vips_outside_the_hosts_ranges_are_refused_and_change_nothing(vip: str) -> None:
    dataplane = InMemoryDataplane()
    app = create_app(dataplane, host_uuid=HOST, token=TOKEN, vip_ranges=["203.0.113.0/24", "2001:db8:1::/64"])
    answer = call(app, "POST", "/v1/apply", json=vars_of(spec(vip=vip, guest_ip="fd00::5" if ":" in vip
                                                               else "192.0.2.10")), headers=AUTH)
    assert answer.status_code == 403 and "outside this host's vip_ranges" in answer.json()["error"]
    assert dataplane.calls == []
    assert call(app, "POST", "/v1/apply", json=vars_of(spec()), headers=AUTH).status_code == 200
    # Removing is never limited: a rule from before the ranges existed can still go.
    assert call(app, "POST", "/v1/revoke", json=vars_of(spec(vip=vip, guest_ip="fd00::5" if ":" in vip
                                                             else "192.0.2.10")), headers=AUTH).status_code == 200


def test_a_403_reaches_the_engine_as_address_not_allowed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"error": "vip 198.51.100.254 is outside", "field": "vip",
                                         "reason": "outside this host's vip_ranges (203.0.113.0/24)"})

    config = parse_hosts({"hosts": {HOST: entry()}})
    client = httpx.Client(base_url="http://agent", transport=httpx.MockTransport(handler))
    with HttpAgentBackend(config, clients={HOST: client}) as backend, pytest.raises(AddressNotAllowed) as info:
        backend.apply(spec(vip="198.51.100.254"))
    assert (info.value.field, info.value.address, info.value.retryable) == ("vip", "198.51.100.254", False)
    assert "outside this host's vip_ranges" in str(info.value)


@pytest.mark.parametrize("text", [
    '{"eip_uuid": "%s", "vip": "203.0.113.100", "vip": "198.51.100.254", "vm_nic_uuid": "n", "guest_ip": '
    '"192.0.2.10", "host_uuid": "host-1"}',
    '{"eip_uuid": "%s", "vip": "203.0.113.100", "vm_nic_uuid": "n", "guest_ip": "192.0.2.10", "host_uuid": '
    '"host-1", "host_uuid": "host-1"}',
])
def test_duplicate_json_keys_are_refused(text: str) -> None:
    dataplane = InMemoryDataplane()
    app = create_app(dataplane, host_uuid=HOST, token=TOKEN)
    answer = call(app, "POST", "/v1/apply", content=(text % uuid.uuid4()).encode(),
                  headers={**AUTH, "Content-Type": "application/json"})
    assert answer.status_code == 422 and "duplicate key" in answer.json()["error"]
    assert dataplane.calls == []


def test_a_flood_of_bad_tokens_is_one_warning_per_window() -> None:
    """300 bad tokens: one line; the next window's line says how many were suppressed."""
    now = [1000.0]
    dataplane = InMemoryDataplane()
    app = create_app(dataplane, host_uuid=HOST, token=TOKEN, clock=lambda: now[0])

    async def flood(n: int) -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
            return [(await client.get("/v1/rules", headers={"Authorization": f"Bearer guess-{i:016d}"})).status_code
                    for i in range(n)]

    with structlog.testing.capture_logs() as logs:
        assert set(asyncio.run(flood(300))) == {401}
        now[0] += WARN_EVERY_S
        assert asyncio.run(flood(1)) == [401]
    warnings = [e for e in logs if e["event"] == "agent.unauthorized"]
    assert [w["suppressed"] for w in warnings] == [0, 299]
    assert dataplane.calls == []


def test_the_openapi_description_is_published_without_a_token() -> None:
    app = create_app(InMemoryDataplane(), host_uuid=HOST, token=TOKEN)
    doc = call(app, "GET", "/openapi.json").json()
    assert doc["openapi"].startswith("3.") and set(doc["paths"]) == {"/healthz", "/v1/rules", "/v1/apply",
                                                                      "/v1/revoke", "/v1/batch"}
    assert doc["components"]["schemas"]["Spec"]["additionalProperties"] is False
    assert doc["components"]["schemas"]["Batch"]["properties"]["changes"]["maxItems"] == MAX_BATCH
    assert set(doc["paths"]["/v1/batch"]["post"]["responses"]) == {"200", "401", "413", "421", "422"}
    json.dumps(doc)


def test_an_agent_without_any_credential_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="needs a token, or mtls"):
        create_app(InMemoryDataplane(), host_uuid=HOST, token=None)


@pytest.mark.parametrize(("case", "text", "needle"), [
    ("weak-token", 'token = "aaaaaaaaaaaaaaaaaaaa"', "the token is too weak"),
    ("short-token", 'token = "short"', "a token of at least 16 characters"),
    ("readable-token-file", 'token_file = "t.token"', "readable or writable by every user"),
    ("https-not-honoured", f'token = "{TOKEN}"\nurl = "https://127.0.0.1:9601"', "cannot be honoured"),
    ("tls-on-http", f'token = "{TOKEN}"\ntls_cert = "c.pem"\ntls_key = "t.token"', "need an https:// url"),
    ("bad-vip-range", f'token = "{TOKEN}"\nvip_ranges = ["203.0.113.7/24"]', "is not a network"),
])
def test_the_agent_command_refuses_a_bad_entry_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           case: str, text: str, needle: str) -> None:
    """What `eipflow agent` says (one line, exit 2) before it binds anything."""
    (tmp_path / "t.token").write_text(TOKEN)
    (tmp_path / "t.token").chmod(0o644)
    lines = ['[hosts."host-1"]', 'announce = "none"', *text.split("\n")]
    if "url" not in text:
        lines.append(f'url = "unix://{tmp_path / "a.sock"}"')
    path = tmp_path / "hosts.toml"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    assert main(["agent", "--config", str(path), "--host", "host-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: hosts file ") and needle in err and err.count("\n") == 1
    assert not (tmp_path / "a.sock").exists()


def test_one_file_serves_both_sides_each_checking_only_its_own_files(tmp_path: Path, ca: trustme.CA) -> None:
    """The control plane never opens the agent's key (it lives on the host), nor the agent the client's."""
    ca_pem = _pem(tmp_path, "ca.pem", ca.cert_pem)
    cert = ca.issue_cert("127.0.0.1")
    shared = entry(url="https://127.0.0.1:9600", ca_file=ca_pem, tls_cert="/on/the/host/agent.pem",
                   tls_key="/on/the/host/agent.key")
    assert parse_hosts({"hosts": {HOST: shared}})[HOST].tls  # the control plane: fine without the host's files
    with pytest.raises(InvalidHostsFile, match=r"agent\.pem: no such file"):
        parse_hosts({"hosts": {HOST: shared}}, host=HOST)  # the agent needs them
    on_host = {**shared, "tls_cert": _pem(tmp_path, "a.pem", cert.cert_chain_pems[0]),
               "tls_key": _pem(tmp_path, "a.key", cert.private_key_pem), "ca_file": "/on/the/control/plane/ca.pem"}
    assert parse_hosts({"hosts": {HOST: on_host}}, host=HOST)[HOST].tls_cert == on_host["tls_cert"]

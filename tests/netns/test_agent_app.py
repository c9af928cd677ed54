"""The agent's HTTP surface in process (no root): auth, validation, error mapping, and the HTTP backend."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from eipflow import BackendError, BackendTimeout, Eipflow, InMemoryDataplane
from eipflow.agent import HostConfig, InvalidHostsFile, load_hosts, parse_hosts
from eipflow.agent.app import MAX_BODY_BYTES, create_app
from eipflow.backends.http import HttpAgentBackend
from eipflow.values import EipSpec

TOKEN = "s3cret-token-0123456789"
HOST = "host-1"


def body(**over: object) -> dict[str, object]:
    data: dict[str, object] = {"eip_uuid": str(uuid.uuid4()), "vip": "203.0.113.100", "vm_nic_uuid": "nic-1",
                               "guest_ip": "192.0.2.10", "host_uuid": HOST, "generation": 1}
    data.update(over)
    return data


@pytest.fixture
def dataplane() -> InMemoryDataplane:
    return InMemoryDataplane()


@pytest.fixture
def socket_path() -> Iterator[str]:
    # Unix socket paths are limited to ~107 bytes: pytest's tmp_path can be longer.
    where = tempfile.mkdtemp(prefix="eipa-", dir="/tmp")
    try:
        yield f"{where}/agent.sock"
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def client(dataplane: InMemoryDataplane, socket_path: str) -> Iterator[httpx.Client]:
    """A real uvicorn serving the agent app on a Unix socket, in a thread stopped after the test."""
    app = create_app(dataplane, host_uuid=HOST, token=TOKEN)
    server = uvicorn.Server(uvicorn.Config(app, uds=socket_path, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, name="agent-under-test")
    thread.start()
    try:
        transport = httpx.HTTPTransport(uds=socket_path)
        with httpx.Client(base_url="http://agent", transport=transport,
                          headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            deadline = time.monotonic() + 10
            while not server.started and thread.is_alive() and time.monotonic() < deadline:
                time.sleep(0.02)  # bounded wait for the server to come up (not a race wait)
            assert server.started, "agent did not start"
            yield c
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_apply_list_revoke(client: httpx.Client, dataplane: InMemoryDataplane) -> None:
    """Apply puts the rule in the dataplane, /v1/rules lists it, revoke removes it."""
    b = body()
    assert client.post("/v1/apply", json=b).json() == {"ok": True, "action": "apply", "eip_uuid": b["eip_uuid"]}
    assert dataplane.rules() == [EipSpec(**b)]  # type: ignore[arg-type]
    assert client.get("/v1/rules").json() == {"host_uuid": HOST, "rules": [b]}
    assert client.post("/v1/revoke", json=b).status_code == 200
    assert dataplane.rules() == []


@pytest.mark.parametrize(
    "auth", [None, "Bearer wrong-token-0123456789", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"]
)
def test_bad_or_missing_token_is_refused_and_changes_nothing(client: httpx.Client, dataplane: InMemoryDataplane,
                                                             auth: str | None) -> None:
    """401 with a WWW-Authenticate challenge on every /v1 route; the dataplane is untouched."""
    headers = {"Authorization": auth} if auth is not None else {}
    client.headers.pop("Authorization")
    for method, path in (("POST", "/v1/apply"), ("POST", "/v1/revoke"), ("GET", "/v1/rules")):
        response = client.request(method, path, json=body() if method == "POST" else None, headers=headers)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert dataplane.calls == []


def test_healthz_needs_no_token_and_says_only_ok(client: httpx.Client) -> None:
    client.headers.pop("Authorization")
    assert client.get("/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"not json", 422),
        (b"[1, 2]", 422),
        (json.dumps({k: v for k, v in body().items() if k != "vip"}).encode(), 422),
        (json.dumps({**body(), "extra": 1}).encode(), 422),
        (json.dumps(body(vip="203.0.113.999")).encode(), 422),
        (json.dumps(body(guest_ip="192.0.2.1; nft flush ruleset")).encode(), 422),
        (json.dumps(body(eip_uuid="../../etc")).encode(), 422),
        (json.dumps(body(vm_nic_uuid="n" * 129)).encode(), 422),
        (json.dumps(body(host_uuid="host-2")).encode(), 421),
        (json.dumps({k: v for k, v in body().items() if k != "generation"}).encode(), 422),
        (json.dumps(body(generation=-1)).encode(), 422),
        (json.dumps(body(generation="7")).encode(), 422),
        (json.dumps(body(generation=True)).encode(), 422),
        (json.dumps(body(generation=2**63)).encode(), 422),
        (json.dumps({**body(), "pad": "x" * MAX_BODY_BYTES}).encode(), 413),
    ],
)
def test_malformed_bodies_are_refused_and_change_nothing(client: httpx.Client, dataplane: InMemoryDataplane,
                                                         payload: bytes, status: int) -> None:
    """Invalid JSON, missing/extra fields, bad IPs/ids -> 422; another host -> 421; oversize -> 413."""
    response = client.post("/v1/apply", content=payload, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert "error" in response.json()
    assert dataplane.calls == []


def test_stale_generations_are_409_with_the_hosts_generation_and_change_nothing(
    client: httpx.Client, dataplane: InMemoryDataplane
) -> None:
    """An apply older than the host's record, or a replayed old revoke: 409, the body says what the host has."""
    newer = body(generation=7)
    assert client.post("/v1/apply", json=newer).status_code == 200
    stale = {**newer, "generation": 5, "guest_ip": "192.0.2.99"}
    for path in ("/v1/apply", "/v1/revoke"):
        response = client.post(path, json=stale)
        assert response.status_code == 409, response.text
        data = response.json()
        assert (data["current_generation"], data["requested_generation"], data["eip_uuid"]) == (7, 5, newer["eip_uuid"])
        assert data["reason"] in ("older", "newer_rule")
    assert dataplane.rules() == [EipSpec(**newer)]  # type: ignore[arg-type]
    assert client.post("/v1/revoke", json={**newer, "generation": 8}).status_code == 200
    replay = client.post("/v1/apply", json=newer)  # a captured apply, replayed after the revoke
    assert (replay.status_code, replay.json()["reason"]) == (409, "older")
    assert dataplane.rules() == []


def test_http_backend_raises_stale_generation_on_409() -> None:
    """The control plane's side: 409 becomes StaleGeneration (never retried) with the host's generation."""
    from eipflow import StaleGeneration

    def handler(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)
        return httpx.Response(409, json={"error": "stale", "reason": "older", "eip_uuid": sent["eip_uuid"],
                                         "requested_generation": sent["generation"], "current_generation": 12})

    with backend_over(httpx.MockTransport(handler)) as backend, pytest.raises(StaleGeneration) as info:
        backend.apply(spec())
    err = info.value
    assert (err.current, err.requested, err.retryable, err.host_uuid) == (12, 1, False, HOST)


def test_backend_failures_map_to_502_and_504(client: httpx.Client, dataplane: InMemoryDataplane) -> None:
    """A failed apply is 502 with its retryable flag; an unknown outcome is 504."""
    dataplane.faults.fail("apply", retryable=False)
    response = client.post("/v1/apply", json=body())
    assert (response.status_code, response.json()["retryable"]) == (502, False)
    dataplane.faults.clear()
    dataplane.faults.fail("apply", timeout=True)
    response = client.post("/v1/apply", json=body())
    assert (response.status_code, response.json()["outcome_unknown"]) == (504, True)


# -- the HTTP backend ---------------------------------------------------------------------------
def config(**over: object) -> HostConfig:
    entry = {"url": "http://agent.invalid:9600", "token": TOKEN, "public_interface": "pub0"}
    entry.update(over)
    return parse_hosts({"hosts": {HOST: entry}})[HOST]


def backend_over(transport: httpx.BaseTransport, **over: object) -> HttpAgentBackend:
    cfg = config(**over)
    client = httpx.Client(base_url=cfg.base_url, transport=transport,
                          headers={"Authorization": f"Bearer {cfg.token}"})
    return HttpAgentBackend({HOST: cfg}, clients={HOST: client})


def spec() -> EipSpec:
    return EipSpec(**body())  # type: ignore[arg-type]


def test_http_backend_drives_the_engine_through_the_agent(client: httpx.Client, dataplane: InMemoryDataplane,
                                                          tmp_path: Path) -> None:
    """Eipflow + HttpAgentBackend + agent app: attach realizes the rule, detach removes it."""
    backend = HttpAgentBackend({HOST: config()}, clients={HOST: client})
    with Eipflow.open(f"sqlite:///{tmp_path / 'e.db'}", backend) as flow:
        eip = flow.create_eip("203.0.113.100")
        flow.attach(eip.uuid, nic="nic-1", guest_ip="192.0.2.10", vm="vm-1", host=HOST)
        assert [s.eip_uuid for s in dataplane.rules()] == [eip.uuid]
        assert backend.rules() == dataplane.rules()
        flow.detach(eip.uuid)
        assert dataplane.rules() == []


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx.ReadTimeout("slow"), BackendTimeout),
        (httpx.ConnectTimeout("slow"), BackendTimeout),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), BackendTimeout),
    ],
)
def test_http_backend_unknown_outcomes_are_timeouts(exc: Exception, expected: type[Exception]) -> None:
    """No answer, or a connection dropped after the request went out: BackendTimeout (maybe applied)."""
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    with backend_over(httpx.MockTransport(handler)) as backend, pytest.raises(expected):
        backend.apply(spec())


def test_http_backend_maps_answers() -> None:
    """Connection refused -> retryable; 401/422 -> not retryable; 502 as the agent says; 504 -> timeout."""
    answers = {
        "refused": None,
        "401": httpx.Response(401, json={"error": "missing or invalid bearer token"}),
        "422": httpx.Response(422, json={"error": "vip: bad"}),
        "502": httpx.Response(502, json={"error": "nft failed", "retryable": False}),
        "504": httpx.Response(504, json={"error": "nft timed out", "retryable": True}),
    }
    for name, answer in answers.items():
        def handler(request: httpx.Request, answer: httpx.Response | None = answer) -> httpx.Response:
            if answer is None:
                raise httpx.ConnectError("Connection refused")
            return answer

        with backend_over(httpx.MockTransport(handler)) as backend, pytest.raises(BackendError) as info:
            backend.revoke(spec())
        err = info.value
        assert isinstance(err, BackendTimeout) == (name == "504"), name
        assert err.retryable == (name in ("refused", "504")), name


def test_http_backend_unknown_host_is_not_retryable() -> None:
    backend = HttpAgentBackend({HOST: config()})
    with pytest.raises(BackendError, match="no agent") as info:
        backend.apply(EipSpec(**body(host_uuid="host-9")))  # type: ignore[arg-type]
    assert info.value.retryable is False


# -- the hosts file -----------------------------------------------------------------------------
def test_hosts_file_round_trip(tmp_path: Path) -> None:
    """Defaults merge into entries; token_file is relative to the file; repr hides the token."""
    (tmp_path / "h2.token").write_text(TOKEN + "-two\n")
    (tmp_path / "h2.token").chmod(0o600)
    path = tmp_path / "hosts.toml"
    path.write_text(
        '[defaults]\npublic_interface = "pub0"\ntimeout = 3\n\n'
        f'[hosts."host-1"]\nurl = "unix:///run/eipflow/h1.sock"\ntoken = "{TOKEN}"\nnamespace = "ns1"\n\n'
        '[hosts."host-2"]\nurl = "http://198.51.100.12:9600"\ntoken_file = "h2.token"\nannounce = "none"\n'
    )
    hosts = load_hosts(path)
    h1, h2 = hosts["host-1"], hosts["host-2"]
    assert (h1.uds, h1.base_url, h1.listen, h1.namespace, h1.timeout) == (
        "/run/eipflow/h1.sock", "http://agent", "/run/eipflow/h1.sock", "ns1", 3.0)
    assert (h2.token, h2.listen, h2.announce, h2.public_interface) == (
        TOKEN + "-two", ("198.51.100.12", 9600), "none", "pub0")
    assert TOKEN not in repr(h1)


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ({"token": TOKEN, "public_interface": "pub0"}, "url is required"),
        ({"url": "ftp://x", "token": TOKEN, "public_interface": "pub0"}, "must start with"),
        ({"url": "http://x", "token": "short", "public_interface": "pub0"}, "at least 16"),
        ({"url": "http://x", "token": TOKEN}, "public_interface is required"),
        ({"url": "http://x", "token": TOKEN, "public_interface": "bad name!"}, "not an interface"),
        ({"url": "http://x", "token": TOKEN, "public_interface": "p", "timeout": -1}, "number of seconds"),
        ({"url": "http://x", "token": TOKEN, "public_interface": "p", "colour": "red"}, "unknown key"),
    ],
)
def test_hosts_file_errors_name_the_problem(entry: dict[str, object], why: str) -> None:
    with pytest.raises(InvalidHostsFile, match=why):
        parse_hosts({"hosts": {HOST: entry}})

"""The agent's HTTP surface in process (no root): auth, validation, error mapping, and the HTTP backend."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from eipflow import AddressNotAllowed, BackendError, BackendTimeout, Eipflow, InMemoryDataplane, StaleGeneration
from eipflow.agent import HostConfig, InvalidHostsFile, load_hosts, parse_hosts
from eipflow.agent.app import MAX_BATCH_BODY_BYTES, MAX_BODY_BYTES, create_app
from eipflow.backends.batch import MAX_BATCH, Change
from eipflow.backends.http import HttpAgentBackend
from eipflow.values import EipSpec
from tests._support import serving

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
    """The agent app over the in-memory dataplane, really served (see :func:`serving`)."""
    with serving(create_app(dataplane, host_uuid=HOST, token=TOKEN), socket_path, TOKEN) as c:
        yield c


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


# -- POST /v1/batch -----------------------------------------------------------------------------
def change(action: str = "apply", **over: object) -> dict[str, object]:
    return {"action": action, "spec": body(**over)}


def test_batch_judges_each_change_and_answers_one_result_each(client: httpx.Client,
                                                              dataplane: InMemoryDataplane) -> None:
    """done, refused (with the 409 body's fields), failed, failed_permanent and unknown, in the batch's order."""
    held = body(generation=7)
    assert client.post("/v1/apply", json=held).status_code == 200
    ok, failing, permanent, lost, revoked = (body(vip=f"203.0.113.{n}", guest_ip=f"192.0.2.{n}") for n in range(1, 6))
    assert client.post("/v1/apply", json=revoked).status_code == 200
    dataplane.faults.fail("apply", eip_uuid=str(failing["eip_uuid"]))
    dataplane.faults.fail("apply", eip_uuid=str(permanent["eip_uuid"]), retryable=False)
    dataplane.faults.fail("apply", eip_uuid=str(lost["eip_uuid"]), timeout=True)
    batch = [{"action": "apply", "spec": ok}, {"action": "revoke", "spec": {**held, "generation": 5}},
             {"action": "apply", "spec": failing}, {"action": "apply", "spec": permanent},
             {"action": "apply", "spec": lost}, {"action": "revoke", "spec": revoked}]
    response = client.post("/v1/batch", json={"host_uuid": HOST, "changes": batch})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["done", "refused", "failed", "failed_permanent", "unknown", "done"]
    assert [r["eip_uuid"] for r in results] == [c["spec"]["eip_uuid"] for c in batch]  # type: ignore[index]
    refused = results[1]
    assert (refused["reason"], refused["requested_generation"], refused["current_generation"]) == ("newer_rule", 5, 7)
    assert (results[2]["retryable"], results[3]["retryable"], results[4]["outcome_unknown"]) == (True, False, True)
    assert sorted(s.eip_uuid for s in dataplane.rules()) == sorted([held["eip_uuid"], ok["eip_uuid"],
                                                                     lost["eip_uuid"]])  # lost: applied, answer lost


def test_batch_outside_vip_ranges_fails_that_change_alone(socket_path: str) -> None:
    """The host's vip_ranges refuse one change (failed_permanent, address_not_allowed); the others go through."""
    dataplane = InMemoryDataplane()
    app = create_app(dataplane, host_uuid=HOST, token=TOKEN, vip_ranges=["203.0.113.0/24"])
    with serving(app, socket_path, TOKEN) as c:
        inside, outside = body(), body(vip="198.51.100.7", guest_ip="192.0.2.20")
        response = c.post("/v1/batch", json={"changes": [{"action": "apply", "spec": outside},
                                                         {"action": "apply", "spec": inside}]})
    first, second = response.json()["results"]
    assert (first["status"], first["field"], first["address_not_allowed"], second["status"]) == (
        "failed_permanent", "vip", True, "done")
    assert [s.eip_uuid for s in dataplane.rules()] == [inside["eip_uuid"]]


def test_oversized_batches_are_413_and_change_nothing(client: httpx.Client, dataplane: InMemoryDataplane) -> None:
    """More than MAX_BATCH changes, or a body over MAX_BATCH_BODY_BYTES: 413 with the limit, nothing applied."""
    many = [change(eip_uuid=str(uuid.uuid4())) for _ in range(MAX_BATCH + 1)]
    response = client.post("/v1/batch", json={"changes": many})
    assert response.status_code == 413, response.text
    assert (response.json()["max_changes"], response.json()["changes"]) == (MAX_BATCH, MAX_BATCH + 1)
    padded = json.dumps({"changes": [change()], "pad": "x" * MAX_BATCH_BODY_BYTES}).encode()
    response = client.post("/v1/batch", content=padded, headers={"Content-Type": "application/json"})
    assert (response.status_code, response.json()["limit"]) == (413, MAX_BATCH_BODY_BYTES)
    assert dataplane.calls == []
    assert client.post("/v1/batch", json={"changes": many[:MAX_BATCH]}).status_code == 200  # the bound itself is fine
    assert len(dataplane.rules()) == MAX_BATCH


@pytest.mark.parametrize(
    ("changes", "status", "index", "field"),
    [
        ([change(), change(vip="203.0.113.999")], 422, 1, "vip"),
        ([change(), change(generation="7")], 422, 1, "generation"),
        ([change(), change("delete")], 422, 1, "action"),
        ([change(), {"action": "apply"}], 422, 1, None),
        ([change(), {"action": "apply", "spec": body(), "extra": 1}], 422, 1, None),
        ([change(), change(guest_ip="127.0.0.1")], 422, 1, "guest_ip"),
        ([change(), "apply"], 422, 1, None),
        ([change(eip_uuid="6f1c0d1e-8a52-4c3e-9d0b-1f2e3a4b5c6d"),
          change("revoke", eip_uuid="6f1c0d1e-8a52-4c3e-9d0b-1f2e3a4b5c6d")], 422, 1, "eip_uuid"),
        ([change(), change(host_uuid="host-2")], 421, 1, None),
    ],
)
def test_malformed_batch_entries_are_refused_naming_the_entry_and_change_nothing(
    client: httpx.Client, dataplane: InMemoryDataplane, changes: list[object], status: int, index: int,
    field: str | None,
) -> None:
    """One bad entry refuses the whole batch with the entry's index (and field): the good entries are not applied."""
    response = client.post("/v1/batch", json={"changes": changes})
    assert response.status_code == status, response.text
    data = response.json()
    assert data["index"] == index and f"changes[{index}]" in data["error"]
    assert data.get("field") == field
    assert dataplane.calls == []


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"not json", 422),
        (b"[]", 422),
        (json.dumps({"changes": {}}).encode(), 422),
        (json.dumps({"change": []}).encode(), 422),
        (json.dumps({"changes": [], "host_uuid": "host-2"}).encode(), 421),
        (json.dumps({"changes": [], "extra": 1}).encode(), 422),
    ],
)
def test_malformed_batch_bodies_are_refused(client: httpx.Client, dataplane: InMemoryDataplane, payload: bytes,
                                            status: int) -> None:
    response = client.post("/v1/batch", content=payload, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert "error" in response.json()
    assert dataplane.calls == []


def test_batch_needs_the_token(client: httpx.Client, dataplane: InMemoryDataplane) -> None:
    client.headers.pop("Authorization")
    assert client.post("/v1/batch", json={"changes": [change()]}).status_code == 401
    assert dataplane.calls == []


# -- the HTTP backend's batches -----------------------------------------------------------------
def test_http_backend_sends_a_batch_in_one_request_and_maps_each_result(client: httpx.Client,
                                                                       dataplane: InMemoryDataplane) -> None:
    """Through the real agent: one POST for the batch; refused -> StaleGeneration with the host's generation,
    failed -> retryable BackendError, failed_permanent -> not retryable, unknown -> BackendTimeout."""
    sent: list[str] = []
    client.event_hooks["request"].append(lambda request: sent.append(request.url.path))
    backend = HttpAgentBackend({HOST: config()}, clients={HOST: client})
    held = spec_of(generation=9)
    backend.apply(held)
    specs = [spec_of(vip=f"203.0.113.{n}", guest_ip=f"192.0.2.{n}") for n in range(1, 5)]
    dataplane.faults.fail("revoke", eip_uuid=specs[1].eip_uuid)
    dataplane.faults.fail("apply", eip_uuid=specs[2].eip_uuid, retryable=False)
    dataplane.faults.fail("apply", eip_uuid=specs[3].eip_uuid, timeout=True)
    changes = [Change("apply", specs[0]), Change("apply", dataclasses.replace(held, generation=4)),
               Change("revoke", specs[1]), Change("apply", specs[2]), Change("apply", specs[3])]
    sent.clear()
    results = backend.apply_changes(HOST, changes)
    assert sent == ["/v1/batch"]
    assert [r.status for r in results] == ["done", "refused", "failed", "failed_permanent", "unknown"]
    stale = results[1].error
    assert isinstance(stale, StaleGeneration)
    assert (stale.eip_uuid, stale.host_uuid, stale.requested, stale.current, stale.reason) == (
        held.eip_uuid, HOST, 4, 9, "older")
    assert [type(r.error) for r in results[2:]] == [BackendError, BackendError, BackendTimeout]
    assert [r.error.retryable for r in results[2:] if r.error is not None] == [True, False, True]


def _batch_answer(request: httpx.Request, status: str = "done") -> httpx.Response:
    sent = json.loads(request.content)
    return httpx.Response(200, json={"host_uuid": HOST, "results": [
        {"status": status, "action": c["action"], "eip_uuid": c["spec"]["eip_uuid"]} for c in sent["changes"]]})


def test_http_backend_sends_at_most_max_batch_changes_a_request() -> None:
    sizes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sizes.append(len(json.loads(request.content)["changes"]))
        return _batch_answer(request)

    with backend_over(httpx.MockTransport(handler)) as backend:
        results = backend.apply_changes(HOST, [Change("apply", spec()) for _ in range(2 * MAX_BATCH + 1)])
    assert sizes == [MAX_BATCH, MAX_BATCH, 1]
    assert len(results) == 2 * MAX_BATCH + 1 and all(r.ok for r in results)


@pytest.mark.parametrize(
    ("fault", "status", "error"),
    [
        (httpx.ReadTimeout("slow"), "unknown", BackendTimeout),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), "unknown", BackendTimeout),
        (httpx.ConnectError("Connection refused"), "failed", BackendError),
        (httpx.Response(504, json={"error": "nft timed out"}), "unknown", BackendTimeout),
        (httpx.Response(502, json={"error": "nft failed", "retryable": False}), "failed_permanent", BackendError),
        (httpx.Response(401, json={"error": "missing or invalid bearer token"}), "failed_permanent", BackendError),
        (httpx.Response(200, json={"results": []}), "unknown", BackendTimeout),  # an answer that does not fit
        (httpx.Response(200, text="<html>"), "unknown", BackendTimeout),
    ],
)
def test_http_backend_a_batch_that_fails_whole_gives_every_change_that_result(
    fault: Exception | httpx.Response, status: str, error: type[Exception]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(fault, Exception):
            raise fault
        return fault

    with backend_over(httpx.MockTransport(handler)) as backend:
        results = backend.apply_changes(HOST, [Change("apply", spec()), Change("revoke", spec())])
    assert [r.status for r in results] == [status, status]
    assert all(type(r.error) is error for r in results)


def test_http_backend_falls_back_to_one_request_a_change_for_an_old_agent() -> None:
    """An agent without /v1/batch (404) gets single calls, and is not asked for a batch again."""
    paths: list[str] = []
    applied: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        if request.url.path == "/v1/batch":
            return httpx.Response(404, text="Not Found")  # what Starlette answers for an unknown route
        sent = json.loads(request.content)
        applied.append(sent["eip_uuid"])
        return httpx.Response(200, json={"ok": True, "action": request.url.path[4:], "eip_uuid": sent["eip_uuid"]})

    with backend_over(httpx.MockTransport(handler)) as backend:
        first = [Change("apply", spec()), Change("revoke", spec())]
        assert [r.status for r in backend.apply_changes(HOST, first)] == ["done", "done"]
        assert paths == ["/v1/batch", "/v1/apply", "/v1/revoke"]
        again = [Change("apply", spec())]
        assert [r.status for r in backend.apply_changes(HOST, again)] == ["done"]
    assert paths[3:] == ["/v1/apply"]
    assert applied == [c.spec.eip_uuid for c in first + again]


def test_http_backend_goes_one_by_one_when_the_agent_refuses_a_batch_for_one_entry() -> None:
    """A 422 naming one entry means nothing was applied: each change is sent alone, so that one fails alone."""
    bad = spec()

    def handler(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)
        if request.url.path == "/v1/batch":
            index = [c["spec"]["eip_uuid"] for c in sent["changes"]].index(bad.eip_uuid)
            return httpx.Response(422, json={"error": f"changes[{index}].spec.vip: refused", "index": index,
                                             "field": "vip"})
        if sent["eip_uuid"] == bad.eip_uuid:
            return httpx.Response(422, json={"error": "vip: refused", "field": "vip"})
        return httpx.Response(200, json={"ok": True})

    with backend_over(httpx.MockTransport(handler)) as backend:
        results = backend.apply_changes(HOST, [Change("apply", spec()), Change("apply", bad), Change("apply", spec())])
    assert [r.status for r in results] == ["done", "failed_permanent", "done"]


def test_http_backend_maps_an_address_refusal_in_a_batch_to_address_not_allowed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)["changes"][0]
        return httpx.Response(200, json={"results": [{
            "status": "failed_permanent", "action": "apply", "eip_uuid": sent["spec"]["eip_uuid"], "error": "no",
            "retryable": False, "field": "vip", "reason": "outside vip_ranges", "address_not_allowed": True}]})

    s = spec()
    with backend_over(httpx.MockTransport(handler)) as backend:
        [result] = backend.apply_changes(HOST, [Change("apply", s)])
    assert isinstance(result.error, AddressNotAllowed)
    assert (result.error.field, result.error.address, result.error.reason) == ("vip", s.vip, "outside vip_ranges")


def spec_of(**over: object) -> EipSpec:
    return EipSpec(**body(**over))  # type: ignore[arg-type]

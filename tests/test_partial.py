"""Partial failure: ``reconcile`` and ``dataplane list`` go on when one host's agent cannot be reached.

Two stand-in agents (the agent's wire format over ``httpx.MockTransport``) on one in-memory dataplane;
host-2's client is refused at connect, as a dead agent's would be. The CLI builds its backend from
:func:`factory`. (The real agent app and the real HTTP client meet in tests/netns/.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from eipflow import Eipflow, InMemoryDataplane
from eipflow.agent import parse_hosts
from eipflow.backends.http import HttpAgentBackend
from eipflow.cli import EXIT_PARTIAL, main
from eipflow.values import EipSpec

TOKEN = "partial-test-token-8f3a1c"
HOSTS = ("host-1", "host-2")
DATAPLANE = InMemoryDataplane()
DOWN: set[str] = set()


def _refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused")


def _agent(host: str) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/rules":
            return httpx.Response(200, json={"host_uuid": host, "rules": [asdict(s) for s in DATAPLANE.rules(host)]})
        if request.url.path not in ("/v1/apply", "/v1/revoke"):
            return httpx.Response(404, text="Not Found")  # a stand-in without /v1/batch: as an older agent
        spec = EipSpec(**json.loads(request.content))
        getattr(DATAPLANE, request.url.path.removeprefix("/v1/"))(spec)
        return httpx.Response(200, json={"ok": True})

    return httpx.MockTransport(handle)


def factory() -> HttpAgentBackend:
    """``--backend tests.test_partial:factory``: host-N's agent, or a refused connection for hosts in DOWN."""
    config = parse_hosts({"hosts": {h: {"url": f"http://{h}.invalid:9600", "token": TOKEN, "announce": "none"}
                                    for h in HOSTS}})
    clients = {h: httpx.Client(base_url="http://agent", transport=httpx.MockTransport(_refused) if h in DOWN
                               else _agent(h)) for h in HOSTS}
    return HttpAgentBackend(config, clients=clients)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """One EIP attached on each host; then host-2's agent goes away."""
    global DATAPLANE
    DATAPLANE = InMemoryDataplane()
    DOWN.clear()
    url = f"sqlite:///{tmp_path / 'e.db'}"
    backend = factory()
    eips = {}
    with Eipflow.open(url, backend) as flow:
        for n, host in enumerate(HOSTS, start=1):
            eip = flow.create_eip(f"203.0.113.{n}")
            flow.attach(eip.uuid, nic=f"nic-{n}", guest_ip=f"192.0.2.{n}", vm=f"vm-{n}", host=host)
            eips[host] = eip.uuid
    backend.close()
    DOWN.add("host-2")
    yield url, eips
    DOWN.clear()


def cli(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, Any, str]:
    code = main(["--db", url, "--backend", "tests.test_partial:factory", "--json", *args])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out else None, err


def state_of(url: str) -> tuple[Any, ...]:
    with Eipflow.open(url, InMemoryDataplane()) as flow:
        return ([e.to_dict() for e in flow.list_eips()], [r.to_dict() for r in flow.store.all_history()],
                [w.to_dict() for w in flow.work_items()])


def test_dataplane_list_reports_the_reachable_hosts_and_exits_partial(
    capsys: pytest.CaptureFixture[str], world: tuple[str, dict[str, str]]
) -> None:
    url, eips = world
    code, rules, err = cli(capsys, url, "dataplane", "list")
    assert code == EXIT_PARTIAL == 6
    assert [(r["host_uuid"], r["eip_uuid"]) for r in rules] == [("host-1", eips["host-1"])]
    assert "error: host host-2: rules: cannot reach agent of host host-2" in err
    assert "partial: 1 of 2 host(s) could not be reached (host-2)" in err


def test_reconcile_repairs_the_reachable_host_and_leaves_the_unreachable_one_alone(
    capsys: pytest.CaptureFixture[str], world: tuple[str, dict[str, str]]
) -> None:
    """host-1 lost its rule (re-applied); host-2 cannot be asked: its EIP, history and work stay as they were."""
    url, eips = world
    DATAPLANE.drop_rule("host-1", eips["host-1"])
    rows_before, history_before, _ = state_of(url)
    code, report, err = cli(capsys, url, "reconcile")
    assert code == EXIT_PARTIAL
    assert report["hosts"] == {"host-1": {"reachable": True, "error": None},
                               "host-2": {"reachable": False, "error": report["hosts"]["host-2"]["error"]}}
    assert "cannot reach agent of host host-2" in report["hosts"]["host-2"]["error"]
    assert [(o["kind"], o["eip_uuid"], o["outcome"]) for o in report["outcomes"]] == [
        ("reapply_missing", eips["host-1"], "done")]
    assert [r.eip_uuid for r in DATAPLANE.rules("host-1")] == [eips["host-1"]]
    rows, history, _ = state_of(url)
    row2 = next(r for r in rows if r["uuid"] == eips["host-2"])
    assert row2 == next(r for r in rows_before if r["uuid"] == eips["host-2"])
    assert [h for h in history if h["eip_uuid"] == eips["host-2"]] == [
        h for h in history_before if h["eip_uuid"] == eips["host-2"]]
    assert "host-2" in err and "partial" in err


def test_all_hosts_reachable_is_a_clean_zero(capsys: pytest.CaptureFixture[str],
                                             world: tuple[str, dict[str, str]]) -> None:
    url, _ = world
    DOWN.clear()
    code, report, err = cli(capsys, url, "reconcile")
    assert (code, report["planned"], err) == (0, [], "")
    assert all(h["reachable"] for h in report["hosts"].values())
    code, rules, _ = cli(capsys, url, "dataplane", "list")
    assert code == 0 and len(rules) == 2

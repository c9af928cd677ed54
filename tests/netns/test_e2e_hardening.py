"""Hardening end to end: real ``eipflow agent`` processes on nftables in network namespaces.

An agent started with only its own token; its socket's mode; the issue's zone-ID attack sent straight
to a real agent (refused, kernel untouched); and ``eipflow reconcile`` / ``dataplane list`` carrying on
when one agent is dead (exit 6), repairing the other host.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from eipflow import Eipflow
from eipflow.agent.lab import GUEST_IP, Lab, Topology
from eipflow.agent.server import SOCKET_MODE
from eipflow.backends.http import HttpAgentBackend, _UnixTransport

pytestmark = [pytest.mark.netns, pytest.mark.slow]

VIP = "203.0.113.100"


@pytest.fixture
def topo(lab: Lab) -> Iterator[Topology]:
    workdir = Path(tempfile.mkdtemp(prefix="eiph-", dir="/tmp"))  # Unix socket paths must stay short
    try:
        t = Topology(lab, workdir)
        t.plug_guest("host-1")
        yield t
    finally:
        lab.close()
        shutil.rmtree(workdir, ignore_errors=True)


def own_config(topo: Topology, host: str) -> Path:
    """``host``'s agent file: its own entry with its token; the other host without any."""
    lines = ["[defaults]", 'public_interface = "pub0"', 'announce = "address"', ""]
    for name in topo.hosts:
        lines += [f'[hosts."{name}"]', f'url = "unix://{topo.socket(name)}"']
        if name == host:
            lines.append(f'token = "{topo.token}"')
        lines.append("")
    path = topo.workdir / f"{host}.toml"
    path.write_text("\n".join(lines))
    path.chmod(0o600)
    return path


def raw(topo: Topology, host: str) -> httpx.Client:
    return httpx.Client(base_url="http://agent", transport=_UnixTransport(str(topo.socket(host))),
                        headers={"Authorization": f"Bearer {topo.token}"}, trust_env=False)


def cli(topo: Topology, db: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EIPFLOW_HOSTS_FILE": str(topo.hosts_file)}
    return subprocess.run([sys.executable, "-m", "eipflow", "--db", db, "--backend", "eipflow.backends.http:factory",
                           "--json", *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def test_an_agent_with_only_its_own_token_serves_and_its_socket_is_private(topo: Topology, tmp_path: Path) -> None:
    topo.start_agent("host-1", config=own_config(topo, "host-1"))
    assert stat.S_IMODE(topo.socket("host-1").stat().st_mode) == SOCKET_MODE == 0o660
    with Eipflow.open(f"sqlite:///{tmp_path / 'e.db'}", HttpAgentBackend.from_file(topo.hosts_file)) as flow:
        eip = flow.create_eip(VIP)
        assert flow.attach(eip.uuid, nic="nic-1", guest_ip=GUEST_IP, vm="vm-1", host="host-1").state == "attached"
        flow.backend.close()  # type: ignore[attr-defined]
    assert len(topo.eip_rules("host-1")) == 2


@pytest.mark.parametrize("guest", ["fe80::1%pub0", "fe80::1%x;flush ruleset", "fd00::5%a"])
def test_zone_ids_sent_straight_to_a_real_agent_are_refused_and_change_nothing(topo: Topology, guest: str) -> None:
    """The issue's attack, bypassing the engine: 422, and the kernel's ruleset and addresses are as they were."""
    topo.start_agent("host-1")
    ns = topo.hosts["host-1"]

    def addresses() -> set[tuple[str, str, int]]:
        # Which addresses, not their state: a fresh namespace's IPv6 addresses finish DAD (flags and
        # lifetimes change) while the test runs.
        links = json.loads(topo.lab.run(ns, "ip", "-j", "addr", "show").stdout)
        return {(link["ifname"], a["local"], a["prefixlen"]) for link in links for a in link.get("addr_info", [])}

    before = (topo.lab.ruleset(ns), addresses())
    body = {"eip_uuid": "6f1c0d1e-8a52-4c3e-9d0b-1f2e3a4b5c6d", "vip": "2001:db8::100", "vm_nic_uuid": "nic-1",
            "guest_ip": guest, "host_uuid": "host-1", "generation": 1}
    with raw(topo, "host-1") as client:
        answer = client.post("/v1/apply", json=body)
        assert answer.status_code == 422 and "zone ID" in answer.json()["error"]
        assert client.post("/v1/apply", json={**body, "guest_ip": "fd00::5", "vip": "2001:db8::100%x"}
                           ).status_code == 422
    assert (topo.lab.ruleset(ns), addresses()) == before


def test_reconcile_and_dataplane_list_carry_on_past_a_dead_agent(topo: Topology, tmp_path: Path) -> None:
    """host-2's agent is killed; host-1 lost its rules (flushed by hand): reconcile re-applies them on host-1,
    reports host-2 as unreachable, leaves its EIP as it was, and exits 6; so does dataplane list."""
    for host in topo.hosts:
        topo.start_agent(host)
    db = f"sqlite:///{tmp_path / 'e.db'}"
    uuids = {}
    for n, host in enumerate(topo.hosts, start=1):
        made = json.loads(cli(topo, db, "eip", "create", "--vip", f"203.0.113.{100 + n}").stdout)
        done = cli(topo, db, "attach", made["uuid"], "--nic", f"nic-{n}", "--guest-ip", f"192.0.2.{10 + n}",
                   "--vm", f"vm-{n}", "--host", host)
        assert done.returncode == 0, done.stderr
        uuids[host] = made["uuid"]
    topo.kill_agent("host-2")
    topo.lab.run(topo.hosts["host-1"], "nft", "flush", "table", "inet", "eipflow")
    host2_rules = topo.eip_rules("host-2")
    before = json.loads(cli(topo, db, "eip", "show", uuids["host-2"]).stdout)

    done = cli(topo, db, "reconcile")
    assert done.returncode == 6, done.stderr
    report = json.loads(done.stdout)
    assert report["hosts"]["host-1"] == {"reachable": True, "error": None}
    assert report["hosts"]["host-2"]["reachable"] is False
    assert [(o["kind"], o["eip_uuid"], o["outcome"]) for o in report["outcomes"]] == [
        ("reapply_missing", uuids["host-1"], "done")]
    assert "error: partial: 1 of 2 host(s) could not be reached (host-2)" in done.stderr
    assert len(topo.eip_rules("host-1")) == 2
    assert topo.eip_rules("host-2") == host2_rules  # nobody touched the dead agent's host
    assert json.loads(cli(topo, db, "eip", "show", uuids["host-2"]).stdout) == before

    listed = cli(topo, db, "dataplane", "list")
    assert listed.returncode == 6
    assert [r["host_uuid"] for r in json.loads(listed.stdout)] == ["host-1"]

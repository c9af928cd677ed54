"""End to end with real packets: engine -> HttpAgentBackend -> ``eipflow agent`` -> nftables -> TCP.

Every test builds its own topology (see :class:`eipflow.agent.lab.Topology`): an "outside"
namespace with a client, two host namespaces each running an agent, and a guest behind host-1.
"Slowed" applies are held by the agent's hold FIFO *after* nft committed and *before* it answers:
the test's ``open(fifo, "w")`` returns exactly when the agent is there, so nothing sleeps.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from eipflow import AttachFailed, Eipflow
from eipflow.agent.lab import GUEST_IP, OUTSIDE_IP, Lab, Topology
from eipflow.backends.http import HttpAgentBackend
from eipflow.clock import ManualClock
from eipflow.values import Eip

pytestmark = [pytest.mark.netns, pytest.mark.slow]

VIP = "203.0.113.100"
PORT = 8080
VM, NIC = "vm-1", "nic-1"


@pytest.fixture
def topo(lab: Lab) -> Iterator[Topology]:
    # Unix socket paths must stay short (~107 bytes): pytest's tmp_path may not be.
    workdir = Path(tempfile.mkdtemp(prefix="eipn-", dir="/tmp"))
    try:
        t = Topology(lab, workdir)
        t.plug_guest("host-1")
        t.serve(t.guest, "guest", PORT)
        yield t
    finally:
        lab.close()  # processes first: they hold the sockets in workdir
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def open_flow(topo: Topology, tmp_path: Path) -> Iterator[Callable[..., Eipflow]]:
    opened: list[tuple[Eipflow, HttpAgentBackend]] = []

    def make(**kwargs: Any) -> Eipflow:
        backend = HttpAgentBackend.from_file(topo.hosts_file)
        flow = Eipflow.open(f"sqlite:///{tmp_path / 'eipflow.db'}", backend, owner="e2e", **kwargs)
        opened.append((flow, backend))
        return flow

    yield make
    for flow, backend in opened:
        flow.close()
        backend.close()


class HoldFifo:
    """The test's end of an agent's hold FIFO."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)
        self._fd: int | None = None

    def wait_entered(self, timeout: float = 30.0) -> None:
        """Return once the agent sits in its hold (its apply has committed, its answer has not gone)."""
        got: dict[str, int] = {}
        opener = threading.Thread(target=lambda: got.setdefault("fd", os.open(self.path, os.O_WRONLY)))
        opener.start()
        opener.join(timeout)
        if opener.is_alive():
            # Nobody came: open the read side ourselves so the opener thread can finish, then fail.
            reader = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            opener.join()
            os.close(got["fd"])
            os.close(reader)
            raise AssertionError(f"no apply reached the agent's hold within {timeout}s")
        self._fd = got["fd"]

    def release(self) -> None:
        """Let the held apply answer (its read sees end-of-file)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class InThread:
    """Run one call in a thread; ``result()`` joins it and returns its value or raises its error."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._out: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, args=(fn,), name="attach")
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self._out["error"] = exc

    def result(self, timeout: float = 60.0) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the call did not return"
        if "error" in self._out:
            raise self._out["error"]
        return self._out["value"]


def attach(flow: Eipflow, eip: Eip, host: str = "host-1") -> Eip:
    return flow.attach(eip.uuid, nic=NIC, guest_ip=GUEST_IP, vm=VM, host=host)


def held_attach(
    topo: Topology, open_flow: Callable[..., Eipflow], **flow_options: Any
) -> tuple[HoldFifo, Eipflow, Eip, InThread]:
    """Agents on both hosts, host-1's held; an attach in a thread, returned once its apply is held."""
    hold = HoldFifo(topo.workdir / "hold")
    topo.start_agent("host-1", hold_fifo=hold.path)
    topo.start_agent("host-2")
    flow = open_flow(**flow_options)
    eip = flow.create_eip(VIP)
    call = InThread(lambda: attach(flow, eip))
    hold.wait_entered()
    return hold, flow, eip, call


def reaches_guest(topo: Topology, vip: str = VIP) -> str | None:
    """Connect from outside to ``vip``; the guest's greeting, or ``None`` when the connection fails."""
    ok, output = topo.lab.fetch(topo.outside, vip, PORT, timeout=1.5)
    return output if ok else None


def dnat_packets(topo: Topology, host: str) -> int:
    """Packets the host's DNAT rules have counted."""
    return sum(int(m) for line in topo.eip_rules(host) if "dnat" in line
               for m in re.findall(r"counter packets (\d+)", line))


def assert_no_eipflow_rules(topo: Topology) -> None:
    for host in topo.hosts:
        assert topo.eip_rules(host) == [], f"{host} still has eipflow rules"
        addrs = topo.lab.run(topo.hosts[host], "ip", "-j", "addr", "show", "dev", "pub0").stdout
        assert VIP not in addrs, f"{host} still answers for {VIP}"


# -- the tests ------------------------------------------------------------------------------------
def test_attach_moves_packets_both_ways_then_detach_and_delete_empty_the_rulesets(
    topo: Topology, open_flow: Callable[..., Eipflow]
) -> None:
    """Attach: outside reaches the guest (which sees the client's address); the guest leaves as the VIP.
    Detach and delete leave no eipflow rule and no VIP address anywhere."""
    for host in topo.hosts:
        topo.start_agent(host)
    flow = open_flow()
    eip = flow.create_eip(VIP)
    assert reaches_guest(topo) is None  # nothing answers for the VIP yet

    assert attach(flow, eip).state == "attached"
    greeting = reaches_guest(topo)
    assert greeting is not None and f"hello from guest; you are {OUTSIDE_IP}" in greeting
    assert len(topo.eip_rules("host-1")) == 2 and topo.eip_rules("host-2") == []
    assert [(s.eip_uuid, s.host_uuid) for s in flow.dataplane()] == [(eip.uuid, "host-1")]

    # Egress: the guest connects out; the outside server sees the VIP, not the private address.
    server = topo.serve(topo.outside, "outside", 8081)
    ok, output = topo.lab.fetch(topo.guest, OUTSIDE_IP, 8081)
    assert ok, output
    assert server.stdout is not None
    assert server.stdout.readline().decode().strip() == f"peer {VIP}"
    assert f"you are {VIP}" in output

    assert flow.detach(eip.uuid).state == "detached"
    assert_no_eipflow_rules(topo)
    assert reaches_guest(topo) is None

    attach(flow, eip)
    assert reaches_guest(topo) is not None
    assert flow.delete_eip(eip.uuid).state == "deleted"
    assert_no_eipflow_rules(topo)
    assert flow.dataplane() == []


def test_vm_stop_during_a_slowed_apply_leaves_no_rule_anywhere(
    topo: Topology, open_flow: Callable[..., Eipflow]
) -> None:
    """S3 on a real kernel: the rule is in host-1's ruleset while the apply is held; the VM stops;
    once the apply returns, the runner revokes it. No rule on either host; connections fail."""
    hold, flow, eip, call = held_attach(topo, open_flow)
    try:
        assert len(topo.eip_rules("host-1")) == 2  # applied in the kernel, not yet acknowledged
        flow.vm_stopped(VM)
    finally:
        hold.release()
    assert call.result().state == "released"
    assert flow.get_eip(eip.uuid).vm_nic_uuid == NIC  # the binding is kept for VM start
    assert_no_eipflow_rules(topo)
    assert reaches_guest(topo) is None

    topo.plug_guest("host-2")
    flow.vm_started(VM, "host-2")  # and it comes back on the other host
    assert reaches_guest(topo) is not None
    assert topo.eip_rules("host-1") == [] and len(topo.eip_rules("host-2")) == 2


def test_migration_during_apply_ends_with_traffic_through_host2_only(
    topo: Topology, open_flow: Callable[..., Eipflow]
) -> None:
    """S6: the VM migrates while host-1's apply is held; afterwards host-1 holds nothing and the
    connection is counted by host-2's DNAT rule."""
    hold, flow, _eip, call = held_attach(topo, open_flow)
    try:
        topo.plug_guest("host-2")  # the VM moved ...
        flow.vm_migrated(VM, "host-2")  # ... and the platform says so while the apply is in flight
    finally:
        hold.release()
    final = call.result()
    assert (final.state, final.applied_host) == ("attached", "host-2")
    assert topo.eip_rules("host-1") == []
    assert len(topo.eip_rules("host-2")) == 2
    greeting = reaches_guest(topo)
    assert greeting is not None and f"you are {OUTSIDE_IP}" in greeting
    assert dnat_packets(topo, "host-2") > 0
    assert [s.host_uuid for s in flow.dataplane()] == ["host-2"]


def test_migration_after_traffic_moves_the_vip_at_once(topo: Topology, open_flow: Callable[..., Eipflow]) -> None:
    """The outside client cached host-1's MAC for the VIP; host-2's gratuitous ARP moves it, so the
    first connection after the migration already goes through host-2."""
    for host in topo.hosts:
        topo.start_agent(host)
    flow = open_flow()
    eip = flow.create_eip(VIP)
    attach(flow, eip)
    assert reaches_guest(topo) is not None
    topo.plug_guest("host-2")
    [moved] = flow.vm_migrated(VM, "host-2")
    assert (moved.state, moved.applied_host) == ("attached", "host-2")
    before = dnat_packets(topo, "host-2")
    assert reaches_guest(topo) is not None
    assert dnat_packets(topo, "host-2") > before
    assert topo.eip_rules("host-1") == []


def test_agent_refuses_bad_tokens_and_malformed_bodies(topo: Topology) -> None:
    """A real agent: wrong or missing token -> 401, malformed body -> 422; the ruleset never changes."""
    topo.start_agent("host-1")
    spec = {"eip_uuid": "5c8e7a4e-8f1d-4f53-9a55-2d7f0e6f1a10", "vip": VIP, "vm_nic_uuid": NIC,
            "guest_ip": GUEST_IP, "host_uuid": "host-1", "generation": 1}
    before = topo.lab.ruleset(topo.hosts["host-1"])
    transport = httpx.HTTPTransport(uds=str(topo.socket("host-1")))
    with httpx.Client(base_url="http://agent", transport=transport, timeout=10) as client:
        for headers in ({}, {"Authorization": "Bearer " + "0" * 32}, {"Authorization": topo.token}):
            assert client.post("/v1/apply", json=spec, headers=headers).status_code == 401
            assert client.get("/v1/rules", headers=headers).status_code == 401
        good = {"Authorization": f"Bearer {topo.token}"}
        for bad in ({**spec, "vip": "203.0.113.300"}, {**spec, "guest_ip": "192.0.2.10 accept"}, {"vip": VIP},
                    {**spec, "vm_nic_uuid": "x" * 500}):
            assert client.post("/v1/apply", json=bad, headers=good).status_code == 422
        assert client.post("/v1/apply", content=b"{", headers=good).status_code == 422
        assert topo.lab.ruleset(topo.hosts["host-1"]) == before
        assert client.get("/v1/rules", headers=good).json() == {"host_uuid": "host-1", "rules": []}
        # and the right token works, against the kernel
        assert client.post("/v1/apply", json=spec, headers=good).status_code == 200
        assert len(topo.eip_rules("host-1")) == 2


def test_a_stale_generation_sent_straight_to_the_agent_is_refused_and_traffic_still_flows(
    topo: Topology, open_flow: Callable[..., Eipflow]
) -> None:
    """A zombie's (or a replayed) apply of an older generation, sent to a real agent: 409 with the host's
    generation, the kernel's rules unchanged, the VIP still reaches the current guest — also after the agent
    restarts (the generation lives in its state dir)."""
    topo.start_agent("host-1")
    flow = open_flow()
    eip = flow.create_eip(VIP)
    attached = attach(flow, eip)
    assert attached.state == "attached"
    [rule] = flow.dataplane("host-1")
    assert rule.generation == attached.version - 1
    def ruleset() -> list[str]:  # the rules without their packet counters, which traffic moves
        return [re.sub(r"counter packets \d+ bytes \d+", "counter", r) for r in topo.eip_rules("host-1")]

    before = ruleset()
    stale = {"eip_uuid": eip.uuid, "vip": VIP, "vm_nic_uuid": "nic-zombie", "guest_ip": "192.0.2.99",
             "host_uuid": "host-1", "generation": rule.generation - 1}
    good = {"Authorization": f"Bearer {topo.token}"}
    for restart in (False, True):
        if restart:
            topo.kill_agent("host-1")
            topo.start_agent("host-1")
        transport = httpx.HTTPTransport(uds=str(topo.socket("host-1")))
        with httpx.Client(base_url="http://agent", transport=transport, timeout=10) as client:
            for path in ("/v1/apply", "/v1/revoke"):
                answer = client.post(path, json=stale, headers=good)
                assert answer.status_code == 409, answer.text
                assert answer.json()["current_generation"] == rule.generation
        assert ruleset() == before
        greeting = reaches_guest(topo)
        assert greeting is not None and "hello from guest" in greeting


def test_sigterm_lets_the_in_flight_apply_finish(topo: Topology) -> None:
    """Graceful shutdown: SIGTERM while an apply is held; the call still gets its 200, then the agent exits."""
    hold = HoldFifo(topo.workdir / "hold")
    topo.start_agent("host-1", hold_fifo=hold.path)
    spec = {"eip_uuid": "5c8e7a4e-8f1d-4f53-9a55-2d7f0e6f1a10", "vip": VIP, "vm_nic_uuid": NIC,
            "guest_ip": GUEST_IP, "host_uuid": "host-1", "generation": 1}
    transport = httpx.HTTPTransport(uds=str(topo.socket("host-1")))
    with httpx.Client(base_url="http://agent", transport=transport, timeout=30,
                      headers={"Authorization": f"Bearer {topo.token}"}) as client:
        call = InThread(lambda: client.post("/v1/apply", json=spec))
        hold.wait_entered()
        topo.agents["host-1"].terminate()
        hold.release()
        assert call.result().status_code == 200
    code = topo.agents["host-1"].wait(timeout=30)
    assert code in (0, -15)  # uvicorn re-raises the signal after its graceful shutdown
    log = (topo.workdir / "host-1.log").read_text()
    assert '"agent.stopped"' in log
    assert len(topo.eip_rules("host-1")) == 2  # the apply it finished is in the kernel


def test_kill_9_agent_mid_apply_then_restart_and_drain_converges(
    topo: Topology, open_flow: Callable[..., Eipflow]
) -> None:
    """The agent dies after nft committed and before it answered (unknown outcome). After a restart,
    draining the durable work (past the lease and backoff) leaves the kernel matching the database."""
    clock = ManualClock()
    hold, flow, eip, call = held_attach(topo, open_flow, clock=clock, lease_seconds=5)
    assert len(topo.eip_rules("host-1")) == 2  # the rule is in the kernel ...
    topo.kill_agent("host-1")  # ... and the agent dies before saying so
    hold.release()
    try:
        row = call.result()
    except AttachFailed:
        row = flow.get_eip(eip.uuid)
    assert row.state not in ("attached",)  # the outcome was unknown: never reported as done

    topo.start_agent("host-1")  # no hold this time
    clock.advance(3600)  # past any backoff
    flow.store.lease_clock.advance(3600)  # and past the lease, on the clock every process shares
    for _ in range(10):
        if not flow.run_due():
            break
    final = flow.get_eip(eip.uuid)
    assert final.work_id is None, f"still in flight: {final.state}"
    realized = [(s.eip_uuid, s.host_uuid) for s in flow.dataplane()]
    if final.state == "attached":
        assert realized == [(eip.uuid, final.applied_host)]
        assert reaches_guest(topo) is not None
    else:
        assert realized == []
        assert_no_eipflow_rules(topo)
        assert reaches_guest(topo) is None


def test_reconcile_removes_a_stray_rule_added_by_hand(topo: Topology, open_flow: Callable[..., Eipflow],
                                                      tmp_path: Path) -> None:
    """A rule in eipflow's format with no EIP behind it is removed by ``eipflow reconcile`` (the CLI,
    with ``--backend eipflow.backends.http:factory``); the attached EIP's rule stays."""
    for host in topo.hosts:
        topo.start_agent(host)
    flow = open_flow()
    eip = flow.create_eip(VIP)
    attach(flow, eip)
    stray = "0e3c1f6a-7b7e-4d1e-8a7c-3f1b9d2e4c55"
    topo.lab.run(topo.hosts["host-1"], "nft", "add", "rule", "inet", "eipflow", "prerouting", "ip", "daddr",
                 "203.0.113.150", "counter", "dnat", "ip", "to", "192.0.2.50", "comment",
                 f'"eipflow {stray} dnat nic-x"')
    assert len(topo.eip_rules("host-1")) == 3

    env = {**os.environ, "EIPFLOW_HOSTS_FILE": str(topo.hosts_file)}
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from eipflow.cli import main; sys.exit(main())",
         "--db", f"sqlite:///{tmp_path / 'eipflow.db'}", "--backend", "eipflow.backends.http:factory",
         "--json", "reconcile"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [(r["kind"], r["eip_uuid"], r["outcome"]) for r in report["outcomes"]] == [
        ("revoke_stray", stray, "done")]
    rules = topo.eip_rules("host-1")
    assert len(rules) == 2 and not any(stray in r for r in rules)
    assert all(eip.uuid in r for r in rules)
    assert reaches_guest(topo) is not None

"""A throwaway network lab in Linux network namespaces, for the end-to-end tests and the demo.

Everything lives in namespaces this module creates (names start with a random prefix, so parallel
runs never collide); veth pairs are created directly inside them (``ip -n NS link add … peer …
netns OTHER``), so the machine's own namespace is never touched. :meth:`Lab.close` kills every
process the lab started and deletes every namespace (which deletes their interfaces).

``python -m eipflow.agent.lab serve|fetch`` is the tiny TCP echo used as "guest" and "client":
``serve`` answers each connection with ``hello from NAME; you are PEER_IP`` and prints the peer;
``fetch`` connects, prints what it got (curl-style) and the local address it used.

Requires root, ``ip`` (iproute2) and, for the dataplane, ``nft``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO

__all__ = ["GATEWAY_IP", "GUEST_IP", "OUTSIDE_IP", "Lab", "Topology", "missing_requirements"]


def missing_requirements() -> str | None:
    """Why a lab cannot be built here (``None`` when it can): root, ``ip netns`` and ``nft`` are needed."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (network namespaces and nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs the {tool!r} command ({'iproute2' if tool == 'ip' else 'nftables'} package)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"'ip netns' does not work here: {probe.stderr.strip()}"
    return None


class Lab:
    """Namespaces, veths and processes that all go away on :meth:`close` (or leaving ``with``)."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or f"eip{uuid.uuid4().hex[:6]}"
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- building ------------------------------------------------------------------------------
    def netns(self, name: str) -> str:
        """Create namespace ``PREFIX-name`` with loopback up; returns its full name."""
        full = f"{self.prefix}-{name}"
        _run(["ip", "netns", "add", full])
        self.namespaces.append(full)
        self.run(full, "ip", "link", "set", "lo", "up")
        return full

    def veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        """A veth pair ``ns_a:if_a`` <-> ``ns_b:if_b``, both up."""
        _run(["ip", "-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b])
        self.run(ns_a, "ip", "link", "set", if_a, "up")
        self.run(ns_b, "ip", "link", "set", if_b, "up")

    def bridge(self, ns: str, name: str, ports: Sequence[str] = ()) -> None:
        """A bridge in ``ns`` with ``ports`` enslaved, up."""
        self.run(ns, "ip", "link", "add", name, "type", "bridge")
        for port in ports:
            self.run(ns, "ip", "link", "set", port, "master", name)
        self.run(ns, "ip", "link", "set", name, "up")

    def address(self, ns: str, iface: str, cidr: str) -> None:
        self.run(ns, "ip", "addr", "add", cidr, "dev", iface)

    def route(self, ns: str, dest: str, via: str) -> None:
        self.run(ns, "ip", "route", "replace", dest, "via", via)

    def sysctl(self, ns: str, key: str, value: str) -> None:
        self.run(ns, "sysctl", "-q", "-w", f"{key}={value}")

    # -- running -------------------------------------------------------------------------------
    def run(self, ns: str, *argv: str, check: bool = True, stdin: str | None = None,
            timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``ns`` and wait for it."""
        return _run(["ip", "netns", "exec", ns, *argv], check=check, stdin=stdin, timeout=timeout)

    def spawn(self, ns: str, argv: Sequence[str], *, env: dict[str, str] | None = None,
              stdout: int | IO[bytes] | None = subprocess.PIPE,
              stderr: int | IO[bytes] | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``ns``; :meth:`close` kills it. ``ip netns exec`` execs, so the pid is argv's."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            env=env, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
        )
        self.processes.append(proc)
        return proc

    def python(self, ns: str, *args: str, **kwargs: object) -> subprocess.Popen[bytes]:
        """Start ``python -m eipflow.agent.lab ARGS`` inside ``ns``."""
        return self.spawn(ns, [sys.executable, "-m", "eipflow.agent.lab", *args], **kwargs)  # type: ignore[arg-type]

    def fetch(self, ns: str, host: str, port: int, *, timeout: float = 2.0) -> tuple[bool, str]:
        """Connect from ``ns`` to ``host:port``; ``(connected, output)``."""
        done = self.run(ns, sys.executable, "-m", "eipflow.agent.lab", "fetch", host, str(port), str(timeout),
                        check=False, timeout=timeout + 20)
        return done.returncode == 0, (done.stdout + done.stderr).strip()

    def ruleset(self, ns: str) -> str:
        """``nft list ruleset`` inside ``ns``."""
        return self.run(ns, "nft", "list", "ruleset").stdout

    def close(self) -> None:
        """Kill the lab's processes, delete its namespaces. Safe to call twice."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        self.processes.clear()
        for ns in reversed(self.namespaces):
            _kill_remaining(ns)
            _run(["ip", "netns", "del", ns], check=False)
        self.namespaces.clear()


def _kill_remaining(ns: str) -> None:
    """Anything still running inside ``ns`` (started by a test's helper) would keep it alive."""
    done = _run(["ip", "netns", "pids", ns], check=False)
    for pid in done.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def _run(argv: Sequence[str], *, check: bool = True, stdin: str | None = None,
         timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


# -- the guest/client programs --------------------------------------------------------------------
def _serve(name: str, port: int, bind: str) -> int:
    with socket.create_server((bind, port), reuse_port=False) as server:
        print("listening", flush=True)  # the parent waits for this line: the port is open
        while True:
            conn, peer = server.accept()
            with conn:
                conn.sendall(f"hello from {name}; you are {peer[0]}\n".encode())
            print(f"peer {peer[0]}", flush=True)


def _fetch(host: str, port: int, timeout: float) -> int:
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            local = conn.getsockname()[0]
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
    except OSError as exc:
        print(f"* connect to {host} port {port} failed: {exc}", file=sys.stderr)
        return 7  # curl's "failed to connect"
    print(f"* connected to {host} port {port} from {local}")
    print(f"< {data.decode().strip()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``serve NAME PORT [BIND]`` or ``fetch HOST PORT [TIMEOUT]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) >= 3 and args[0] == "serve":
        return _serve(args[1], int(args[2]), args[3] if len(args) > 3 else "0.0.0.0")
    if len(args) >= 3 and args[0] == "fetch":
        return _fetch(args[1], int(args[2]), float(args[3]) if len(args) > 3 else 2.0)
    print("usage: python -m eipflow.agent.lab serve NAME PORT [BIND] | fetch HOST PORT [TIMEOUT]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())


# -- the EIP topology -----------------------------------------------------------------------------
OUTSIDE_IP = "203.0.113.1"  # the "internet" client, on the public segment
GUEST_IP = "192.0.2.10"  # the VM's private address (the same behind every host: the VM migrates)
GATEWAY_IP = "192.0.2.1"  # each host's side of the guest link


class Topology:
    """outside (bridge) ── pub0 ── host-N ── gw0 ── guest, plus one agent per host.

    ::

        [outside ns] br0 203.0.113.1/24
            ├── veth ── [host-1 ns] pub0 203.0.113.11/24, gw0 192.0.2.1/24 ──┐
            └── veth ── [host-2 ns] pub0 203.0.113.12/24, gw0 192.0.2.1/24   │ (one at a time)
                                                                   [guest ns] eth0 192.0.2.10/24

    Agents run as ``eipflow agent`` inside their host's namespace and listen on Unix sockets in
    ``workdir`` (sockets cross namespaces, so the control plane needs no network of its own).
    """

    def __init__(self, lab: Lab, workdir: Path, hosts: Sequence[str] = ("host-1", "host-2"),
                 token: str | None = None) -> None:
        self.lab = lab
        self.workdir = workdir
        self.token = token or uuid.uuid4().hex
        self.outside = lab.netns("out")
        self.guest = lab.netns("vm")
        self.hosts: dict[str, str] = {}
        self.public_ips: dict[str, str] = {}
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.guest_host: str | None = None
        ports = []
        for n, host in enumerate(hosts, start=1):
            ns = lab.netns(f"h{n}")
            self.hosts[host] = ns
            port = f"p{n}"
            lab.veth(ns, "pub0", self.outside, port)
            self.public_ips[host] = f"203.0.113.{10 + n}"
            lab.address(ns, "pub0", f"{self.public_ips[host]}/24")
            lab.sysctl(ns, "net.ipv4.ip_forward", "1")
            ports.append(port)
        lab.bridge(self.outside, "br0", ports)
        lab.address(self.outside, "br0", f"{OUTSIDE_IP}/24")
        self.hosts_file = workdir / "hosts.toml"
        lines = ["[defaults]", 'public_interface = "pub0"', 'announce = "address"', "timeout = 10", ""]
        for host in self.hosts:
            lines += [f'[hosts."{host}"]', f'url = "unix://{self.socket(host)}"', f'token = "{self.token}"',
                      f'state_dir = "{workdir / ("state-" + host)}"', ""]
        self.hosts_file.write_text("\n".join(lines))
        self.hosts_file.chmod(0o600)  # it holds tokens

    def socket(self, host: str) -> Path:
        return self.workdir / f"{host}.sock"

    # -- the guest -----------------------------------------------------------------------------
    def plug_guest(self, host: str) -> None:
        """Connect the guest to ``host`` (unplugging it from its previous host): the VM moved."""
        if self.guest_host is not None:
            self.lab.run(self.guest, "ip", "link", "del", "eth0")  # deletes the peer gw0 too
        ns = self.hosts[host]
        self.lab.veth(ns, "gw0", self.guest, "eth0")
        self.lab.address(ns, "gw0", f"{GATEWAY_IP}/24")
        self.lab.address(self.guest, "eth0", f"{GUEST_IP}/24")
        self.lab.run(self.guest, "ip", "route", "replace", "default", "via", GATEWAY_IP)
        self.guest_host = host

    def serve(self, ns: str, name: str, port: int) -> subprocess.Popen[bytes]:
        """A ``hello`` server in ``ns``; returns once it listens."""
        proc = self.lab.python(ns, "serve", name, str(port))
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if b"listening" not in line:
            raise RuntimeError(f"server {name} in {ns} did not start")
        return proc

    # -- agents --------------------------------------------------------------------------------
    def start_agent(self, host: str, *, hold_fifo: Path | None = None, timeout: float = 20.0,
                    config: Path | None = None) -> None:
        """Start ``eipflow agent`` for ``host`` in its namespace and wait until /healthz answers.

        ``config``: the agent's own hosts file (default: the control plane's, which has every token).
        """
        env = dict(os.environ)
        env.pop("EIPFLOW_AGENT_HOLD_FIFO", None)
        if hold_fifo is not None:
            env["EIPFLOW_AGENT_HOLD_FIFO"] = str(hold_fifo)
        log = open(self.workdir / f"{host}.log", "ab")
        try:
            proc = self.lab.spawn(
                self.hosts[host],
                [*_eipflow(), "--log-format", "json", "-v", "agent", "--config", str(config or self.hosts_file),
                 "--host", host],
                env=env, stdout=subprocess.DEVNULL, stderr=log,
            )
        finally:
            log.close()  # the child holds its own copy
        self.agents[host] = proc
        self.wait_agent(host, timeout)

    def wait_agent(self, host: str, timeout: float = 20.0) -> None:
        """Poll /healthz until it answers (bounded)."""
        import httpx  # the agent extra

        from ..backends.http import _UnixTransport  # closes refused sockets at once

        deadline = time.monotonic() + timeout
        transport = _UnixTransport(str(self.socket(host)))
        with httpx.Client(base_url="http://agent", transport=transport, timeout=2.0) as client:
            while True:
                proc = self.agents[host]
                if proc.poll() is not None:
                    raise RuntimeError(f"agent {host} exited ({proc.returncode}); see {self.workdir}/{host}.log")
                try:
                    if client.get("/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"agent {host} did not answer /healthz within {timeout}s")
                time.sleep(0.05)  # bounded wait for a server to come up

    def kill_agent(self, host: str) -> None:
        """``kill -9`` the agent (no graceful shutdown, socket file left behind)."""
        proc = self.agents[host]
        proc.kill()
        proc.wait(timeout=10)

    def stop_agent(self, host: str) -> int:
        """SIGTERM (graceful shutdown); returns the exit code."""
        proc = self.agents[host]
        proc.terminate()
        return proc.wait(timeout=30)

    def eip_rules(self, host: str) -> list[str]:
        """eipflow's rule lines in ``host``'s kernel ruleset."""
        out = self.lab.run(self.hosts[host], "nft", "list", "table", "inet", "eipflow", check=False).stdout
        return [line.strip() for line in out.splitlines() if 'comment "eipflow ' in line]


def _eipflow() -> list[str]:
    script = Path(sys.executable).with_name("eipflow")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from eipflow.cli import entry; entry()"]

"""A real dataplane in a few seconds: namespaces, two host agents, one EIP, real TCP.

Run as root (needs ``ip`` and ``nft``)::

    python examples/netns_demo.py

It builds (in throwaway network namespaces, documentation addresses only)::

    outside 203.0.113.1 ──br0──┬── host-1 (agent, nftables) ── guest 192.0.2.10
                               └── host-2 (agent, nftables)

attaches EIP 203.0.113.100 to the guest through the real engine and the HTTP agents, shows
curl-style proof that traffic flows both ways, migrates the VM to host-2, detaches, and deletes
every namespace it made — also when something fails.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import structlog

from eipflow import Eipflow
from eipflow.agent.lab import GUEST_IP, OUTSIDE_IP, Lab, Topology, missing_requirements
from eipflow.backends.http import HttpAgentBackend

VIP = "203.0.113.100"
PORT = 8080


def show(topo: Topology, title: str) -> bool:
    """Connect from outside to the VIP and print what happened, curl-style."""
    ok, output = topo.lab.fetch(topo.outside, VIP, PORT, timeout=1.5)
    print(f"$ curl {VIP}:{PORT}   # {title}")
    print("  " + output.replace("\n", "\n  "))
    return ok


def rules(topo: Topology) -> None:
    for host in topo.hosts:
        lines = topo.eip_rules(host) or ["(no eipflow rules)"]
        indent = "\n" + " " * (len(host) + 4)
        print(f"  {host}: " + indent.join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="show eipflow's transition log (stderr)")
    args = parser.parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level),
                        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    why = missing_requirements()
    if why is not None:
        print(f"netns demo skipped: it {why}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="eipdemo-", dir="/tmp"))  # short: Unix socket paths
    ok = True
    try:
        with Lab() as lab:
            topo = Topology(lab, workdir)
            topo.plug_guest("host-1")
            topo.serve(topo.guest, "guest", PORT)
            for host in topo.hosts:
                topo.start_agent(host)
            with HttpAgentBackend.from_file(topo.hosts_file) as backend, \
                    Eipflow.open(f"sqlite:///{workdir / 'eipflow.db'}", backend) as flow:
                eip = flow.create_eip(VIP, name="demo")
                print(f"EIP {eip.uuid} {VIP}: {eip.state}")
                ok &= not show(topo, "before attach: nothing answers")

                eip = flow.attach(eip.uuid, nic="nic-1", guest_ip=GUEST_IP, vm="vm-1", host="host-1")
                print(f"\nattach -> {eip.state} on {eip.applied_host}")
                rules(topo)
                ok &= show(topo, "outside -> VIP reaches the guest, which sees the client's address")

                egress = topo.serve(topo.outside, "outside", 8081)
                sent, output = lab.fetch(topo.guest, OUTSIDE_IP, 8081)
                assert egress.stdout is not None
                seen = egress.stdout.readline().decode().strip()
                print(f"$ curl {OUTSIDE_IP}:8081   # from the guest: leaves as the VIP")
                print("  " + output.replace("\n", "\n  "))
                ok &= sent and seen == f"peer {VIP}"

                topo.plug_guest("host-2")
                [eip] = flow.vm_migrated("vm-1", "host-2")
                print(f"\nVM migrated -> {eip.state} on {eip.applied_host}")
                rules(topo)
                ok &= show(topo, "after migration: through host-2")

                eip = flow.detach(eip.uuid)
                print(f"\ndetach -> {eip.state}")
                rules(topo)
                ok &= not show(topo, "after detach: nothing answers")
                ok &= all(not topo.eip_rules(h) for h in topo.hosts)
                flow.delete_eip(eip.uuid)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\nnamespaces deleted; demo " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

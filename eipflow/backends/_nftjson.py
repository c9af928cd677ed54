"""eipflow's rules in nftables' JSON: the commands that write them, and reading them back from ``nft -j list``.

A rule is keyed by its comment, ``eipflow UUID ROLE@GEN NIC-PART``: the EIP uuid, ``dnat`` or ``snat``,
the generation (the fencing token) and half of the NIC id, split over the pair's two comments because
nftables caps a comment at :data:`MAX_COMMENT` bytes.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..values import EipSpec

__all__ = ["COMMENT_PREFIX", "MAX_COMMENT", "OwnedRule", "delete_rule", "family", "nic_parts", "parse_rules",
           "rule_pair", "send_garp", "skeleton", "specs_from_rules"]

COMMENT_PREFIX = "eipflow"
MAX_COMMENT = 128  # NFTNL_UDATA_COMMENT_MAXLEN


@dataclass(frozen=True, slots=True)
class OwnedRule:
    """One eipflow rule as read back from the kernel."""

    chain: str
    handle: int
    eip_uuid: str
    role: str  # "dnat" | "snat"
    nic_part: str
    vip: str | None
    guest_ip: str | None
    generation: int = 0  # rules written before generations existed carry none: 0


def family(addr: str) -> str:
    """nft's protocol name for ``addr``'s IP version: ``ip`` or ``ip6``."""
    return "ip6" if ipaddress.ip_address(addr).version == 6 else "ip"


def nic_parts(nic: str, eip_uuid: str, generation: int) -> tuple[str, str]:
    """Split the NIC id over the two comments (each at most :data:`MAX_COMMENT` bytes)."""
    room = MAX_COMMENT - len(f"{COMMENT_PREFIX} {eip_uuid} dnat@{generation} ")
    return nic[:room], nic[room:]


def skeleton(table: str) -> list[dict[str, Any]]:
    """Table and base chains; ``add`` of an existing object is a no-op, so every transaction carries them."""
    t = {"family": "inet", "table": table}
    return [
        {"add": {"table": {"family": "inet", "name": table}}},
        {"add": {"chain": {**t, "name": "prerouting", "type": "nat", "hook": "prerouting", "prio": -100,
                           "policy": "accept"}}},
        {"add": {"chain": {**t, "name": "postrouting", "type": "nat", "hook": "postrouting", "prio": 100,
                           "policy": "accept"}}},
    ]


def rule_pair(table: str, public_interface: str | None, spec: EipSpec) -> list[dict[str, Any]]:
    """The ``add`` commands of ``spec``'s DNAT and SNAT rules (SNAT on ``public_interface`` when given)."""
    fam = family(spec.vip)
    first, rest = nic_parts(spec.vm_nic_uuid, spec.eip_uuid, spec.generation)
    t = {"family": "inet", "table": table}
    dnat = [
        {"match": {"op": "==", "left": {"payload": {"protocol": fam, "field": "daddr"}}, "right": spec.vip}},
        {"counter": {"packets": 0, "bytes": 0}},
        {"dnat": {"family": fam, "addr": spec.guest_ip}},
    ]
    snat: list[dict[str, Any]] = []
    if public_interface:
        snat.append({"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": public_interface}})
    snat += [
        {"match": {"op": "==", "left": {"payload": {"protocol": fam, "field": "saddr"}}, "right": spec.guest_ip}},
        {"counter": {"packets": 0, "bytes": 0}},
        {"snat": {"family": fam, "addr": spec.vip}},
    ]
    return [
        {"add": {"rule": {**t, "chain": "prerouting", "expr": dnat,
                          "comment": f"{COMMENT_PREFIX} {spec.eip_uuid} dnat@{spec.generation} {first}".rstrip()}}},
        {"add": {"rule": {**t, "chain": "postrouting", "expr": snat,
                          "comment": f"{COMMENT_PREFIX} {spec.eip_uuid} snat@{spec.generation} {rest}".rstrip()}}},
    ]


def delete_rule(table: str, rule: OwnedRule) -> dict[str, Any]:
    """The ``delete`` command of one rule, by handle."""
    return {"delete": {"rule": {"family": "inet", "table": table, "chain": rule.chain, "handle": rule.handle}}}


def send_garp(interface: str, ip: str) -> None:
    """Broadcast one gratuitous ARP request for ``ip`` from ``interface``'s MAC (needs CAP_NET_RAW)."""
    mac = bytes.fromhex(Path(f"/sys/class/net/{interface}/address").read_text().strip().replace(":", ""))
    addr = socket.inet_aton(ip)
    frame = (
        b"\xff" * 6 + mac + struct.pack("!H", 0x0806)
        + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)  # Ethernet, IPv4, request
        + mac + addr + b"\x00" * 6 + addr
    )
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((interface, 0))
        sock.send(frame)


def parse_rules(items: Sequence[Any]) -> list[OwnedRule]:
    """eipflow's rules from an ``nft -j list`` document; rules without our comment are not ours."""
    out: list[OwnedRule] = []
    for item in items:
        rule = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(rule, dict):
            continue
        comment = rule.get("comment")
        if not isinstance(comment, str) or not comment.startswith(COMMENT_PREFIX + " "):
            continue
        parts = comment.split(" ", 3)
        if len(parts) < 3:
            continue
        role, _, gen_text = parts[2].partition("@")  # "dnat@12"; rules from before generations: "dnat"
        if role not in ("dnat", "snat") or not (gen_text.isdigit() or gen_text == ""):
            continue
        matched: dict[str, str] = {}
        target: str | None = None
        for expr in rule.get("expr", []):
            if not isinstance(expr, dict):
                continue
            match = expr.get("match")
            if isinstance(match, dict):
                payload = (match.get("left") or {}).get("payload") if isinstance(match.get("left"), dict) else None
                if isinstance(payload, dict) and isinstance(match.get("right"), str):
                    matched[str(payload.get("field"))] = match["right"]
            for verb in ("dnat", "snat"):
                nat = expr.get(verb)
                if isinstance(nat, dict) and isinstance(nat.get("addr"), str):
                    target = nat["addr"]
        vip, guest = (matched.get("daddr"), target) if role == "dnat" else (target, matched.get("saddr"))
        out.append(OwnedRule(str(rule.get("chain")), int(rule["handle"]), parts[1], role,
                             parts[3] if len(parts) > 3 else "", vip, guest, int(gen_text or 0)))
    return out


def specs_from_rules(rules: Sequence[OwnedRule], host_uuid: str) -> list[EipSpec]:
    """One spec per EIP (a half-present pair still counts: drift repair must see it)."""
    by_eip: dict[str, dict[str, OwnedRule]] = {}
    for r in rules:
        by_eip.setdefault(r.eip_uuid, {})[r.role] = r
    specs = []
    for eip, pair in sorted(by_eip.items()):
        dnat, snat = pair.get("dnat"), pair.get("snat")
        nic = (dnat.nic_part if dnat else "") + (snat.nic_part if snat else "")
        vip = (dnat.vip if dnat else None) or (snat.vip if snat else None) or ""
        guest = (dnat.guest_ip if dnat else None) or (snat.guest_ip if snat else None) or ""
        generation = max(r.generation for r in pair.values())
        specs.append(EipSpec(eip, vip, nic, guest, host_uuid, generation))
    return specs

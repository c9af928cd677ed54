"""A real dataplane: each EIP as DNAT/SNAT rules in an nftables table that eipflow owns.

One host, one :class:`NftablesBackend`. For an :class:`~eipflow.EipSpec` it keeps, in table
``inet eipflow``::

    prerouting  (nat, dstnat): ip daddr VIP counter dnat ip to GUEST comment "eipflow UUID dnat@GEN NIC…"
    postrouting (nat, srcnat): [oifname PUB] ip saddr GUEST counter snat ip to VIP comment "eipflow UUID snat@GEN …NIC"

plus, with ``announce="address"``, the VIP as a /32 (/128) address on the public interface so the
host answers ARP/ND for it (followed by a gratuitous ARP, so neighbours that cached the VIP on a
previous host switch at once). ``announce="none"`` leaves that to the network (routes or BGP
pointing the VIP at the host).

Every apply/revoke is **one** ``nft -j -f -`` transaction built as a JSON document (never a shell
string), so a rule pair is either fully there or not at all. Rules are keyed by their comment: the
EIP uuid and the NIC id (split over the two rules' comments, as nftables caps a comment at 128
bytes), so :meth:`NftablesBackend.rules` reads back exactly what is realized, from the kernel.

Every call is fenced (:mod:`eipflow.backends.fencing`): the host keeps, per EIP, the newest generation
it has seen — in the rules' comments (``dnat@GEN``) and, so that a revoke's tombstone survives too, in a
small record file per EIP under ``state_dir`` written atomically *before* an apply and *after* a revoke
(a crash in between leaves a state the retried call repairs). An older apply, or a revoke older than the
rule held, is refused with :class:`~eipflow.StaleGeneration` and changes nothing. An accepted apply
replaces whatever this EIP had on the host; an accepted revoke removes all of it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import validation as v
from .._logging import get_logger
from ..errors import AddressNotAllowed, BackendError, BackendTimeout, InvalidInput
from ..values import EipSpec
from .fencing import HostRecord, decide, record_after

__all__ = ["ANNOUNCE_MODES", "NftablesBackend", "OwnedRule", "check_interface"]

log = get_logger(__name__)

ANNOUNCE_MODES = ("address", "none")
COMMENT_PREFIX = "eipflow"
MAX_COMMENT = 128  # NFTNL_UDATA_COMMENT_MAXLEN
_IFNAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")  # IFNAMSIZ - 1, no '/' or whitespace
_NETNS = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TABLE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")


def check_interface(field: str, value: object) -> str:
    """A Linux interface name, or :class:`~eipflow.InvalidInput`."""
    if not isinstance(value, str) or not _IFNAME.match(value):
        raise InvalidInput(f"{field}: {value!r} is not an interface name (1-15 of A-Z a-z 0-9 _ . : -)")
    return value


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


def _family(addr: str) -> str:
    return "ip6" if ipaddress.ip_address(addr).version == 6 else "ip"


def _nic_parts(nic: str, eip_uuid: str, generation: int) -> tuple[str, str]:
    """Split the NIC id over the two comments (each at most :data:`MAX_COMMENT` bytes)."""
    room = MAX_COMMENT - len(f"{COMMENT_PREFIX} {eip_uuid} dnat@{generation} ")
    return nic[:room], nic[room:]


class NftablesBackend:
    """Realizes EIPs on one host with nftables (optionally inside a network namespace).

    Args:
        host_uuid: the host this backend programs; specs for other hosts are refused.
        public_interface: where VIP traffic enters and leaves (SNAT matches it; ``announce="address"``
            puts the VIP on it). Optional only with ``announce="none"``.
        announce: ``"address"`` (VIP as a host address + gratuitous ARP) or ``"none"``.
        namespace: run ``nft``/``ip`` inside this network namespace (``ip netns exec``); ``None``
            for the namespace this process runs in (the agent's normal case).
        table: the ``inet`` table eipflow owns on the host.
        nft: the ``nft`` binary; ``ip``: the ``ip`` binary.
        timeout: seconds one command may take before the outcome counts as unknown.
        state_dir: where the per-EIP generation records live (created if missing), so the generation —
            a revoke's tombstone included — survives an agent restart. ``None`` keeps tombstones in
            memory only (the rules' comments still carry the generation of what is realized).
    """

    def __init__(
        self,
        host_uuid: str,
        *,
        public_interface: str | None = None,
        announce: str = "address",
        namespace: str | None = None,
        table: str = "eipflow",
        nft: str = "nft",
        ip: str = "ip",
        timeout: float = 10.0,
        state_dir: str | Path | None = None,
    ) -> None:
        self.host_uuid = v.opaque_id("host_uuid", host_uuid)
        if announce not in ANNOUNCE_MODES:
            raise InvalidInput(f"announce: {announce!r} is not one of {', '.join(ANNOUNCE_MODES)}")
        if public_interface is None and announce == "address":
            raise InvalidInput("public_interface is required with announce = 'address'")
        self.public_interface = check_interface("public_interface", public_interface) if public_interface else None
        self.announce = announce
        if namespace is not None and not _NETNS.match(namespace):
            raise InvalidInput(f"namespace: {namespace!r} is not a network namespace name")
        self.namespace = namespace
        if not _TABLE.match(table):
            raise InvalidInput(f"table: {table!r} is not a valid table name")
        self.table = table
        self.nft = nft
        self.ip = ip
        self.timeout = timeout
        self.state_dir = Path(state_dir) if state_dir is not None else None
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._memory: dict[str, HostRecord] = {}  # the records, when there is no state_dir
        # One transaction at a time per host: apply/revoke read the handles they replace, so a
        # concurrent change between the read and the commit must not interleave.
        self._lock = threading.Lock()

    # -- the Backend protocol ------------------------------------------------------------------
    def apply(self, spec: EipSpec) -> None:
        """Realize ``spec``: replace this EIP's rules on the host with the spec's, in one transaction.

        If a step after the nft transaction fails (the VIP's address), the transaction's rules are
        taken back before the error is raised.

        Raises:
            StaleGeneration: the host has seen a newer generation of this EIP (nothing changed).
            AddressNotAllowed: the VIP or guest IP is one of the host's own or its gateway's.
        """
        spec = self._check(spec, creating=True)
        started = time.perf_counter()
        with self._lock:
            every = self._owned()
            owned = [r for r in every if r.eip_uuid == spec.eip_uuid]
            record = self._record(spec.eip_uuid, owned)
            decision = decide(record, "apply", spec)
            self._refuse_host_addresses(spec, {r.vip for r in every if r.role == "dnat" and r.vip})
            self._remember(spec.eip_uuid, record_after(record, decision, spec))  # intent before action
            commands = self._skeleton()
            commands += [self._delete(r) for r in owned]
            commands += self._add_rules(spec)
            self._nft_apply(commands)
            if self.announce == "address":
                try:
                    stale = {r.vip for r in owned if r.vip and r.vip != spec.vip}
                    for vip in stale:
                        self._address(vip, present=False)
                    self._address(spec.vip, present=True)
                except BackendError:
                    self._undo(spec)
                    raise
        log.info("nft.applied", eip_uuid=spec.eip_uuid, host_uuid=self.host_uuid, vip=spec.vip,
                 guest_ip=spec.guest_ip, generation=spec.generation, replaced=len(owned), repeat=decision.same,
                 duration_ms=round((time.perf_counter() - started) * 1000, 3))

    def _refuse_host_addresses(self, spec: EipSpec, our_vips: set[str]) -> None:
        """Refuse to DNAT or announce the host's own addresses or its gateways' (before anything changes).

        The VIPs eipflow itself put on the public interface are not the host's own: those of its rules,
        and (with ``announce="address"``) any /32 or /128 there, which is how eipflow adds a VIP, so a
        VIP whose rules were lost while its address stayed can be re-applied.
        """
        own = self._host_addresses() - our_vips
        gateways = self._gateways()
        for field, addr in (("vip", spec.vip), ("guest_ip", spec.guest_ip)):
            if addr in own:
                raise AddressNotAllowed(self.host_uuid, field, addr, "it is an address of this host")
            if addr in gateways:
                raise AddressNotAllowed(self.host_uuid, field, addr, "it is this host's gateway")

    def _ip_json(self, *argv: str) -> list[Any]:
        done = self._run([self.ip, "-j", *argv])
        if done.returncode != 0:
            raise BackendError(f"ip {' '.join(argv)} failed on host {self.host_uuid}: {_first_line(done.stderr)}")
        try:
            data = json.loads(done.stdout or "[]")
        except ValueError as exc:
            raise BackendError(f"ip {' '.join(argv)} printed unreadable JSON on host {self.host_uuid}") from exc
        return data if isinstance(data, list) else []

    def _host_addresses(self) -> set[str]:
        found = set()
        for link in self._ip_json("addr", "show"):
            for a in link.get("addr_info", []) if isinstance(link, dict) else []:
                if not isinstance(a, dict) or not isinstance(a.get("local"), str):
                    continue
                announced = (self.announce == "address" and link.get("ifname") == self.public_interface
                             and a.get("prefixlen") in (32, 128))
                if not announced:
                    found.add(v.canonical_address("local", a["local"]))
        return found

    def _gateways(self) -> set[str]:
        found = set()
        for family in ("-4", "-6"):
            for route in self._ip_json(family, "route", "show", "default"):
                if isinstance(route, dict) and isinstance(route.get("gateway"), str):
                    found.add(v.canonical_address("gateway", route["gateway"]))
        return found

    def _undo(self, spec: EipSpec) -> None:
        """After a failed second step, take back the rules the apply's transaction just committed.

        The caller then sees a failed apply with nothing of it left behind. Best effort: if even
        this fails, the runner's revoke (a newer generation) removes every rule of the EIP on the host.
        """
        try:
            mine = [r for r in self._owned() if r.eip_uuid == spec.eip_uuid and r.generation == spec.generation]
            if mine:
                self._nft_apply([self._delete(r) for r in mine])
        except BackendError as exc:
            log.warning("nft.undo_failed", eip_uuid=spec.eip_uuid, host_uuid=self.host_uuid, error=str(exc))
            return
        log.warning("nft.apply_undone", eip_uuid=spec.eip_uuid, host_uuid=self.host_uuid, removed=len(mine))

    def revoke(self, spec: EipSpec) -> None:
        """Remove this EIP's rules from the host, unless they are newer than ``spec``; absent rules are fine.

        Addresses are only checked for syntax (and a zone ID dropped, as nft did), so a rule written
        before the address-class rules existed can still be removed.

        Raises:
            StaleGeneration: the host holds a newer generation of this EIP (nothing changed).
        """
        spec = self._check(spec, creating=False)
        started = time.perf_counter()
        with self._lock:
            rules = self._owned()
            mine = [r for r in rules if r.eip_uuid == spec.eip_uuid]
            record = self._record(spec.eip_uuid, mine)
            decision = decide(record, "revoke", spec)
            if mine:
                self._nft_apply([self._delete(r) for r in mine])
            if self.announce == "address":
                # The address goes only if no remaining rule still answers for the VIP.
                left = {r.vip for r in rules if r not in mine and r.role == "dnat"}
                if spec.vip not in left:
                    self._address(spec.vip, present=False)
            self._remember(spec.eip_uuid, record_after(record, decision, spec))  # the tombstone, once it is true
        log.info("nft.revoked", eip_uuid=spec.eip_uuid, host_uuid=self.host_uuid, removed=len(mine),
                 generation=spec.generation, duration_ms=round((time.perf_counter() - started) * 1000, 3))

    # -- the generation records ----------------------------------------------------------------
    def _record_path(self, eip_uuid: str) -> Path | None:
        return self.state_dir / f"{eip_uuid}.json" if self.state_dir is not None else None

    def _record(self, eip_uuid: str, owned: Sequence[OwnedRule]) -> HostRecord | None:
        """What this host remembers of the EIP: its record file, or the rules' own generation if newer."""
        stored: HostRecord | None = self._memory.get(eip_uuid)
        path = self._record_path(eip_uuid)
        if path is not None:
            try:
                data = json.loads(path.read_text())
                body = None if data["revoked"] else EipSpec(eip_uuid, data["vip"], data["vm_nic_uuid"],
                                                            data["guest_ip"], self.host_uuid, int(data["generation"]))
                stored = HostRecord(int(data["generation"]), body)
            except FileNotFoundError:
                stored = None
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise BackendError(f"generation record {path} is unreadable: {exc}", retryable=False) from exc
        kernel = specs_from_rules(owned, self.host_uuid)
        if kernel and (stored is None or kernel[0].generation > stored.generation):
            return HostRecord(kernel[0].generation, kernel[0])
        return stored

    def _remember(self, eip_uuid: str, record: HostRecord) -> None:
        path = self._record_path(eip_uuid)
        if path is None:
            self._memory[eip_uuid] = record
            return
        spec = record.spec
        data = {"generation": record.generation, "revoked": spec is None, "vip": spec.vip if spec else None,
                "vm_nic_uuid": spec.vm_nic_uuid if spec else None, "guest_ip": spec.guest_ip if spec else None}
        tmp = path.with_suffix(".tmp")
        try:
            with open(tmp, "w") as out:
                json.dump(data, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)  # atomic: a crash leaves the old record or the new one, never half
        except OSError as exc:
            raise BackendError(f"cannot write generation record {path}: {exc.strerror}") from exc

    def rules(self, host_uuid: str | None = None) -> list[EipSpec]:
        """The EIPs realized on this host, read back from the kernel's ruleset."""
        if host_uuid not in (None, self.host_uuid):
            return []
        with self._lock:
            owned = self._owned()
            out = []
            for spec in specs_from_rules(owned, self.host_uuid):
                record = self._record(spec.eip_uuid, [r for r in owned if r.eip_uuid == spec.eip_uuid])
                newest = max(spec.generation, record.generation if record is not None else 0)
                out.append(dataclasses.replace(spec, generation=newest))
        return out

    # -- building the transaction -------------------------------------------------------------
    def _check(self, spec: EipSpec, *, creating: bool) -> EipSpec:
        address = v.ip_address if creating else v.canonical_address
        try:
            eip = v.eip_uuid(spec.eip_uuid)
            vip = address("vip", spec.vip)
            guest = address("guest_ip", spec.guest_ip)
            nic = v.opaque_id("vm_nic_uuid", spec.vm_nic_uuid)
            host = v.opaque_id("host_uuid", spec.host_uuid)
            if creating:
                v.address_pair(vip, guest)
        except InvalidInput as exc:
            raise BackendError(f"refusing an invalid spec: {exc}", retryable=False) from exc
        if host != self.host_uuid:
            raise BackendError(f"this backend programs host {self.host_uuid}, not {host}", retryable=False)
        if _family(vip) != _family(guest):
            raise BackendError(f"vip {vip} and guest_ip {guest} are of different IP versions", retryable=False)
        if type(spec.generation) is not int or spec.generation < 0:
            raise BackendError(f"refusing generation {spec.generation!r}: not a non-negative integer", retryable=False)
        return EipSpec(eip, vip, nic, guest, host, spec.generation)

    def _skeleton(self) -> list[dict[str, Any]]:
        """Table and base chains; ``add`` of an existing object is a no-op, so every transaction carries them."""
        t = {"family": "inet", "table": self.table}
        return [
            {"add": {"table": {"family": "inet", "name": self.table}}},
            {"add": {"chain": {**t, "name": "prerouting", "type": "nat", "hook": "prerouting", "prio": -100,
                               "policy": "accept"}}},
            {"add": {"chain": {**t, "name": "postrouting", "type": "nat", "hook": "postrouting", "prio": 100,
                               "policy": "accept"}}},
        ]

    def _add_rules(self, spec: EipSpec) -> list[dict[str, Any]]:
        fam = _family(spec.vip)
        first, rest = _nic_parts(spec.vm_nic_uuid, spec.eip_uuid, spec.generation)
        t = {"family": "inet", "table": self.table}
        dnat = [
            {"match": {"op": "==", "left": {"payload": {"protocol": fam, "field": "daddr"}}, "right": spec.vip}},
            {"counter": {"packets": 0, "bytes": 0}},
            {"dnat": {"family": fam, "addr": spec.guest_ip}},
        ]
        snat: list[dict[str, Any]] = []
        if self.public_interface:
            snat.append({"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": self.public_interface}})
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

    def _delete(self, rule: OwnedRule) -> dict[str, Any]:
        return {"delete": {"rule": {"family": "inet", "table": self.table, "chain": rule.chain,
                                    "handle": rule.handle}}}

    # -- running commands ---------------------------------------------------------------------
    def _argv(self, *argv: str) -> list[str]:
        prefix = [self.ip, "netns", "exec", self.namespace] if self.namespace else []
        return [*prefix, *argv]

    def _run(self, argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        full = self._argv(*argv)
        try:
            return subprocess.run(full, input=stdin, capture_output=True, text=True, timeout=self.timeout,
                                  check=False)
        except subprocess.TimeoutExpired as exc:
            raise BackendTimeout(f"{argv[0]} did not finish within {self.timeout}s on host {self.host_uuid}") from exc
        except FileNotFoundError as exc:
            raise BackendError(f"cannot run {full[0]}: {exc.strerror}", retryable=False) from exc

    def _nft_apply(self, commands: list[dict[str, Any]]) -> None:
        doc = json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]})
        done = self._run([self.nft, "-j", "-f", "-"], stdin=doc)
        if done.returncode != 0:
            raise BackendError(f"nft transaction failed on host {self.host_uuid}: {_first_line(done.stderr)}")

    def _owned(self) -> list[OwnedRule]:
        done = self._run([self.nft, "-j", "list", "table", "inet", self.table])
        if done.returncode != 0:
            if "No such file or directory" in done.stderr:
                return []  # the table does not exist yet: nothing realized
            raise BackendError(f"nft list failed on host {self.host_uuid}: {_first_line(done.stderr)}")
        try:
            items = json.loads(done.stdout)["nftables"]
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(f"nft printed unreadable JSON on host {self.host_uuid}") from exc
        return parse_rules(items)

    def _address(self, vip: str, *, present: bool) -> None:
        assert self.public_interface is not None
        prefix = 128 if _family(vip) == "ip6" else 32
        shown = self._run([self.ip, "-j", "addr", "show", "dev", self.public_interface])
        if shown.returncode != 0:
            raise BackendError(f"ip addr show {self.public_interface} failed: {_first_line(shown.stderr)}")
        have = any(
            a.get("local") == vip
            for link in json.loads(shown.stdout or "[]")
            for a in link.get("addr_info", [])
        )
        if have == present:
            return
        if present:
            argv = [self.ip, "addr", "add", f"{vip}/{prefix}", "dev", self.public_interface]
            if prefix == 128:
                argv.append("nodad")  # the VIP must be usable at once, not after duplicate detection
        else:
            argv = [self.ip, "addr", "del", f"{vip}/{prefix}", "dev", self.public_interface]
        done = self._run(argv)
        if done.returncode != 0:
            raise BackendError(f"ip addr {'add' if present else 'del'} {vip} failed: {_first_line(done.stderr)}")
        if present and prefix == 32:
            self._announce(vip)

    def _announce(self, vip: str) -> None:
        """Gratuitous ARP, so neighbours that cached the VIP on its previous host switch now (best effort)."""
        if self.namespace is not None:
            return  # a raw socket opens in *this* process's namespace; the agent runs inside the host's
        assert self.public_interface is not None
        try:
            send_garp(self.public_interface, vip)
        except OSError as exc:
            log.warning("nft.garp_failed", vip=vip, interface=self.public_interface, error=str(exc))


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


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"

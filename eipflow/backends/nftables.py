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
bytes; see :mod:`eipflow.backends._nftjson`), so :meth:`NftablesBackend.rules` reads back exactly
what is realized, from the kernel.

Every call is fenced (:mod:`eipflow.backends.fencing`): the host keeps, per EIP, the newest generation
it has seen — in the rules' comments (``dnat@GEN``) and, so that a revoke's tombstone survives too, in a
small record file per EIP under ``state_dir``, written atomically once the transaction has committed and
before the address step (so an apply whose address step fails and is taken back is still remembered; a
crash between commit and write loses nothing an apply needs, as its comments carry the generation). An
older apply, or a revoke older than the rule held, is refused with :class:`~eipflow.StaleGeneration` and
changes nothing. An accepted apply replaces whatever this EIP had on the host; an accepted revoke
removes all of it.

**Batches** (:meth:`NftablesBackend.apply_changes`, the port of :mod:`eipflow.backends.batch`): a
host's changes are realized with one read of the ruleset, one ``nft -f`` transaction, one
``ip addr show`` and one ``ip -force -batch`` for the VIP addresses, whatever their number (up to
:data:`~eipflow.backends.batch.MAX_BATCH` a transaction). Each change is still judged on its own:
an invalid spec, a stale generation, a refused address gets its own result and stays out of the
transaction; an idempotent repeat is realized again, as a single apply is. If nft rejects the
transaction as a whole (nothing of it happened), the accepted changes are applied **one at a time**
with the same code — each is re-read and re-judged — so one bad rule fails alone. Records are
written only for the changes whose transaction committed. :meth:`~NftablesBackend.apply` and
:meth:`~NftablesBackend.revoke` are batches of one. Locking: one lock per backend (per host) held for
the whole batch, as for a single call, so no two transactions interleave their read and commit and
no lock order between EIPs is needed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
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
from ._nftjson import OwnedRule, delete_rule, parse_rules, rule_pair, send_garp, skeleton, specs_from_rules
from ._nftjson import family as _family
from .batch import DONE, MAX_BATCH, STATUSES, Change, ChangeResult, result_of
from .fencing import Decision, HostRecord, decide, record_after

__all__ = ["ANNOUNCE_MODES", "NftablesBackend", "OwnedRule", "check_interface"]

log = get_logger(__name__)

ANNOUNCE_MODES = ("address", "none")
_IFNAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")  # IFNAMSIZ - 1, no '/' or whitespace
_NETNS = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TABLE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")


def check_interface(field: str, value: object) -> str:
    """A Linux interface name, or :class:`~eipflow.InvalidInput`."""
    if not isinstance(value, str) or not _IFNAME.match(value):
        raise InvalidInput(f"{field}: {value!r} is not an interface name (1-15 of A-Z a-z 0-9 _ . : -)")
    return value


@dataclass(frozen=True, slots=True)
class _Step:
    """One accepted change of a batch: what the host had for its EIP, and what the rule decided."""

    index: int
    action: str
    spec: EipSpec
    owned: list[OwnedRule]
    record: HostRecord | None
    decision: Decision


@dataclass(slots=True)
class _BatchStats:
    transactions: int = 0
    fallback: bool = False


class _HostView:
    """The host's own and gateway addresses, read at most once per batch (and kept for its fallback)."""

    def __init__(self) -> None:
        self._got: tuple[set[str], set[str]] | BackendError | None = None

    def forbidden(self, backend: NftablesBackend, our_vips: set[str]) -> tuple[set[str], set[str]]:
        if self._got is None:
            try:
                self._got = backend._forbidden(our_vips)
            except BackendError as exc:
                self._got = exc
        if isinstance(self._got, BackendError):
            raise self._got
        return self._got


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
        # One transaction at a time per host (a batch holds it throughout): each reads the handles it replaces, so a
        # concurrent change between the read and the commit must not interleave.
        self._lock = threading.Lock()

    # -- the Backend protocol ------------------------------------------------------------------
    def apply(self, spec: EipSpec) -> None:
        """Realize ``spec``: replace this EIP's rules on the host with the spec's, in one transaction.

        A batch of one (:meth:`apply_changes`). If a step after the nft transaction fails (the VIP's
        address), the transaction's rules are taken back before the error is raised.

        Raises:
            StaleGeneration: the host has seen a newer generation of this EIP (nothing changed).
            AddressNotAllowed: the VIP or guest IP is one of the host's own or its gateway's.
        """
        self._one(Change("apply", spec))

    def revoke(self, spec: EipSpec) -> None:
        """Remove this EIP's rules from the host, unless they are newer than ``spec``; absent rules are fine.

        A batch of one (:meth:`apply_changes`). Addresses are only checked for syntax (and a zone ID
        dropped, as nft did), so a rule written before the address-class rules existed can still be removed.

        Raises:
            StaleGeneration: the host holds a newer generation of this EIP (nothing changed).
        """
        self._one(Change("revoke", spec))

    def _one(self, change: Change) -> None:
        [result] = self._changes([change])
        if result.error is not None:
            raise result.error

    def apply_changes(self, host_uuid: str, changes: Sequence[Change]) -> list[ChangeResult]:
        """Realize a batch of changes for this host in one ``nft`` transaction (per :data:`MAX_BATCH` changes).

        Each change is judged on its own (validation, the generation rule, the host-address rule);
        those refused or invalid get their result and stay out of the transaction. If nft rejects the
        transaction as a whole, the rest are applied one at a time, so a bad rule fails alone. If the
        host's rules cannot even be read, every change of the chunk gets that error (nothing changed).
        """
        if host_uuid != self.host_uuid:
            wrong = BackendError(f"this backend programs host {self.host_uuid}, not {host_uuid}", retryable=False)
            return [result_of(wrong)] * len(changes)
        out: list[ChangeResult] = []
        for start in range(0, len(changes), MAX_BATCH):
            chunk = changes[start:start + MAX_BATCH]
            try:
                out += self._changes(chunk)
            except BackendError as exc:  # the rules could not be read: nothing of this chunk was done
                out += [result_of(exc)] * len(chunk)
        return out

    # -- one batch -----------------------------------------------------------------------------
    def _changes(self, changes: Sequence[Change]) -> list[ChangeResult]:
        """Validate, then judge and realize under the host lock; a result for every change."""
        started = time.perf_counter()
        results: list[ChangeResult | None] = [None] * len(changes)
        checked: list[tuple[int, str, EipSpec]] = []
        first: dict[str, int] = {}
        for i, change in enumerate(changes):
            try:
                spec = self._check(change.spec, creating=change.action == "apply")
            except BackendError as exc:
                results[i] = result_of(exc)
                continue
            if spec.eip_uuid in first:
                # Two changes of one EIP in one transaction have no order nft could keep: the caller's bug.
                results[i] = result_of(BackendError(
                    f"EIP {spec.eip_uuid} has more than one change in this batch (first at {first[spec.eip_uuid]})",
                    retryable=False))
                continue
            first[spec.eip_uuid] = i
            checked.append((i, change.action, spec))
        stats = _BatchStats()
        if checked:
            with self._lock:
                self._judge_and_realize(checked, results, _HostView(), stats)
        final = [r if r is not None else DONE for r in results]
        if len(changes) > 1:
            counts = {status: n for status in STATUSES if (n := sum(r.status == status for r in final))}
            log.info("nft.batch", host_uuid=self.host_uuid, changes=len(changes), transactions=stats.transactions,
                     fallback=stats.fallback, **counts, duration_ms=round((time.perf_counter() - started) * 1000, 3))
        return final

    def _judge_and_realize(self, checked: Sequence[tuple[int, str, EipSpec]], results: list[ChangeResult | None],
                           view: _HostView, stats: _BatchStats) -> None:
        """Under the lock: one read of the rules, each change judged, one transaction for the accepted."""
        started = time.perf_counter()
        every = self._owned()
        by_eip: dict[str, list[OwnedRule]] = {}
        for rule in every:
            by_eip.setdefault(rule.eip_uuid, []).append(rule)
        our_vips = {r.vip for r in every if r.role == "dnat" and r.vip}
        steps: list[_Step] = []
        for i, action, spec in checked:
            owned = by_eip.get(spec.eip_uuid, [])
            try:
                record = self._record(spec.eip_uuid, owned)
                decision = decide(record, action, spec)
                if action == "apply":
                    self._refuse_host_addresses(spec, view.forbidden(self, our_vips))
            except BackendError as exc:  # StaleGeneration, AddressNotAllowed, an unreadable record
                results[i] = result_of(exc)
                continue
            steps.append(_Step(i, action, spec, owned, record, decision))
        if not steps:
            return
        commands: list[dict[str, Any]] = []
        for step in steps:
            commands += [self._delete(r) for r in step.owned]
            if step.action == "apply":
                commands += self._add_rules(step.spec)
        try:
            if commands:  # revokes of absent rules need no transaction (nor create the table)
                stats.transactions += 1
                self._nft_apply(self._skeleton() + commands)
        except BackendTimeout as exc:  # it may have committed: every change's outcome is unknown
            for step in steps:
                results[step.index] = result_of(exc)
            return
        except BackendError as exc:
            if len(steps) == 1:
                results[steps[0].index] = result_of(exc)
                return
            # nft rejected the whole transaction (so nothing of it happened): one at a time, so a bad
            # rule fails alone. Each re-reads the rules and is judged again against unchanged records.
            log.warning("nft.batch_rejected", host_uuid=self.host_uuid, changes=len(steps), error=str(exc))
            stats.fallback = True
            for step in steps:
                try:
                    self._judge_and_realize([(step.index, step.action, step.spec)], results, view, stats)
                except BackendError as alone:  # its rules could not be read again: it alone is not done
                    results[step.index] = result_of(alone)
            return
        # Committed. The records now, before any address step: the transaction replaced or removed the
        # EIPs' rules, and a host must not forget a generation it acted on (even if the apply is undone).
        for step in steps:
            try:
                self._remember(step.spec.eip_uuid, record_after(step.record, step.decision, step.spec))
            except BackendError as exc:
                # The rules changed but the record did not: an unknown outcome (a retry repairs it).
                results[step.index] = result_of(BackendTimeout(f"{step.action} of {step.spec.eip_uuid} committed "
                                                               f"in nft, but {exc}"))
        failed: dict[int, BackendError] = {}
        if self.announce == "address":
            failed = self._announce_vips(steps, every)
        undo = [s for s in steps if s.action == "apply" and s.index in failed]
        if undo:
            self._undo([s.spec for s in undo])
        for step in steps:
            if step.index in failed:
                results[step.index] = result_of(failed[step.index])
            elif results[step.index] is None:
                self._log_done(step, len(checked), started)

    def _log_done(self, step: _Step, batch: int, started: float) -> None:
        timing = {"duration_ms": round((time.perf_counter() - started) * 1000, 3)} if batch == 1 else {}
        spec = step.spec
        if step.action == "apply":
            log.info("nft.applied", eip_uuid=spec.eip_uuid, host_uuid=self.host_uuid, vip=spec.vip,
                     guest_ip=spec.guest_ip, generation=spec.generation, replaced=len(step.owned),
                     repeat=step.decision.same, **timing)
        else:
            log.info("nft.revoked", eip_uuid=spec.eip_uuid, host_uuid=self.host_uuid, removed=len(step.owned),
                     generation=spec.generation, **timing)

    def _refuse_host_addresses(self, spec: EipSpec, forbidden: tuple[set[str], set[str]]) -> None:
        """Refuse to DNAT or announce the host's own addresses or its gateways' (before anything changes)."""
        own, gateways = forbidden
        for field, addr in (("vip", spec.vip), ("guest_ip", spec.guest_ip)):
            if addr in own:
                raise AddressNotAllowed(self.host_uuid, field, addr, "it is an address of this host")
            if addr in gateways:
                raise AddressNotAllowed(self.host_uuid, field, addr, "it is this host's gateway")

    def _forbidden(self, our_vips: set[str]) -> tuple[set[str], set[str]]:
        """The host's own addresses and its gateways', which no spec may use.

        The VIPs eipflow itself put on the public interface are not the host's own: those of its rules,
        and (with ``announce="address"``) any /32 or /128 there, which is how eipflow adds a VIP, so a
        VIP whose rules were lost while its address stayed can be re-applied.
        """
        return self._host_addresses() - our_vips, self._gateways()

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

    def _undo(self, specs: Sequence[EipSpec]) -> None:
        """After a failed address step, take back the rules the transaction just committed for ``specs``.

        The caller then sees a failed apply with nothing of it left behind. Best effort: if even
        this fails, the runner's revoke (a newer generation) removes every rule of the EIP on the host.
        """
        wanted = {s.eip_uuid: s.generation for s in specs}
        try:
            mine = [r for r in self._owned() if wanted.get(r.eip_uuid) == r.generation]
            if mine:
                self._nft_apply([self._delete(r) for r in mine])
        except BackendError as exc:
            for spec in specs:
                log.warning("nft.undo_failed", eip_uuid=spec.eip_uuid, host_uuid=self.host_uuid, error=str(exc))
            return
        for spec in specs:
            log.warning("nft.apply_undone", eip_uuid=spec.eip_uuid, host_uuid=self.host_uuid,
                        removed=sum(r.eip_uuid == spec.eip_uuid for r in mine))

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
        return skeleton(self.table)

    def _add_rules(self, spec: EipSpec) -> list[dict[str, Any]]:
        return rule_pair(self.table, self.public_interface, spec)

    def _delete(self, rule: OwnedRule) -> dict[str, Any]:
        return delete_rule(self.table, rule)

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

    def _announce_vips(self, steps: Sequence[_Step], before: Sequence[OwnedRule]) -> dict[int, BackendError]:
        """After a committed transaction: each VIP it touched is on the public interface iff a rule answers for it.

        One ``ip addr show`` and one ``ip -force -batch`` for the whole batch. A VIP goes only when no rule
        left in the table still answers for it. Returns the steps whose address step failed.
        """
        changed = {s.spec.eip_uuid for s in steps}
        answered = {r.vip for r in before if r.eip_uuid not in changed and r.role == "dnat" and r.vip}
        answered |= {s.spec.vip for s in steps if s.action == "apply"}
        touched: dict[str, list[_Step]] = {}
        for step in steps:
            for vip in {step.spec.vip} | {r.vip for r in step.owned if r.vip}:
                touched.setdefault(vip, []).append(step)
        errors = self._set_addresses({vip: vip in answered for vip in touched})
        failed: dict[int, BackendError] = {}
        for vip, error in errors.items():
            for step in touched[vip]:
                failed.setdefault(step.index, error)
        return failed

    def _set_addresses(self, want: dict[str, bool]) -> dict[str, BackendError]:
        """Make each VIP present (``True``) or absent on the public interface; the VIPs that could not be."""
        assert self.public_interface is not None
        try:
            have = self._interface_addresses()
        except BackendError as exc:
            return dict.fromkeys(want, exc)
        lines: list[str] = []
        added = []
        for vip, present in sorted(want.items()):
            if (vip in have) == present:
                continue
            prefix = 128 if _family(vip) == "ip6" else 32
            verb = "add" if present else "del"
            # nodad: an IPv6 VIP must be usable at once, not after duplicate address detection
            lines.append(f"addr {verb} {vip}/{prefix} dev {self.public_interface}"
                         + (" nodad" if present and prefix == 128 else ""))
            if present:
                added.append(vip)
        if not lines:
            return {}
        errors: dict[str, BackendError] = {}
        # -force: go on past a failed line; what really happened is read back below.
        done = self._run([self.ip, "-force", "-batch", "-"], stdin="\n".join(lines) + "\n")
        if done.returncode != 0:
            try:
                now = self._interface_addresses()
            except BackendError as exc:
                return {vip: exc for vip, present in want.items() if (vip in have) != present}
            why = _first_line(done.stderr)
            for vip, present in want.items():
                if (vip in now) != present:
                    errors[vip] = BackendError(f"ip addr {'add' if present else 'del'} {vip} failed on host "
                                               f"{self.host_uuid}: {why}")
        for vip in added:
            if vip not in errors and _family(vip) == "ip":
                self._announce(vip)
        return errors

    def _interface_addresses(self) -> set[str]:
        assert self.public_interface is not None
        shown = self._run([self.ip, "-j", "addr", "show", "dev", self.public_interface])
        if shown.returncode != 0:
            raise BackendError(f"ip addr show {self.public_interface} failed: {_first_line(shown.stderr)}")
        try:
            links = json.loads(shown.stdout or "[]")
            return {a["local"] for link in links for a in link.get("addr_info", []) if isinstance(a.get("local"), str)}
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise BackendError(f"ip addr show {self.public_interface} printed unreadable JSON") from exc

    def _announce(self, vip: str) -> None:
        """Gratuitous ARP, so neighbours that cached the VIP on its previous host switch now (best effort)."""
        if self.namespace is not None:
            return  # a raw socket opens in *this* process's namespace; the agent runs inside the host's
        assert self.public_interface is not None
        try:
            send_garp(self.public_interface, vip)
        except OSError as exc:
            log.warning("nft.garp_failed", vip=vip, interface=self.public_interface, error=str(exc))


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"

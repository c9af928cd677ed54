"""The behaviour contract as executable checks, for tests, ``simulate`` and operators.

:func:`check` reads the database (and, when given, the dataplane) and returns
every violation it finds; an empty list means the contract holds. Call it at
quiescence (no work due, nothing running): in-flight rows are then violations.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from .backends.base import ListsRules
from .machine import BOUND, IN_FLIGHT
from .store import Store
from .table import edges
from .values import Eip, EipSpec, TransitionRecord

__all__ = ["Violation", "check", "check_history"]

_LEGAL = {(e.source, e.event, e.target) for e in edges()}


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant: which rule, which EIP (if any), and what was seen."""

    rule: str
    eip_uuid: str | None
    detail: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.eip_uuid or '-'}: {self.detail}"


def check_history(eip_uuid: str, records: list[TransitionRecord], row: Eip | None) -> list[Violation]:
    """One history row per version from 1, chained states, legal edges only, ending where the row is."""
    out: list[Violation] = []
    expected_from = ""
    for n, rec in enumerate(records, start=1):
        if rec.version != n:
            out.append(Violation("history.versions", eip_uuid, f"version {rec.version} at position {n}"))
            break
        if rec.from_state != expected_from:
            out.append(Violation("history.chain", eip_uuid, f"v{rec.version} starts at {rec.from_state!r}, "
                                                            f"previous ended at {expected_from!r}"))
        if n == 1:
            if (rec.event, rec.to_state) != ("create", "detached"):
                out.append(Violation("history.create", eip_uuid, f"first entry is {rec.event} → {rec.to_state}"))
        elif (rec.from_state, rec.event, rec.to_state) not in _LEGAL:
            out.append(Violation("history.illegal_edge", eip_uuid,
                                 f"v{rec.version}: {rec.from_state} --{rec.event}--> {rec.to_state}"))
        expected_from = rec.to_state
    if row is not None:
        if not records or records[-1].version != row.version or records[-1].to_state != row.state:
            last = f"v{records[-1].version} {records[-1].to_state}" if records else "none"
            out.append(Violation("history.head", eip_uuid, f"row is v{row.version} {row.state}, history ends {last}"))
    elif records and records[-1].to_state != "deleted":
        out.append(Violation("history.head", eip_uuid, f"row is gone but history ends in {records[-1].to_state}"))
    return out


def check(store: Store, backend: object | None = None, *, quiescent: bool = True) -> list[Violation]:
    """Every violation of the behaviour contract visible in the database (and dataplane, if listable).

    Args:
        store: the store to read.
        backend: a backend; when it implements ``rules()`` the dataplane must equal exactly the set of
            attached EIPs on their recorded hosts, and when it records ``overlaps`` (the simulated ones)
            no EIP may have seen two *effective* backend calls (calls that changed a host) in flight on
            one host at once — a call the host's generation check refused changes nothing.
        quiescent: also require that no EIP is in flight and no work is due or running.
    """
    out: list[Violation] = []
    rows = store.eips()
    by_uuid = {e.uuid: e for e in rows}

    # Bindings match states; one EIP per guest IP.
    seen_ips: dict[str, str] = {}
    for e in rows:
        bound = e.vm_nic_uuid is not None and e.guest_ip is not None
        if e.state == "detached" and (bound or e.applied_host is not None):
            out.append(Violation("binding.detached", e.uuid, f"detached but bound to {e.vm_nic_uuid}/{e.guest_ip}"))
        if e.state in BOUND and not bound:
            out.append(Violation("binding.missing", e.uuid, f"{e.state} without a binding"))
        if e.state == "released" and e.applied_host is not None:
            out.append(Violation("binding.released", e.uuid, f"released but applied_host={e.applied_host}"))
        if e.guest_ip is not None:
            other = seen_ips.setdefault(e.guest_ip, e.uuid)
            if other != e.uuid:
                out.append(Violation("binding.duplicate_guest_ip", e.uuid, f"{e.guest_ip} also on {other}"))
        if (e.state in IN_FLIGHT) != (e.work_id is not None):
            out.append(Violation("work.link", e.uuid, f"{e.state} with work_id={e.work_id}"))
        if quiescent and e.state in IN_FLIGHT:
            out.append(Violation("quiescence.in_flight", e.uuid, f"still {e.state} (last_error={e.last_error})"))

    # History: per EIP, including deleted ones.
    grouped: dict[str, list[TransitionRecord]] = defaultdict(list)
    for rec in store.all_history():
        grouped[rec.eip_uuid].append(rec)
    for uuid in sorted(set(grouped) | set(by_uuid)):
        out.extend(check_history(uuid, grouped.get(uuid, []), by_uuid.get(uuid)))

    if quiescent:
        for item in store.list_work(statuses=["pending", "running"]):
            out.append(Violation("quiescence.work", item.eip_uuid,
                                 f"work item {item.id} ({item.action}) is {item.status}"))

    if isinstance(backend, ListsRules):
        out.extend(_dataplane(rows, backend.rules(), quiescent))
    overlaps = getattr(backend, "overlaps", None)
    if overlaps:
        for uuid in sorted(set(overlaps)):
            out.append(Violation("backend.overlap", uuid, "two effective backend calls were in flight at once"))
    return out


def _dataplane(rows: Iterable[Eip], rules: Iterable[EipSpec], quiescent: bool) -> list[Violation]:
    out: list[Violation] = []
    want = {
        (e.applied_host, e.uuid): (e.guest_ip, e.vm_nic_uuid, e.vip)
        for e in rows
        if e.state == "attached" and e.applied_host is not None
    }
    have = {(r.host_uuid, r.eip_uuid): (r.guest_ip, r.vm_nic_uuid, r.vip) for r in rules}
    states = {e.uuid: e.state for e in rows}
    for key, value in sorted(have.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
        host, uuid = key
        if key not in want:
            if quiescent or states.get(uuid) in (None, "detached", "released", "attached"):
                out.append(Violation("dataplane.leaked", uuid, f"rule on {host} ({value[2]} → {value[0]}) "
                                                               f"but the EIP is {states.get(uuid, 'gone')}"))
        elif want[key] != value:
            out.append(Violation("dataplane.mismatch", uuid, f"rule on {host} is {value}, row says {want[key]}"))
    for key in sorted(set(want) - set(have), key=lambda k: (k[0] or "", k[1])):
        out.append(Violation("dataplane.missing", key[1], f"attached on {key[0]} but no rule there"))
    return out

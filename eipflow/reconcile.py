"""The reconciler: level-triggered repair of what workers and hosts left behind.

Two jobs, both safe to run at any time and from any number of processes:

1. **Re-drive in-flight rows.** A row in an in-flight state owns one work item.
   If that item's lease expired (its worker died) or it is due and nobody ran it,
   the reconciler runs it; if the item is gone, it gives the row a fresh one.
   Parked items are reported, not retried: an operator decides (``work retry``).
2. **Repair drift**, like a Kubernetes controller or Neutron's full sync: ask the
   backend what is really realized (the optional ``rules(host)`` method,
   :class:`~eipflow.ListsRules`) and fix both ways. A rule the database does not
   hold as attached is *stray*: a cleanup revoke item removes it (and, when the
   EIP still exists, a ``stray_detected`` history entry says why). An attached
   EIP whose rule is missing (host reboot) is re-applied through the normal path
   (``drift_detected``: ``attached → applying``), with history and retries.

To avoid "repairing" a row that moved while the dataplane was being read, the
reconciler reads the rows, then the rules, then the rows again, and judges only
rows that did not change in between (the others are left to the next pass).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ._logging import get_logger
from .api import Eipflow
from .backends.base import ListsRules
from .errors import ConflictError, EipNotFound
from .machine import IN_FLIGHT, work_for
from .runner import Runner
from .store import NewWork
from .values import Eip, EipSpec, WorkItem

__all__ = ["ReconcileReport", "Reconciler", "Repair", "reconcile"]

log = get_logger(__name__)

ACTOR = "reconciler"

#: repair kinds, in the order a pass executes them
KINDS = ("redrive", "relink", "revoke_stray", "reapply_missing", "parked")


@dataclass(frozen=True, slots=True)
class Repair:
    """One planned repair.

    Attributes:
        kind: ``redrive`` (run the row's expired or overdue work item), ``relink`` (the row's work
            item is gone: create a new one), ``revoke_stray`` (a rule nobody holds), ``reapply_missing``
            (an attached EIP without its rule), or ``parked`` (reported only: needs ``work retry``).
        eip_uuid: the EIP concerned (a stray rule may name an EIP that no longer exists).
        host_uuid: the host of the rule concerned, when there is one.
        reason: why, in words an operator can act on.
        work_id: the work item concerned (redrive, parked), when there is one.
        state: the EIP's state when planned (``None``: no such EIP).
        version: the EIP's version when planned (execution skips a row that moved since).
        rule: the stray rule itself (``revoke_stray``).
    """

    kind: str
    eip_uuid: str
    host_uuid: str | None
    reason: str
    work_id: int | None = None
    state: str | None = None
    version: int | None = None
    rule: EipSpec | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rule"] = asdict(self.rule) if self.rule is not None else None
        return data


@dataclass
class ReconcileReport:
    """What one pass planned and what became of each repair."""

    dry_run: bool
    host_uuid: str | None
    drift_checked: bool
    planned: list[Repair] = field(default_factory=list)
    #: ``(repair, outcome)``: ``done``, ``reported``, ``queued`` (left as a durable item), or ``skipped: why``
    outcomes: list[tuple[Repair, str]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Nothing needed repair."""
        return not self.planned

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "host_uuid": self.host_uuid,
            "drift_checked": self.drift_checked,
            "planned": [r.to_dict() for r in self.planned],
            "outcomes": [{**r.to_dict(), "outcome": o} for r, o in self.outcomes],
        }


class Reconciler:
    """Plans and executes repairs against one :class:`~eipflow.Eipflow`.

    Args:
        flow: the opened flow (its store, backend and retry policy are used).
        runner: the runner that executes repairs (default: the flow's own).
    """

    def __init__(self, flow: Eipflow, *, runner: Runner | None = None) -> None:
        self.flow = flow
        self.store = flow.store
        self.runner = runner or flow.runner
        self._expected: dict[str, int] = {}  # versions the plan judged (our own history entries move them)

    # -- planning ------------------------------------------------------------------------------
    def plan(self, host: str | None = None) -> tuple[list[Repair], bool]:
        """The repairs needed now, and whether the dataplane could be checked (the backend lists rules)."""
        now = self.store.clock.now()
        lease_now = self.store.lease_clock.now()  # leases are judged on the shared clock, never ours
        before = self._rows(host)
        backend = self.flow.backend
        rules: list[EipSpec] | None = backend.rules(host) if isinstance(backend, ListsRules) else None
        after = self._rows(host)
        work = self.store.list_work(statuses=["pending", "running", "parked"])
        by_id = {w.id: w for w in work}

        repairs: list[Repair] = []
        for eip in after.values():
            if eip.state in IN_FLIGHT:
                repairs.extend(self._in_flight(eip, by_id.get(eip.work_id) if eip.work_id else None, now, lease_now))
        for item in work:
            if item.cleanup and item.spec is not None and host in (None, item.spec.host_uuid):
                repairs.extend(self._cleanup(item, now, lease_now))
        if rules is not None:
            settled = {u: e for u, e in after.items() if u in before and before[u].version == e.version}
            gone = {r.eip_uuid for r in rules} - set(before) - set(after)
            queued = {
                (w.spec.host_uuid, w.eip_uuid)
                for w in work
                if w.cleanup and w.spec is not None and w.status != "parked"
            }
            repairs.extend(self._drift(rules, settled, gone, queued))
        repairs.sort(key=lambda r: KINDS.index(r.kind))
        return repairs, rules is not None

    def _rows(self, host: str | None) -> dict[str, Eip]:
        return {e.uuid: e for e in self.store.eips(host_uuid=host)}

    def _in_flight(self, eip: Eip, item: WorkItem | None, now: Any, lease_now: Any) -> list[Repair]:
        def repair(kind: str, reason: str) -> list[Repair]:
            return [Repair(kind, eip.uuid, eip.applied_host or eip.host_uuid, reason,
                           work_id=item.id if item else None, state=eip.state, version=eip.version)]

        if item is None:
            return repair("relink", f"{eip.state} but its work item {eip.work_id} is gone")
        if item.status == "parked":
            return repair("parked", f"{item.action} parked: {item.last_error}")
        if item.status == "running" and item.lease_expires_at is not None and item.lease_expires_at < lease_now:
            return repair("redrive", f"{item.action} leased by {item.lease_owner} expired at "
                                     f"{item.lease_expires_at.isoformat()}")
        if item.status == "pending" and item.due_at <= now:
            return repair("redrive", f"{item.action} due since {item.due_at.isoformat()} and not run")
        return []  # leased by a live worker, or waiting for its backoff

    def _cleanup(self, item: WorkItem, now: Any, lease_now: Any) -> list[Repair]:
        assert item.spec is not None
        host = item.spec.host_uuid
        if item.status == "parked":
            return [Repair("parked", item.eip_uuid, host, f"cleanup revoke parked: {item.last_error}", work_id=item.id)]
        expired = item.status == "running" and item.lease_expires_at is not None and item.lease_expires_at < lease_now
        if expired or (item.status == "pending" and item.due_at <= now):
            return [Repair("redrive", item.eip_uuid, host, "cleanup revoke overdue", work_id=item.id)]
        return []

    def _drift(
        self, rules: Iterable[EipSpec], rows: dict[str, Eip], gone: set[str], queued: set[tuple[str, str]]
    ) -> list[Repair]:
        out: list[Repair] = []
        held: set[tuple[str, str]] = set()
        for rule in rules:
            key = (rule.host_uuid, rule.eip_uuid)
            eip = rows.get(rule.eip_uuid)
            if eip is None and rule.eip_uuid not in gone:
                continue  # the row appeared or moved while we read: judge it next pass
            if eip is not None and eip.state in IN_FLIGHT:
                continue  # its own work item decides what this host should hold
            if eip is not None and eip.state == "attached" and _matches(eip, rule):
                held.add(key)
                continue
            if key in queued:
                continue  # a cleanup revoke for it is already queued
            if eip is None:
                why = f"rule on {rule.host_uuid} for an EIP that does not exist"
            elif eip.state == "attached" and eip.applied_host == rule.host_uuid:
                why = (f"rule on {rule.host_uuid} maps {rule.vip} → {rule.guest_ip} ({rule.vm_nic_uuid}); "
                       f"the EIP is bound to {eip.guest_ip} ({eip.vm_nic_uuid})")
            else:
                where = f" on {eip.applied_host}" if eip.state == "attached" else ""
                why = f"rule on {rule.host_uuid} but the EIP is {eip.state}{where}"
            out.append(Repair("revoke_stray", rule.eip_uuid, rule.host_uuid, why,
                              state=eip.state if eip else None, version=eip.version if eip else None, rule=rule))
        for eip in rows.values():
            if eip.state == "attached" and eip.applied_host is not None and (eip.applied_host, eip.uuid) not in held:
                out.append(Repair("reapply_missing", eip.uuid, eip.applied_host,
                                  f"attached on {eip.applied_host} but the host has no rule for it",
                                  state=eip.state, version=eip.version))
        return out

    # -- execution -----------------------------------------------------------------------------
    def run(self, host: str | None = None, *, dry_run: bool = False) -> ReconcileReport:
        """Plan, then (unless ``dry_run``) execute every repair. Returns the report."""
        planned, drift_checked = self.plan(host)
        report = ReconcileReport(dry_run=dry_run, host_uuid=host, drift_checked=drift_checked, planned=planned)
        log.info("reconcile.planned", host_uuid=host, repairs=len(planned), dry_run=dry_run,
                 drift_checked=drift_checked)
        if dry_run:
            return report
        self._expected = {r.eip_uuid: r.version for r in planned if r.version is not None}
        for repair in planned:
            try:
                outcome = self._execute(repair)
            except (ConflictError, EipNotFound) as exc:
                outcome = f"skipped: {exc}"
            report.outcomes.append((repair, outcome))
            log.info("reconcile.repair", kind=repair.kind, eip_uuid=repair.eip_uuid, host_uuid=repair.host_uuid,
                     reason=repair.reason, outcome=outcome)
        return report

    def _execute(self, repair: Repair) -> str:
        if repair.kind == "parked":
            return "reported"
        if repair.kind == "redrive":
            assert repair.work_id is not None
            if self.runner.run_item(repair.work_id) is None:
                return "skipped: claimed by another worker meanwhile"
            self.runner.drive(repair.eip_uuid)
            return "done"
        if repair.kind == "relink":
            return self._relink(repair)
        if repair.kind == "revoke_stray":
            return self._revoke_stray(repair)
        return self._reapply(repair)

    def _current(self, repair: Repair) -> Eip | None:
        eip = self.store.get(repair.eip_uuid)
        if eip is not None and eip.version != self._expected.get(repair.eip_uuid):
            return None
        return eip

    def _fire(self, repair: Repair, event: str, details: dict[str, Any]) -> Eip:
        expected = self._expected.get(repair.eip_uuid)

        def unchanged(row: Eip) -> dict[str, Any]:
            if row.version != expected:
                raise _Moved(row.uuid)
            return {}

        eip = self.runner.fire(repair.eip_uuid, event, unchanged, actor=ACTOR, details=details)
        self._expected[repair.eip_uuid] = eip.version
        return eip

    def _relink(self, repair: Repair) -> str:
        eip = self._current(repair)
        if eip is None:
            return "skipped: the row moved since the plan"
        action = work_for(eip.state)
        assert action is not None and eip.vm_nic_uuid is not None and eip.guest_ip is not None
        host = None if eip.state == "binding" else eip.applied_host  # binding fixes its host when it proceeds
        # A fresh generation, above every call the lost item may still have in flight somewhere.
        generation = eip.version if host is not None else None
        work_id = self.store.relink_work(
            eip, NewWork(action, eip.vip, eip.vm_nic_uuid, eip.guest_ip, host, generation=generation)
        )
        if work_id is None:
            return "skipped: the row moved since the plan"
        log.warning("reconcile.relinked", eip_uuid=eip.uuid, work_id=work_id, state=eip.state)
        self.runner.drive(eip.uuid)
        return "done"

    def _revoke_stray(self, repair: Repair) -> str:
        rule = repair.rule
        assert rule is not None
        if repair.version is not None:
            # Intent before action: the repair and its reason go into the EIP's history first.
            details = {"reason": repair.reason, "host_uuid": rule.host_uuid, "guest_ip": rule.guest_ip}
            self._fire(repair, "stray_detected", details)
        # The revoke carries the generation the host reported for the stray rule: if the EIP is applied
        # there again (a newer generation) before the revoke lands, the host refuses it.
        work_id = self.store.add_work(
            rule.eip_uuid,
            NewWork("revoke", rule.vip, rule.vm_nic_uuid, rule.guest_ip, rule.host_uuid, cleanup=True,
                    generation=rule.generation),
        )
        item = self.runner.run_item(work_id)
        done = self.store.work_item(work_id)
        if item is None or done is None or done.status != "done":
            return "queued" if done is None or done.status != "cancelled" else "skipped: the rule is wanted again"
        return "done"

    def _reapply(self, repair: Repair) -> str:
        details = {"reason": repair.reason, "host_uuid": repair.host_uuid}
        self._fire(repair, "drift_detected", details)
        eip = self.runner.drive(repair.eip_uuid)
        return "done" if eip is not None and eip.state == "attached" else f"queued ({eip.state if eip else 'gone'})"


class _Moved(ConflictError):
    def __init__(self, eip_uuid: str) -> None:
        self.eip_uuid = eip_uuid
        super().__init__(f"EIP {eip_uuid} changed since the plan; the next pass judges it again")


def _matches(eip: Eip, rule: EipSpec) -> bool:
    return (eip.applied_host, eip.vip, eip.guest_ip, eip.vm_nic_uuid) == (
        rule.host_uuid, rule.vip, rule.guest_ip, rule.vm_nic_uuid
    )


def reconcile(flow: Eipflow, host: str | None = None, *, dry_run: bool = False) -> ReconcileReport:
    """One reconcile pass (what ``eipflow reconcile`` runs). See :class:`Reconciler`."""
    return Reconciler(flow).run(host, dry_run=dry_run)

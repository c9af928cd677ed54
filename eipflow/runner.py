"""The runner: the one place that combines the machine, the store and a backend.

Two kinds of steps:

- **intents** (:meth:`Runner.fire`): load the row, merge the event's payload into
  its facts, resolve the target with the compiled machine, plan the entry
  effects (binding, work item) and compare-and-swap. Lost races reload and
  decide again; an event the new state does not allow raises
  :class:`~eipflow.errors.IllegalTransition`.
- **work** (:meth:`Runner.run_item`): lease a work item, call the backend with
  no transaction open, then complete: re-read the row (and the VM's latest
  facts) and send ``apply_ok``/``apply_failed``/``revoke_ok``/``revoke_failed``
  — fenced by the item id and lease, so an operation that no longer owns the EIP
  never moves it.
"""

from __future__ import annotations

import random
import time
import uuid as uuidlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from ._logging import get_logger
from .backends.base import Backend
from .backends.batch import MAX_BATCH, Change, run_changes
from .errors import BackendError, BackendTimeout, EipNotFound, IllegalTransition, StaleGeneration, VersionConflict
from .faultpoints import crash_point
from .heartbeat import Heartbeat
from .machine import CONTINUES, EFFECTS, Facts
from .store import ChainLease, LeasedWork, LeaseLost, NewWork, PlannedTransition, Store, WorkUpdate
from .table import resolve
from .values import Eip, EipSpec, Vm, WorkItem

__all__ = ["NotApplicable", "RetryPolicy", "Runner", "default_owner"]

log = get_logger("eipflow.runner")

MAX_CAS_ATTEMPTS = 50
_FACT_KEYS = ("desired", "host_uuid", "applied_host", "attach_confirmed")
_FACT_SET = frozenset(_FACT_KEYS)


class _Merged:
    """The row's spec fields with the event's changes applied, looked up only when a plan needs them."""

    __slots__ = ("changes", "eip")

    def __init__(self, eip: Eip, changes: Mapping[str, Any]) -> None:
        self.eip = eip
        self.changes = changes

    def __getitem__(self, key: str) -> Any:
        return self.changes[key] if key in self.changes else getattr(self.eip, key)


class NotApplicable(Exception):
    """Raised by a ``changes`` callable: this (reloaded) row is no longer one the intent is about."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Durable retries of failed backend work: exponential backoff with jitter, then park.

    Retries are rows with a due time (any worker may pick them up after a crash), so this is data,
    not an in-process retry loop like tenacity's.
    """

    max_attempts: int = 8
    base_delay_s: float = 1.0
    factor: float = 2.0
    max_delay_s: float = 300.0
    jitter: float = 0.2  # +/- fraction of the delay

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        raw = min(self.max_delay_s, self.base_delay_s * self.factor ** max(0, attempt - 1))
        spread = raw * self.jitter
        return max(0.0, raw + (rng or random).uniform(-spread, spread))


@dataclass(frozen=True, slots=True)
class Reschedule:
    """What a failed attempt does to its work item: due again at ``due_at`` (``pending``), or ``parked``."""

    status: str  # "pending" | "parked"
    error: str
    due_at: datetime | None = None

    def columns(self) -> dict[str, Any]:
        """The item's columns this writes (its lease given up)."""
        values: dict[str, Any] = {"status": self.status, "lease_owner": None, "lease_expires_at": None,
                                  "last_error": self.error}
        if self.due_at is not None:
            values["due_at"] = self.due_at
        return values

    def log_fields(self) -> dict[str, Any]:
        return {"status": self.status, "due_at": self.due_at.isoformat() if self.due_at else None}


def default_owner() -> str:
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}:{uuidlib.uuid4().hex[:8]}"


def _facts(eip: Eip, changes: Mapping[str, Any]) -> Facts:
    if not changes.keys() & _FACT_SET:
        return Facts(eip.desired, eip.host_uuid, eip.applied_host, eip.attach_confirmed)
    get = changes.get
    return Facts(get("desired", eip.desired), get("host_uuid", eip.host_uuid), get("applied_host", eip.applied_host),
                 get("attach_confirmed", eip.attach_confirmed))


class Runner:
    """Drives EIPs through the machine against one store and one backend."""

    def __init__(
        self,
        store: Store,
        backend: Backend,
        *,
        owner: str | None = None,
        lease_seconds: float = 60.0,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
        heartbeat_interval: float | None = -1.0,
    ) -> None:
        self.store = store
        self.backend = backend
        self.owner = owner or default_owner()
        self.lease_seconds = lease_seconds
        self.retry = retry or RetryPolicy()
        self.rng = rng or random.Random()
        self.conflicts = 0  # lost compare-and-swaps, for reports
        #: renews the lease of every item this runner executes (default every third of the lease;
        #: ``None``/``0`` turns it off) — whoever calls: a worker, an inline API call, a step, the reconciler
        self.heartbeat = Heartbeat(
            store, self.owner, lease_seconds, lease_seconds / 3 if heartbeat_interval == -1.0 else heartbeat_interval
        )

    # -- planning ------------------------------------------------------------------------------
    def _plan(
        self,
        eip: Eip,
        event: str,
        changes: Mapping[str, Any],
        *,
        item: WorkItem | None = None,
        actor: str | None = None,
        op_id: str | None = None,
        details: Mapping[str, Any] | None = None,
        retry_update: Reschedule | None = None,
    ) -> PlannedTransition:
        changes = dict(changes)
        target = resolve(eip.state, event, _facts(eip, changes), eip_uuid=eip.uuid)
        merged = _Merged(eip, dict(changes))  # as requested, before the entry effects below add to changes
        new_work: NewWork | None = None
        finish: LeasedWork | None = None
        update: WorkUpdate | None = None
        predicates: dict[str, Any] = {}

        continues = (eip.state, target) in CONTINUES  # the attach's item goes on
        # The fencing token of work this transition creates (or fixes): the version it writes. Versions
        # only grow for an EIP, so every later binding or host decision carries a higher generation.
        generation = eip.version + 1
        if target == eip.state:
            if item is not None and retry_update is not None:
                update = WorkUpdate(item.id, self.owner, retry_update.columns())
        else:
            # What entering ``target`` does is declared once, in machine.EFFECTS; this only applies it.
            effects = EFFECTS[target]
            if item is not None and not continues:
                finish = LeasedWork(item.id, self.owner)
            changes.update(effects.sets)
            if effects.work is None and target != "deleted":
                changes["work_id"] = None
            if target == "detached" and eip.state == "rolling_back" and item is not None and item.spec is not None:
                # The conditional rollback: clear the binding only if it is still the one we applied.
                predicates = {"vm_nic_uuid": item.spec.vm_nic_uuid, "guest_ip": item.spec.guest_ip}
            if effects.records_applied_host:
                changes["applied_host"] = merged["host_uuid"]
            if effects.work is not None:
                host = {"placed": merged["host_uuid"], "applied": merged["applied_host"]}.get(effects.work_host or "")
                assert host is not None or effects.work_host is None, f"{eip.uuid}: {target} needs a host"
                if continues and item is not None:
                    update = WorkUpdate(item.id, self.owner, {"host_uuid": host, "generation": generation})
                else:
                    new_work = NewWork(effects.work, merged["vip"], merged["vm_nic_uuid"], merged["guest_ip"], host,
                                       generation=generation if host is not None else None)
        return PlannedTransition(
            eip=eip,
            event=event,
            target=target,
            changes=changes,
            predicates=predicates,
            new_work=new_work,
            finish_work=finish,
            update_work=update,
            actor=actor or self.owner,
            op_id=op_id,
            details=details or {},
        )

    @staticmethod
    def _log_transition(plan: PlannedTransition, result: Eip, started: float, **extra: Any) -> None:
        log.info(
            "transition.applied",
            eip_uuid=result.uuid,
            trigger=plan.event,
            state_from=plan.eip.state,
            state_to=plan.target,
            version=result.version,
            actor=plan.actor,
            op_id=plan.op_id,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            **extra,
        )

    # -- intents -------------------------------------------------------------------------------
    def fire(
        self,
        uuid: str,
        event: str,
        changes: Mapping[str, Any] | Callable[[Eip], Mapping[str, Any]] | None = None,
        *,
        actor: str | None = None,
        op_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> Eip:
        """Send an intent event to one EIP, retrying lost compare-and-swaps against fresh rows."""
        started = time.perf_counter()

        seen = 0  # the version the last lost compare-and-swap expected, for the error

        def decide(eip: Eip, _vm: Vm | None) -> PlannedTransition:
            nonlocal seen
            seen = eip.version
            payload = changes(eip) if callable(changes) else (changes or {})
            return self._plan(eip, event, payload, actor=actor, op_id=op_id, details=details)

        for _ in range(MAX_CAS_ATTEMPTS):
            done = self.store.transition(uuid, decide)
            if done is not None:
                result, plan = done
                self._log_transition(plan, result, started)
                return result
            self.conflicts += 1
            log.debug("transition.conflict", eip_uuid=uuid, trigger=event, version=seen)
        raise VersionConflict(uuid, seen, MAX_CAS_ATTEMPTS)

    def start(
        self,
        uuid: str,
        event: str,
        changes: Mapping[str, Any] | Callable[[Eip], Mapping[str, Any]],
        *,
        actor: str | None = None,
        op_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> tuple[Eip, Eip, WorkItem | None]:
        """Send an intent and, in the same transaction, lease the work it creates (and take its first step).

        The inline flows' first transaction. An attach persists the binding, leases its apply to this
        runner and proceeds to ``applying`` (or straight to ``released`` for a stopped VM) in one commit,
        reading the VM's facts under a share lock — with the same history as the two-step path
        (``attach``, then ``proceed``). A detach or delete that needs a revoke leases it in the same commit.
        Returns ``(row after the intent, row as committed, leased item)``; the item is ``None`` when no
        leased work is left to run (the caller then drives as usual).
        """
        started = time.perf_counter()
        seen = 0
        chained: dict[str, Any] = {}

        def then(written: Eip, read_vm: Callable[[], Vm | None]) -> PlannedTransition | bool | None:
            chained.clear()
            work: NewWork | None = chained_plan["plan"].new_work
            if written.work_id is None or work is None:
                return None
            item = self._leased(written.work_id, written.uuid, work)
            chained.update(intent=written, item=item)
            if written.state != "binding":
                return item.spec is not None or None  # lease a runnable item (a revoke); nothing more to write
            try:
                plan = self._plan(written, "proceed", _placement(written, read_vm()), item=item,
                                  details={"work_id": item.id, "attempt": item.attempts})
            except IllegalTransition:
                chained.clear()
                return None
            chained["plan"] = plan
            return plan

        chained_plan: dict[str, PlannedTransition] = {}

        def decide(eip: Eip, _vm: Vm | None) -> PlannedTransition:
            nonlocal seen
            seen = eip.version
            payload = changes(eip) if callable(changes) else changes
            plan = self._plan(eip, event, payload, actor=actor, op_id=op_id, details=details)
            chained_plan["plan"] = plan
            return replace(plan, chain=ChainLease(self.owner, self.lease_seconds, then))

        for _ in range(MAX_CAS_ATTEMPTS):
            chained.clear()
            done = self.store.transition(uuid, decide)
            if done is None:
                self.conflicts += 1
                log.debug("transition.conflict", eip_uuid=uuid, trigger=event, version=seen)
                continue
            result, plan = done
            if not chained:
                self._log_transition(plan, result, started)
                return result, result, None
            intent: Eip = chained["intent"]
            item: WorkItem = chained["item"]
            self._log_transition(plan, intent, started, leased=item.id)
            if "plan" not in chained:
                return intent, result, item  # a leased revoke (detach, delete)
            self._log_transition(chained["plan"], result, started, inline=True)
            # The step-by-step path's crash point between the proceed's decision and what follows it: here the
            # proceed has committed with the intent (a caller killed now leaves its leased item to a worker).
            crash_point("before_complete", "proceed")
            if result.state != "applying" or result.work_id != item.id:
                return intent, result, None  # released (a stopped VM): the proceed finished the item
            assert result.applied_host is not None and result.vm_nic_uuid and result.guest_ip
            spec = EipSpec(result.uuid, result.vip, result.vm_nic_uuid, result.guest_ip, result.applied_host,
                           result.version)
            return intent, result, replace(item, spec=spec)
        raise VersionConflict(uuid, seen, MAX_CAS_ATTEMPTS)

    def fire_many(
        self,
        rows: list[Eip],
        event: str,
        changes: Callable[[Eip], Mapping[str, Any]],
        *,
        actor: str | None = None,
        op_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> list[Eip]:
        """Send one intent to many EIPs (a VM's), batched: one transaction, a handful of statements.

        Rows the event does not apply to (illegal in their state) are skipped. If any row moved since it
        was read, the batch is rolled back and each row goes through :meth:`fire` (reload, decide again).
        """
        return self.fire_many_leased(rows, event, changes, actor=actor, op_id=op_id, details=details,
                                     lease=False)[0]

    def fire_many_leased(
        self,
        rows: list[Eip],
        event: str,
        changes: Callable[[Eip], Mapping[str, Any]],
        *,
        actor: str | None = None,
        op_id: str | None = None,
        details: Mapping[str, Any] | None = None,
        lease: bool = True,
    ) -> tuple[list[Eip], list[WorkItem]]:
        """:meth:`fire_many`, leasing to this runner, in the same transaction, every work item the intents create.

        The fan-outs' first transaction (a VM stop: every release recorded and every revoke leased, one
        commit); :meth:`run_batch` then runs the leased items. Returns the rows as written and the leased
        items (none for rows that went the one-by-one way after a lost compare-and-swap: drive those).
        """
        started = time.perf_counter()
        plans = []
        for eip in rows:
            try:
                plans.append(self._plan(eip, event, changes(eip), actor=actor, op_id=op_id, details=details))
            except (IllegalTransition, NotApplicable):
                continue
        if lease and len(plans) == 1:  # one EIP: the single inline shape (intent and lease in one commit)
            try:
                _intent, committed, item = self.start(plans[0].eip.uuid, event, changes, actor=actor, op_id=op_id,
                                                      details=details)
            except (IllegalTransition, EipNotFound, NotApplicable):
                return [], []
            return [committed], [item] if item is not None else []
        lease_to = (self.owner, self.lease_seconds) if lease else None
        written = self.store.commit_many(plans, lease_to=lease_to) if len(plans) > 1 else None
        if written is None:
            out = []
            for plan in plans:
                try:
                    out.append(self.fire(plan.eip.uuid, event, changes, actor=actor, op_id=op_id, details=details))
                except (IllegalTransition, EipNotFound, NotApplicable):
                    continue  # moved on meanwhile (detached, deleted, rebound): nothing of this intent applies
            return out, []
        items = []
        for plan, result in zip(plans, written, strict=True):
            self._log_transition(plan, result, started, batch=len(plans))
            if lease and plan.new_work is not None and result.work_id is not None:
                items.append(self._leased(result.work_id, result.uuid, plan.new_work))
        return written, items

    def _leased(self, work_id: int, eip_uuid: str, work: NewWork) -> WorkItem:
        """The item a transaction just inserted and leased to this runner, as :meth:`run_batch` takes it
        (the lease's expiry is the database's; the heartbeat renews it by id)."""
        now = self.store.clock.now()
        spec = None
        if work.host_uuid is not None and work.generation is not None:
            spec = EipSpec(eip_uuid, work.vip, work.vm_nic_uuid, work.guest_ip, work.host_uuid, work.generation)
        return WorkItem(work_id, eip_uuid, work.action, spec, "running", 1, now, self.owner, None, None, work.cleanup,
                        now, now)

    # -- work ----------------------------------------------------------------------------------
    def drive(self, uuid: str, *, max_steps: int = 64) -> Eip | None:
        """Run the EIP's due work inline until it is stable, not due yet, or leased by someone else."""
        for _ in range(max_steps):
            eip = self.store.get(uuid)
            if eip is None or eip.work_id is None:
                return eip
            if self.run_item(eip.work_id) is None:
                return self.store.get(uuid)
        return self.store.get(uuid)

    def run_item(self, work_id: int) -> WorkItem | None:
        """Claim and execute one work item. Returns the item, or ``None`` when it could not be claimed."""
        item = self.store.claim(work_id, self.owner, self.lease_seconds)
        if item is None:
            return None
        return self.run_claimed(item)

    def run_claimed(self, item: WorkItem) -> WorkItem:
        """Execute an item this runner's owner already leased (a worker's ``SKIP LOCKED`` claim)."""
        self.run_leased(item)
        return item

    def run_leased(self, item: WorkItem, row: Eip | None = None) -> Eip | None:
        """Execute a leased item; the EIP's row once its completion is written (``None``: deleted, fenced
        out, or nothing completed). ``row``: the row as this caller just committed it (no re-read)."""
        log.debug("work.claimed", work_id=item.id, eip_uuid=item.eip_uuid, action=item.action, attempt=item.attempts)
        crash_point("after_claim")
        try:
            with self.heartbeat.holding(item):
                return self._execute_batch([item], {row.uuid: row} if row is not None else None).get(item.id)
        except LeaseLost:
            log.warning("work.fenced", work_id=item.id, eip_uuid=item.eip_uuid, action=item.action)
        return None

    def drive_many(self, uuids: Sequence[str], *, max_rounds: int = 64) -> dict[str, Eip]:
        """:meth:`drive` for many EIPs at once (a VM's, a host's): claim, call and complete in batches.

        Each round leases every EIP's due work item in one transaction, makes one backend call per host
        (and :data:`MAX_BATCH` changes), and completes them all in one transaction — O(1) transactions
        and backend calls per batch whatever the number of EIPs. Items leased by someone else are left to
        them. Returns the rows that still exist, by uuid.
        """
        pending = list(dict.fromkeys(uuids))
        for _ in range(max_rounds):
            rows = self.store.get_many(pending)
            work_ids = [r.work_id for r in rows.values() if r.work_id is not None]
            if not work_ids:
                break
            items = self.store.claim_many(work_ids, self.owner, self.lease_seconds)
            if not items:
                break
            self.run_batch(items)
            pending = [item.eip_uuid for item in items]  # only these can have new work for us now
        return self.store.get_many(uuids)

    def run_batch(self, items: Sequence[WorkItem], rows: Mapping[str, Eip] | None = None) -> dict[int, Eip | None]:
        """Execute items this runner's owner leased (a worker's batch claim, a VM's fan-out), batched.

        Exactly what :meth:`run_claimed` does for each item, with the statements and backend calls shared:
        the rows are read in one go (``rows``: as the caller just committed them, no read), binding items
        proceed in one transaction, each host's changes go in one backend call, and the completions are
        written in one transaction, each fenced by its row's version and its item's lease. An item whose
        fence fails there completes on the single path. Returns the rows the completions wrote, by work id.
        """
        items = list(items)
        if not items:
            return {}
        if len({i.eip_uuid for i in items}) != len(items):
            # Two items of one EIP (a cleanup beside its state's item): run them one by one, in order.
            return {item.id: self.run_leased(item) for item in items}
        with ExitStack() as held:
            for item in items:
                held.enter_context(self.heartbeat.holding(item))
            log.debug("work.claimed_batch", size=len(items))
            crash_point("after_claim")
            try:
                return self._execute_batch(items, dict(rows) if rows is not None else None)
            except LeaseLost:  # pragma: no cover - every completion path falls back or reports None itself
                log.warning("work.fenced_batch", size=len(items))
                return {}

    def _execute_batch(self, items: list[WorkItem], rows: dict[str, Eip] | None = None) -> dict[int, Eip | None]:
        """Run leased items: the one home of what executing a work item means, for one item or many.

        Returns the rows the completions wrote, by work id."""
        if rows is not None and all(i.eip_uuid in rows for i in items):
            pass
        elif len(items) == 1:
            one = self.store.get(items[0].eip_uuid)  # the hot path's read (the fast path, the row cache)
            rows = {one.uuid: one} if one is not None else {}
        else:
            rows = self.store.get_many(i.eip_uuid for i in items)
        calls: list[tuple[WorkItem, str, EipSpec]] = []
        binding: list[WorkItem] = []
        for item in items:
            eip = rows.get(item.eip_uuid)
            if item.cleanup:
                assert item.spec is not None
                if eip is not None and eip.state in ("applying", "attached") and _realizes(eip, item.spec):
                    self.store.set_work_status(item.id, self.owner, "cancelled", error="rule is wanted again")
                else:
                    calls.append((item, "revoke", item.spec))
            elif eip is None or eip.work_id != item.id:
                self.store.set_work_status(item.id, self.owner, "cancelled", error="superseded")
            elif eip.state == "binding":
                binding.append(item)
            else:
                assert item.spec is not None
                calls.append((item, item.action, item.spec))
        if binding:
            proceeded = self._complete_many([(item, "proceed", None, None) for item in binding])
            for item in binding:
                eip = proceeded.get(item.id)
                if eip is None or eip.state != "applying":
                    continue
                assert eip.applied_host is not None and eip.vm_nic_uuid and eip.guest_ip
                calls.append((item, item.action,
                              EipSpec(eip.uuid, eip.vip, eip.vm_nic_uuid, eip.guest_ip, eip.applied_host, eip.version)))
        errors = self._call_many([(action, spec) for _, action, spec in calls])
        completions: list[tuple[WorkItem, str, EipSpec | None, BackendError | None]] = []
        for (item, action, spec), error in zip(calls, errors, strict=True):
            if item.cleanup:
                self._finish_cleanup(item, error)
            elif action == "apply":
                completions.append((item, "apply_ok" if error is None else "apply_failed", spec, error))
            else:
                if isinstance(error, StaleGeneration):
                    error = None  # the host holds only something newer than this revoke: nothing of ours is left
                completions.append((item, "revoke_ok" if error is None else "revoke_failed", spec, error))
        if not completions:
            return {}
        done = self._complete_many(completions)
        for item, _event, done_spec, error in completions:
            maybe_applied = error is None or isinstance(error, BackendTimeout)
            if item.action == "apply" and done.get(item.id) is None and maybe_applied:
                assert done_spec is not None
                self._orphaned_apply(item, done_spec)  # fenced out after a (maybe) successful apply
        return done

    def _call(self, action: str, spec: EipSpec) -> BackendError | None:
        """One backend call (a batch of one); its error, or ``None`` when it was done."""
        return self._call_many([(action, spec)])[0]

    def _call_many(self, calls: Sequence[tuple[str, EipSpec]]) -> list[BackendError | None]:
        """Backend calls, one per host and up to :data:`MAX_BATCH` changes (:func:`run_changes`).

        Returns each change's error (``None``: done), in order. Every change is logged on its own
        (``backend.apply_ok``, ``backend.revoke_refused``, …) with the batch it went in.
        """
        errors: list[BackendError | None] = [None] * len(calls)
        by_host: dict[str, list[int]] = {}
        for i, (_, spec) in enumerate(calls):
            by_host.setdefault(spec.host_uuid, []).append(i)
        for host, indexes in by_host.items():
            for start in range(0, len(indexes), MAX_BATCH):
                chunk = indexes[start:start + MAX_BATCH]
                changes = [Change(calls[i][0], calls[i][1]) for i in chunk]
                actions = sorted({c.action for c in changes})
                started = time.perf_counter()
                for action in actions:
                    crash_point(f"before_{action}")
                results = run_changes(self.backend, host, changes)
                if any(r.ok for r in results):
                    for action in actions:
                        crash_point(f"after_{action}")
                duration_ms = round((time.perf_counter() - started) * 1000, 3)
                for i, change, result in zip(chunk, changes, results, strict=True):
                    errors[i] = result.error if not result.ok else None
                    self._log_call(change, result.error if not result.ok else None, duration_ms, len(changes))
        return errors

    @staticmethod
    def _log_call(change: Change, err: BackendError | None, duration_ms: float, batch: int) -> None:
        action, spec = change.action, change.spec
        bound = log.bind(eip_uuid=spec.eip_uuid, host_uuid=spec.host_uuid, action=action, batch=batch)
        if err is None:
            bound.info(f"backend.{action}_ok", generation=spec.generation, duration_ms=duration_ms)
        elif isinstance(err, StaleGeneration):
            bound.warning(f"backend.{action}_refused", generation=spec.generation, host_generation=err.current,
                          reason=err.reason, duration_ms=duration_ms)
        else:
            bound.warning(f"backend.{action}_failed", error=str(err), retryable=err.retryable,
                          outcome_unknown=isinstance(err, BackendTimeout), duration_ms=duration_ms)

    def _completion_plan(
        self, item: WorkItem, event: str, spec: EipSpec | None, error: BackendError | None, eip: Eip, vm: Vm | None
    ) -> tuple[PlannedTransition, Reschedule | None]:
        """The fenced completion of ``item`` for ``event`` on the row as read, and its reschedule (if any).

        Raises ``_Fenced`` (the row's work item is not ours) or ``_NotOurBinding`` (a rollback found
        somebody else's binding); whatever :meth:`_plan` raises propagates.
        """
        if eip.work_id != item.id:
            raise _Fenced
        if (
            event == "revoke_ok"
            and eip.state == "rolling_back"
            and item.spec is not None
            and (eip.vm_nic_uuid, eip.guest_ip) != (item.spec.vm_nic_uuid, item.spec.guest_ip)
        ):
            raise _NotOurBinding
        retry_update: Reschedule | None = None
        changes: dict[str, Any] = _placement(eip, vm)
        details: dict[str, Any] = {"work_id": item.id, "attempt": item.attempts}
        if spec is not None:
            details["host_uuid"] = spec.host_uuid
        if error is not None:
            changes["last_error"] = f"{item.action} on {spec.host_uuid if spec else '?'}: {error}"
            details["error"] = str(error)
            if self._would_stay(eip, event, changes):
                retry_update = self._reschedule(item, error)
                details["retry"] = retry_update.status
                if retry_update.status == "parked":
                    changes["last_error"] = f"parked after {item.attempts} attempts: {changes['last_error']}"
        plan = self._plan(eip, event, changes, item=item, details=details, retry_update=retry_update)
        return plan, retry_update

    def _complete(
        self, item: WorkItem, event: str, *, spec: EipSpec | None = None, error: BackendError | None = None
    ) -> Eip | None:
        """Fenced completion: re-read, merge the VM's latest facts, compare-and-swap; ``None`` if fenced out."""
        started = time.perf_counter()
        if spec is not None and item.spec is None:
            item = _with_spec(item, spec)
        retry_update: Reschedule | None = None
        seen = 0

        def decide(eip: Eip, vm: Vm | None) -> PlannedTransition:
            nonlocal retry_update, seen
            seen = eip.version
            plan, retry_update = self._completion_plan(item, event, spec, error, eip, vm)
            crash_point("before_complete", event)
            return plan

        for _ in range(MAX_CAS_ATTEMPTS):
            retry_update = None
            try:
                done = self.store.transition(item.eip_uuid, decide, with_vm=True)
            except (_Fenced, EipNotFound, LeaseLost):
                return None
            except _NotOurBinding:
                self._not_our_binding(item)
                return None
            if done is None:
                self.conflicts += 1
                log.debug("transition.conflict", eip_uuid=item.eip_uuid, trigger=event, version=seen)
                continue
            result, plan = done
            self._log_transition(plan, result, started)
            if retry_update is not None:
                log.info("work.rescheduled", work_id=item.id, eip_uuid=item.eip_uuid, **retry_update.log_fields())
            return result
        raise VersionConflict(item.eip_uuid, seen, MAX_CAS_ATTEMPTS)

    def _not_our_binding(self, item: WorkItem) -> None:
        # Somebody else owns the binding now: revoke our own rule only, never their binding.
        log.warning("rollback.skipped", eip_uuid=item.eip_uuid, work_id=item.id)
        self.store.set_work_status(item.id, self.owner, "done")

    def _complete_many(
        self, entries: Sequence[tuple[WorkItem, str, EipSpec | None, BackendError | None]]
    ) -> dict[int, Eip | None]:
        """Fenced completions of many items (distinct EIPs) in one transaction; by work id, as :meth:`_complete`.

        Rows and VM facts are read in bulk and every completion is decided exactly as :meth:`_complete`
        decides it; the plans are then written by one :meth:`Store.commit_many`. If any fence does not
        hold there (another caller moved a row), each completion goes the single path and decides again.
        """
        started = time.perf_counter()
        out: dict[int, Eip | None] = {}
        if len(entries) == 1:
            item, event, spec, error = entries[0]
            return {item.id: self._complete(item, event, spec=spec, error=error)}
        rows = self.store.get_many(item.eip_uuid for item, *_ in entries)
        vms = self.store.vms(r.vm_uuid for r in rows.values() if r.vm_uuid is not None)
        planned = []
        for item, event, spec, error in entries:
            if spec is not None and item.spec is None:
                item = _with_spec(item, spec)
            eip = rows.get(item.eip_uuid)
            if eip is None:
                out[item.id] = None
                continue
            try:
                plan, retry_update = self._completion_plan(
                    item, event, spec, error, eip, vms.get(eip.vm_uuid) if eip.vm_uuid else None)
            except _Fenced:
                out[item.id] = None
                continue
            except _NotOurBinding:
                self._not_our_binding(item)
                out[item.id] = None
                continue
            except (IllegalTransition, NotApplicable):
                plan, retry_update = None, None  # let the single path raise or decide on a fresh row
            planned.append((item, event, spec, error, plan, retry_update))
        for event in dict.fromkeys(p[1] for p in planned):
            crash_point("before_complete", event)
        plans = [p[4] for p in planned]
        written = self.store.commit_many(plans) if len(plans) > 1 and all(plans) else None  # type: ignore[arg-type]
        if written is None:
            for item, event, spec, error, _plan, _retry in planned:
                out[item.id] = self._complete(item, event, spec=spec, error=error)
            return out
        for (item, _event, _spec, _error, plan, retry_update), result in zip(planned, written, strict=True):
            assert plan is not None
            self._log_transition(plan, result, started, batch=len(planned))
            if retry_update is not None:
                log.info("work.rescheduled", work_id=item.id, eip_uuid=item.eip_uuid, **retry_update.log_fields())
            out[item.id] = result
        return out

    def _would_stay(self, eip: Eip, event: str, changes: Mapping[str, Any]) -> bool:
        return resolve(eip.state, event, _facts(eip, changes), eip_uuid=eip.uuid) == eip.state

    def _reschedule(self, item: WorkItem, error: BackendError) -> Reschedule:
        if not error.retryable or item.attempts >= self.retry.max_attempts:
            return Reschedule("parked", str(error))
        due = self.store.clock.now() + timedelta(seconds=self.retry.delay(item.attempts, self.rng))
        return Reschedule("pending", str(error), due)

    def _orphaned_apply(self, item: WorkItem, spec: EipSpec) -> None:
        """We applied, then lost the EIP to someone else: revoke ours unless the row wants it realized."""
        eip = self.store.get(item.eip_uuid)
        if eip is not None and eip.state in ("applying", "attached") and _realizes(eip, spec):
            return
        # The cleanup carries the generation of the apply it undoes: a host that has since seen a newer
        # generation of this EIP (a re-attach, even to the same NIC, guest IP and host) refuses it.
        work_id = self.store.add_work(
            item.eip_uuid,
            NewWork("revoke", spec.vip, spec.vm_nic_uuid, spec.guest_ip, spec.host_uuid, cleanup=True,
                    generation=spec.generation),
        )
        log.warning("work.orphan_revoke_enqueued", eip_uuid=item.eip_uuid, work_id=work_id, host_uuid=spec.host_uuid)

    def _finish_cleanup(self, item: WorkItem, error: BackendError | None) -> None:
        if error is None:
            self.store.set_work_status(item.id, self.owner, "done")
            return
        if isinstance(error, StaleGeneration):
            # A newer generation reached the host first: the rule this cleanup was for is gone or replaced.
            self.store.set_work_status(item.id, self.owner, "done", error=f"superseded: {error}")
            return
        update = self._reschedule(item, error)
        self.store.set_work_status(item.id, self.owner, update.status, error=update.error, due_at=update.due_at)


class _Fenced(Exception):
    """Internal: the row's work item is not ours any more."""


class _NotOurBinding(Exception):
    """Internal: a rollback found somebody else's binding on the row."""


def _placement(eip: Eip, vm: Vm | None) -> dict[str, Any]:
    """The VM's latest recorded placement wins over the row's copy (the release paths' ordering)."""
    if vm is None:
        return {}
    host = vm.host_uuid if vm.running else None
    return {} if host == eip.host_uuid else {"host_uuid": host}


def _realizes(eip: Eip, spec: EipSpec) -> bool:
    return (eip.applied_host, eip.guest_ip, eip.vm_nic_uuid) == (spec.host_uuid, spec.guest_ip, spec.vm_nic_uuid)


def _with_spec(item: WorkItem, spec: EipSpec) -> WorkItem:
    from dataclasses import replace

    return replace(item, spec=spec)

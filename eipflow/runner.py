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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ._logging import get_logger
from .backends.base import Backend
from .errors import BackendError, BackendTimeout, EipNotFound, IllegalTransition, StaleGeneration, VersionConflict
from .faultpoints import crash_point
from .heartbeat import Heartbeat
from .machine import CONTINUES, EFFECTS, Facts
from .store import LeasedWork, LeaseLost, NewWork, PlannedTransition, Store, WorkUpdate
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
        retry_update: Mapping[str, Any] | None = None,
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
                update = WorkUpdate(item.id, self.owner, retry_update)
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
        started = time.perf_counter()
        plans = []
        for eip in rows:
            try:
                plans.append(self._plan(eip, event, changes(eip), actor=actor, op_id=op_id, details=details))
            except (IllegalTransition, NotApplicable):
                continue
        written = self.store.commit_many(plans) if len(plans) > 1 else None
        if written is None:
            out = []
            for plan in plans:
                try:
                    out.append(self.fire(plan.eip.uuid, event, changes, actor=actor, op_id=op_id, details=details))
                except (IllegalTransition, EipNotFound, NotApplicable):
                    continue  # moved on meanwhile (detached, deleted, rebound): nothing of this intent applies
            return out
        for plan, result in zip(plans, written, strict=True):
            self._log_transition(plan, result, started, batch=len(plans))
        return written

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
        log.debug("work.claimed", work_id=item.id, eip_uuid=item.eip_uuid, action=item.action, attempt=item.attempts)
        crash_point("after_claim")
        try:
            with self.heartbeat.holding(item):
                self._execute(item)
        except LeaseLost:
            log.warning("work.fenced", work_id=item.id, eip_uuid=item.eip_uuid, action=item.action)
        return item

    def _execute(self, item: WorkItem) -> None:
        if item.cleanup:
            self._run_cleanup(item)
            return
        eip = self.store.get(item.eip_uuid)
        if eip is None or eip.work_id != item.id:
            # The state moved on without this item (it cannot happen through the runner; be safe).
            self.store.set_work_status(item.id, self.owner, "cancelled", error="superseded")
            return
        spec = item.spec
        if eip.state == "binding":
            eip = self._complete(item, "proceed")
            if eip is None or eip.state != "applying":
                return
            assert eip.applied_host is not None and eip.vm_nic_uuid and eip.guest_ip
            spec = EipSpec(eip.uuid, eip.vip, eip.vm_nic_uuid, eip.guest_ip, eip.applied_host, eip.version)
        assert spec is not None
        error = self._call(item.action, spec)
        if item.action == "apply":
            if error is None:
                done = self._complete(item, "apply_ok", spec=spec)
            else:
                done = self._complete(item, "apply_failed", spec=spec, error=error)
            if done is None and (error is None or isinstance(error, BackendTimeout)):
                self._orphaned_apply(item, spec)  # fenced out after a (maybe) successful apply
        else:
            if isinstance(error, StaleGeneration):
                error = None  # the host holds only something newer than this revoke: nothing of ours is left
            self._complete(item, "revoke_ok" if error is None else "revoke_failed", spec=spec, error=error)

    def _call(self, action: str, spec: EipSpec) -> BackendError | None:
        started = time.perf_counter()
        bound = log.bind(eip_uuid=spec.eip_uuid, host_uuid=spec.host_uuid, action=action)
        crash_point(f"before_{action}")
        try:
            (self.backend.apply if action == "apply" else self.backend.revoke)(spec)
            crash_point(f"after_{action}")
        except BackendError as exc:
            err: BackendError = exc
        except Exception as exc:  # noqa: BLE001 - any backend failure is an unknown outcome, retried
            err = BackendTimeout(f"{type(exc).__name__}: {exc}")
        else:
            bound.info(f"backend.{action}_ok", generation=spec.generation,
                       duration_ms=round((time.perf_counter() - started) * 1000, 3))
            return None
        if isinstance(err, StaleGeneration):
            bound.warning(f"backend.{action}_refused", generation=spec.generation, host_generation=err.current,
                          reason=err.reason, duration_ms=round((time.perf_counter() - started) * 1000, 3))
            return err
        bound.warning(
            f"backend.{action}_failed",
            error=str(err),
            retryable=err.retryable,
            outcome_unknown=isinstance(err, BackendTimeout),
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return err

    def _complete(
        self, item: WorkItem, event: str, *, spec: EipSpec | None = None, error: BackendError | None = None
    ) -> Eip | None:
        """Fenced completion: re-read, merge the VM's latest facts, compare-and-swap; ``None`` if fenced out."""
        started = time.perf_counter()
        if spec is not None and item.spec is None:
            item = _with_spec(item, spec)
        retry_update: dict[str, Any] | None = None
        seen = 0

        def decide(eip: Eip, vm: Vm | None) -> PlannedTransition:
            nonlocal retry_update, seen
            retry_update = None
            seen = eip.version
            if eip.work_id != item.id:
                raise _Fenced
            if (
                event == "revoke_ok"
                and eip.state == "rolling_back"
                and item.spec is not None
                and (eip.vm_nic_uuid, eip.guest_ip) != (item.spec.vm_nic_uuid, item.spec.guest_ip)
            ):
                raise _NotOurBinding
            changes: dict[str, Any] = _placement(eip, vm)
            details: dict[str, Any] = {"work_id": item.id, "attempt": item.attempts}
            if spec is not None:
                details["host_uuid"] = spec.host_uuid
            if error is not None:
                changes["last_error"] = f"{item.action} on {spec.host_uuid if spec else '?'}: {error}"
                details["error"] = str(error)
                if self._would_stay(eip, event, changes):
                    retry_update = self._reschedule(item, error)
                    details["retry"] = retry_update["status"]
                    if retry_update["status"] == "parked":
                        changes["last_error"] = f"parked after {item.attempts} attempts: {changes['last_error']}"
            plan = self._plan(eip, event, changes, item=item, details=details, retry_update=retry_update)
            crash_point("before_complete", event)
            return plan

        for _ in range(MAX_CAS_ATTEMPTS):
            try:
                done = self.store.transition(item.eip_uuid, decide, with_vm=True)
            except (_Fenced, EipNotFound, LeaseLost):
                return None
            except _NotOurBinding:
                # Somebody else owns the binding now: revoke our own rule only, never their binding.
                log.warning("rollback.skipped", eip_uuid=item.eip_uuid, work_id=item.id)
                self.store.set_work_status(item.id, self.owner, "done")
                return None
            if done is None:
                self.conflicts += 1
                log.debug("transition.conflict", eip_uuid=item.eip_uuid, trigger=event, version=seen)
                continue
            result, plan = done
            self._log_transition(plan, result, started)
            if retry_update is not None:
                log.info("work.rescheduled", work_id=item.id, eip_uuid=item.eip_uuid, **_jsonable(retry_update))
            return result
        raise VersionConflict(item.eip_uuid, seen, MAX_CAS_ATTEMPTS)

    def _would_stay(self, eip: Eip, event: str, changes: Mapping[str, Any]) -> bool:
        return resolve(eip.state, event, _facts(eip, changes), eip_uuid=eip.uuid) == eip.state

    def _reschedule(self, item: WorkItem, error: BackendError) -> dict[str, Any]:
        now = self.store.clock.now()
        if not error.retryable or item.attempts >= self.retry.max_attempts:
            return {"status": "parked", "lease_owner": None, "lease_expires_at": None, "last_error": str(error)}
        due = now + timedelta(seconds=self.retry.delay(item.attempts, self.rng))
        return {
            "status": "pending",
            "due_at": due,
            "lease_owner": None,
            "lease_expires_at": None,
            "last_error": str(error),
        }

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

    def _run_cleanup(self, item: WorkItem) -> None:
        assert item.spec is not None
        eip = self.store.get(item.eip_uuid)
        if eip is not None and eip.state in ("applying", "attached") and _realizes(eip, item.spec):
            self.store.set_work_status(item.id, self.owner, "cancelled", error="rule is wanted again")
            return
        error = self._call("revoke", item.spec)
        if error is None:
            self.store.set_work_status(item.id, self.owner, "done")
            return
        if isinstance(error, StaleGeneration):
            # A newer generation reached the host first: the rule this cleanup was for is gone or replaced.
            self.store.set_work_status(item.id, self.owner, "done", error=f"superseded: {error}")
            return
        update = self._reschedule(item, error)
        self.store.set_work_status(item.id, self.owner, update["status"], error=str(error), due_at=update.get("due_at"))


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


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in values.items() if k != "last_error"}

"""The public face: :class:`Eipflow`, one object per database + backend."""

from __future__ import annotations

import json
import os
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy.engine import Engine

from . import validation as v
from .backends.base import Backend, ListsRules, load_backend
from .backends.simulated import SimulatedDataplane
from .clock import Clock, SystemClock
from .errors import (
    AddressInUse,
    AttachFailed,
    ConflictError,
    EipflowError,
    EipNotFound,
    InvalidInput,
    OperationIdReused,
    WorkItemNotFound,
)
from .outcome import attach_outcome
from .runner import NotApplicable, RetryPolicy, Runner
from .store import Operations, Store, create_db_engine, ensure_schema, redacted, resolve_url
from .store.database import sqlite_synchronous_mode
from .store.fastpath import DEFAULT_ROW_CACHE
from .values import Eip, EipSpec, TransitionRecord, Vm, WorkItem

__all__ = ["DEFAULT_LEASE_SECONDS", "Eipflow", "connect"]

T = TypeVar("T")

DEFAULT_LEASE_SECONDS = 60.0
#: namespace of the uuids of EIPs created with an operation id (uuid5 of the id)
_CREATE_NAMESPACE = uuidlib.UUID("5f0c2d7e-3b8a-4f6e-9a41-2c7d0e8b6a13")


def _lease_from_env() -> float:
    raw = os.environ.get("EIPFLOW_LEASE_SECONDS")
    if not raw:
        return DEFAULT_LEASE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"EIPFLOW_LEASE_SECONDS: {raw!r} is not a number of seconds") from None
    if value <= 0:
        raise InvalidInput(f"EIPFLOW_LEASE_SECONDS: {raw!r} must be positive")
    return value


def _fast_path_from_env() -> bool | None:
    raw = os.environ.get("EIPFLOW_FASTPATH", "").strip()
    if raw in ("", "1"):
        return None  # wherever the driver supports it
    if raw == "0":
        return False
    raise InvalidInput(f"EIPFLOW_FASTPATH: {raw!r} must be 0 (SQLAlchemy Core only) or 1")


def _row_cache_from_env() -> int:
    raw = os.environ.get("EIPFLOW_ROW_CACHE", "").strip()
    if not raw:
        return DEFAULT_ROW_CACHE
    if not raw.isdigit():
        raise InvalidInput(f"EIPFLOW_ROW_CACHE: {raw!r} is not a number of rows (0 turns the row cache off)")
    return int(raw)


def _synchronous_from_env() -> str:
    raw = os.environ.get("EIPFLOW_SQLITE_SYNCHRONOUS", "FULL")
    return sqlite_synchronous_mode(raw, "EIPFLOW_SQLITE_SYNCHRONOUS")


class Eipflow:
    """Attach, detach and release Elastic IPs safely against one database and one backend.

    Every call validates its input first (bad input raises :class:`~eipflow.InvalidInput` and
    changes nothing), records its intent with a version-checked write, and — with ``wait=True``,
    the default — runs the resulting backend work inline before it returns. Intents that arrive
    while another caller's backend call is in flight are recorded at once and acted on by that
    caller when its call returns.

    Every mutating call accepts ``op_id``: repeating a call with the same id returns the first
    call's outcome and does no new work; reusing an id for a different request raises
    :class:`~eipflow.OperationIdReused`.
    """

    def __init__(
        self,
        store: Store,
        backend: Backend,
        *,
        lease_seconds: float | None = None,
        retry: RetryPolicy | None = None,
        owner: str | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        bind = getattr(backend, "bind", None)
        if callable(bind):
            bind(store.engine)
        self.runner = Runner(
            store,
            backend,
            owner=owner,
            lease_seconds=lease_seconds if lease_seconds is not None else _lease_from_env(),
            retry=retry,
        )
        self.operations = Operations(store)

    @classmethod
    def open(
        cls,
        url: str | None = None,
        backend: Backend | str | None = None,
        *,
        clock: Clock | None = None,
        lease_seconds: float | None = None,
        retry: RetryPolicy | None = None,
        owner: str | None = None,
        create_schema: bool = True,
        engine: Engine | None = None,
        fast_path: bool | None = None,
        row_cache: int | None = None,
        sqlite_synchronous: str | None = None,
    ) -> Eipflow:
        """Open eipflow on a database URL (default ``$EIPFLOW_DB`` or ``sqlite:///eipflow.db``).

        Args:
            url: any SQLAlchemy URL.
            backend: a :class:`~eipflow.Backend`, an import path ``package.module:factory``, or
                ``None`` for ``$EIPFLOW_BACKEND`` or the built-in simulated dataplane (rules kept in
                the same database, so separate processes share it).
            clock: this process's clock: it stamps rows and schedules retries (tests inject a manual
                clock). Leases are never judged by it but by the database's clock
                (``flow.store.lease_clock``), so a process whose clock is skewed cannot take a live lease.
            lease_seconds: how long a claimed work item stays ours (default ``$EIPFLOW_LEASE_SECONDS`` or 60).
            retry: the backoff policy for failed backend work.
            owner: the lease owner name (default host:pid:random).
            create_schema: create missing tables on first use.
            engine: an existing SQLAlchemy engine (``url`` is then ignored).
            fast_path: run the hot path at driver level (default ``$EIPFLOW_FASTPATH``: ``0`` turns it
                off; otherwise wherever the driver supports it). Same statements, same results.
            row_cache: rows remembered for optimistic intents (default ``$EIPFLOW_ROW_CACHE`` or 16384;
                ``0`` turns the cache off).
            sqlite_synchronous: SQLite durability, ``OFF``/``NORMAL``/``FULL``/``EXTRA`` (default
                ``$EIPFLOW_SQLITE_SYNCHRONOUS`` or ``FULL``).

        These are the only settings read from the environment, and only here, as documented defaults:
        everything below ``open`` takes its settings as parameters.

        Raises:
            InvalidInput: a setting (or its environment variable) has a value that is not allowed.
        """
        cache = _row_cache_from_env() if row_cache is None else row_cache
        fast = _fast_path_from_env() if fast_path is None else fast_path
        synchronous = _synchronous_from_env() if sqlite_synchronous is None else sqlite_synchronous
        db = engine or create_db_engine(resolve_url(url), sqlite_synchronous=synchronous)
        if create_schema:
            ensure_schema(db)
        if backend is None:
            backend = os.environ.get("EIPFLOW_BACKEND") or None
        chosen: Backend = load_backend(backend) if isinstance(backend, str) else (backend or SimulatedDataplane())
        store = Store(db, clock or SystemClock(), fast_path=fast, row_cache=cache)
        return cls(store, chosen, lease_seconds=lease_seconds, retry=retry, owner=owner)

    def close(self) -> None:
        """Close the database connections (pinned and pooled)."""
        self.store.close()

    def __enter__(self) -> Eipflow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The database URL, without its password."""
        return redacted(self.store.engine.url)

    # -- idempotency ---------------------------------------------------------------------------
    def _once(self, op_id: str | None, request: dict[str, Any], fn: Callable[[], T], encode: Callable[[T], Any],
              decode: Callable[[Any], T]) -> T:
        if op_id is None:
            return fn()
        op_id = v.opaque_id("op_id", op_id)
        text = json.dumps(request, sort_keys=True)
        deadline = time.monotonic() + self.runner.lease_seconds
        while True:
            existing = self.operations.begin(op_id, text)
            if existing is None:
                break
            if existing["request"] != text:
                raise OperationIdReused(op_id, existing["request"], text)
            if existing["status"] != "running":
                return self._replay(existing, decode)
            if self.operations.take_over(op_id, self.runner.lease_seconds):
                break  # its first caller died mid-way; the steps below are idempotent
            if time.monotonic() > deadline:
                raise ConflictError(f"operation {op_id} is still running in another caller; retry later")
            time.sleep(0.01)  # another caller is running this very operation: wait for its outcome
        try:
            result = fn()
        except AttachFailed as exc:
            self.operations.finish(op_id, "failed", json.dumps({"attach_failed": [exc.eip_uuid, exc.error, exc.state]}))
            raise
        except EipflowError:
            # The request failed: the id may be used again. Most such errors change nothing (bad input, a
            # conflict before any write); some come after an intent was committed (AttachSuperseded: a
            # detach overtook the attach) — a retry with the id then acts on the EIP as it is now.
            self.operations.forget(op_id)
            raise
        except BaseException:
            raise  # unknown outcome: leave it running; a retry after the lease takes it over
        self.operations.finish(op_id, "done", json.dumps(encode(result)))
        return result

    @staticmethod
    def _replay(row: Any, decode: Callable[[Any], T]) -> T:
        payload = json.loads(row["result"])
        if row["status"] == "failed":
            raise AttachFailed(*payload["attach_failed"])
        return decode(payload)

    # -- EIPs ----------------------------------------------------------------------------------
    def create_eip(self, vip: str, name: str | None = None, *, op_id: str | None = None) -> Eip:
        """Allocate an EIP for public address ``vip``; it starts ``detached``.

        Raises:
            InvalidAddress: ``vip`` is not an address a VIP may be (see ``docs/errors.md``).
            InvalidIdentifier: ``name`` is too long or holds control or format characters.
            VipInUse: another EIP has this VIP.
            AddressInUse: ``vip`` is some EIP's guest IP.
        """
        vip = v.ip_address("vip", vip)
        name = v.name(name)
        return self._once(op_id, {"op": "create", "vip": vip, "name": name},
                          lambda: self._create(vip, name, op_id), _eip_out, _eip_in)

    def _create(self, vip: str, name: str | None, op_id: str | None) -> Eip:
        holder = self.store.holder_of_guest_ip(vip)
        if holder is not None:
            raise AddressInUse("vip", vip, holder, "guest IP")
        if op_id is None:
            return self.store.create(str(uuidlib.uuid4()), vip, name, actor=self.runner.owner, op_id=None)
        # The uuid follows from the operation id: a retried create whose first caller died after
        # creating the row (before recording the outcome) finds that row instead of allocating another.
        uuid = str(uuidlib.uuid5(_CREATE_NAMESPACE, v.opaque_id("op_id", op_id)))
        existing = self.store.get(uuid)
        if existing is not None:
            return existing
        return self.store.create(uuid, vip, name, actor=self.runner.owner, op_id=op_id)

    def get_eip(self, uuid: str) -> Eip:
        """The EIP's current row. Raises :class:`~eipflow.EipNotFound` (also for a deleted EIP)."""
        return self.store.require(v.eip_uuid(uuid))

    def list_eips(self, *, state: str | None = None, vm_uuid: str | None = None) -> list[Eip]:
        return self.store.eips(state=state, vm_uuid=vm_uuid)

    def history(self, uuid: str) -> list[TransitionRecord]:
        """Every transition of the EIP, oldest first (kept after the EIP is deleted)."""
        uuid = v.eip_uuid(uuid)
        records = self.store.history(uuid)
        if not records:
            raise EipNotFound(uuid)
        return records

    def delete_eip(self, uuid: str, *, op_id: str | None = None, wait: bool = True) -> Eip:
        """Delete the EIP: revoke and unbind first if needed. Returns the last row (``state == "deleted"``
        once gone; an in-flight state if another caller's backend call must finish first)."""
        uuid = v.eip_uuid(uuid)
        return self._once(
            op_id, {"op": "delete", "eip": uuid},
            lambda: self._intent(uuid, "delete", {"desired": "deleted"}, op_id, wait), _eip_out, _eip_in,
        )

    # -- attach / detach -----------------------------------------------------------------------
    def attach(
        self,
        uuid: str,
        *,
        nic: str,
        guest_ip: str,
        vm: str,
        host: str,
        op_id: str | None = None,
        wait: bool = True,
    ) -> Eip:
        """Bind the EIP to ``guest_ip`` of ``nic`` on ``vm`` and realize it on the VM's host.

        The binding is persisted *before* the backend is called, so VM stop/migrate/detach see it.
        If eipflow already knows the VM, its recorded placement wins over ``host`` (a stopped VM
        gets the binding and lands in ``released``, with no backend call).

        Raises:
            AttachFailed: the apply failed; the binding was rolled back (conditionally).
            IllegalTransition: the EIP is not ``detached`` (a concurrent attach won).
            GuestIpInUse: ``guest_ip`` already carries an EIP.
            InvalidAddress: ``guest_ip`` is of a refused class, of another IP version than the VIP, or the VIP.
            AddressInUse: ``guest_ip`` is another EIP's VIP.
        """
        uuid = v.eip_uuid(uuid)
        nic = v.opaque_id("nic", nic)
        guest_ip = v.ip_address("guest_ip", guest_ip)
        vm = v.opaque_id("vm", vm)
        host = v.opaque_id("host", host)
        request = {"op": "attach", "eip": uuid, "nic": nic, "guest_ip": guest_ip, "vm": vm, "host": host}
        return self._once(op_id, request, lambda: self._attach(uuid, nic, guest_ip, vm, host, op_id, wait),
                          _eip_out, _eip_in)

    def _attach(self, uuid: str, nic: str, guest_ip: str, vm: str, host: str, op_id: str | None, wait: bool) -> Eip:
        target = self.store.require(uuid)
        # A retried operation whose first caller died after persisting the binding resumes its own attach.
        mine = [r for r in self.store.history(uuid) if r.event == "attach" and r.op_id == op_id] if op_id else []
        if not mine:
            v.address_pair(target.vip, guest_ip)
            holder = self.store.holder_of_vip(guest_ip)
            if holder is not None:
                raise AddressInUse("guest_ip", guest_ip, holder, "VIP")
        known = self.store.vm(vm)
        if known is None:
            # Our host is only a guess from the caller's read: it never overwrites a fact recorded meanwhile.
            known = self.store.record_vm(vm, host, running=True, expected_version=0) or self.store.vm(vm)
            assert known is not None
        placed = known.host_uuid if known.running else None
        changes = {
            "vm_nic_uuid": nic, "guest_ip": guest_ip, "vm_uuid": vm, "host_uuid": placed,
            "desired": "attached", "attach_confirmed": False, "last_error": None,
        }
        details = {"nic": nic, "guest_ip": guest_ip, "vm": vm, "host": host}
        if mine:
            version = mine[-1].version
            eip = self.store.require(uuid)
            final = self.runner.drive(uuid) if wait else eip
        elif not wait:
            return self.runner.fire(uuid, "attach", changes, op_id=op_id, details=details)
        else:
            # The inline flow: one transaction persists the binding, leases the apply to us and proceeds;
            # the backend call; one transaction completes it (fenced by version and work item).
            eip, committed, item = self.runner.start(uuid, "attach", changes, op_id=op_id, details=details)
            version = eip.version
            final = self.runner.run_leased(item, committed) if item is not None else committed
            if final is None or final.work_id is not None:
                final = self.runner.drive(uuid)  # more work meanwhile (an intent recorded during our call)
            elif final.state == "attached" and final.version == version + 2:
                return final  # attach, proceed, apply_ok and nothing between: no rollback to look for
        if not wait:
            return eip
        outcome = attach_outcome(self.store.history(uuid), final, uuid, version=version)
        if outcome.ended == "pending":
            assert final is not None
            return final  # another caller's backend call must finish first (documented)
        return outcome.result()

    def detach(self, uuid: str, *, op_id: str | None = None, wait: bool = True) -> Eip:
        """Revoke the EIP's rule and clear its binding (deferred to the in-flight call if one runs)."""
        uuid = v.eip_uuid(uuid)
        return self._once(
            op_id, {"op": "detach", "eip": uuid},
            lambda: self._intent(uuid, "detach", {"desired": "detached"}, op_id, wait), _eip_out, _eip_in,
        )

    def _intent(self, uuid: str, event: str, changes: dict[str, Any], op_id: str | None, wait: bool) -> Eip:
        if not wait:
            return self.runner.fire(uuid, event, changes, op_id=op_id)
        # The inline flow: the intent and the lease of the revoke it needs in one transaction, the backend
        # call, one fenced completion; more work only if another caller's intent came in meanwhile.
        eip, committed, item = self.runner.start(uuid, event, changes, op_id=op_id)
        if eip.state == "deleted":
            return eip
        final = self.runner.run_leased(item, committed) if item is not None else committed
        if final is None or final.work_id is not None:
            final = self.runner.drive(uuid)
        if final is None:  # deleted by its own work
            return _deleted(eip)
        return final

    # -- VM facts ------------------------------------------------------------------------------
    def vm_stopped(self, vm: str, *, op_id: str | None = None, wait: bool = True) -> list[Eip]:
        """The VM stopped: release its EIPs (bindings kept, rules revoked)."""
        vm = v.opaque_id("vm", vm)
        return self._once(op_id, {"op": "vm_stop", "vm": vm},
                          lambda: self._vm_event(vm, None, "vm_stopped", op_id, wait), _eips_out, _eips_in)

    def vm_started(self, vm: str, host: str, *, op_id: str | None = None, wait: bool = True) -> list[Eip]:
        """The VM runs on ``host``: apply its released EIPs there."""
        vm = v.opaque_id("vm", vm)
        host = v.opaque_id("host", host)
        return self._once(op_id, {"op": "vm_start", "vm": vm, "host": host},
                          lambda: self._vm_event(vm, host, "vm_started", op_id, wait), _eips_out, _eips_in)

    def vm_migrated(self, vm: str, to_host: str, *, op_id: str | None = None, wait: bool = True) -> list[Eip]:
        """The VM moved to ``to_host``: revoke its EIPs on the old host, apply them on the new one."""
        vm = v.opaque_id("vm", vm)
        to_host = v.opaque_id("host", to_host)
        return self._once(op_id, {"op": "vm_migrate", "vm": vm, "host": to_host},
                          lambda: self._vm_event(vm, to_host, "vm_migrated", op_id, wait), _eips_out, _eips_in)

    def vm(self, vm: str) -> Vm | None:
        """What eipflow was last told about the VM, or ``None``."""
        return self.store.vm(v.opaque_id("vm", vm))

    def _record_vm_fact(self, vm: str, host: str | None, event: str) -> str | None:
        """Record the VM fact an event brings; a migration keeps the recorded power state (checked, not blind)."""
        while True:
            known = self.store.vm(vm)
            running = host is not None if event != "vm_migrated" else (known.running if known else True)
            placed = host if running else None
            expected = known.version if known is not None else 0
            if self.store.record_vm(vm, placed, running, expected_version=expected) is not None:
                return placed

    def _vm_event(self, vm: str, host: str | None, event: str, op_id: str | None, wait: bool) -> list[Eip]:
        # The fact first, then the bindings: an attach racing with us either sees this fact when it
        # proceeds, or has its binding visible to the query below.
        placed = self._record_vm_fact(vm, host, event)
        def placement(row: Eip) -> dict[str, Any]:
            if row.vm_uuid != vm:
                raise NotApplicable(row.uuid)  # rebound to another VM since we listed it
            return {"host_uuid": placed}

        return self._fan_out(self.store.eips(vm_uuid=vm), event, placement, op_id, {"vm": vm, "host": host}, wait)

    def _fan_out(self, rows: list[Eip], event: str, changes: Callable[[Eip], dict[str, Any]], op_id: str | None,
                 details: dict[str, Any], wait: bool) -> list[Eip]:
        """Send ``event`` to ``rows`` as one batch and, with ``wait``, run the work it made, batched.

        The inline shape: one transaction records every intent and leases the work they create to us,
        one backend call per host, one transaction completes them; rows left with work (a migration's
        apply after its revoke, an intent handed to another caller's in-flight call) are driven on in
        batches. Returns the rows as they end (``wait=False``: as written), in ``rows``' order.
        """
        if not wait:
            return self.runner.fire_many(rows, event, changes, op_id=op_id, details=details)
        fired, items = self.runner.fire_many_leased(rows, event, changes, op_id=op_id, details=details)
        final: dict[str, Eip | None] = {e.uuid: e for e in fired}
        done = self.runner.run_batch(items, final) if items else {}  # type: ignore[arg-type]
        for item in items:
            final[item.eip_uuid] = done.get(item.id)
        rest = [u for u, row in final.items() if row is None or row.work_id is not None]
        if rest:
            final.update(dict.fromkeys(rest))
            final.update(self.runner.drive_many(rest))
        return [row for e in fired if (row := final.get(e.uuid)) is not None and row.state != "deleted"]

    def host_down(self, host: str, *, op_id: str | None = None, wait: bool = True) -> list[Eip]:
        """The host is down or being evacuated: every VM recorded running on it stopped there.

        Records each such VM as stopped (compare-and-swapped on its fact, one statement per batch of VMs),
        then releases all their EIPs exactly as :meth:`vm_stopped` does for one VM — bindings kept,
        rules revoked — with the whole fan-out batched: O(1) transactions and one backend call per
        :data:`~eipflow.MAX_BATCH` rules, whatever the number of VMs and EIPs. Revokes a down host cannot
        answer stay durable work items, retried with backoff. Start the VMs elsewhere with
        :meth:`vm_started` (or move them with :meth:`vm_migrated`).

        Returns:
            The EIPs released, as they end (``wait=False``: as their intents were recorded).
        """
        host = v.opaque_id("host", host)
        return self._once(op_id, {"op": "host_down", "host": host},
                          lambda: self._host_down(host, op_id, wait), _eips_out, _eips_in)

    def _host_down(self, host: str, op_id: str | None, wait: bool) -> list[Eip]:
        stopped = set(self.store.stop_vms_on(host))  # the facts first, as for one VM
        def placement(row: Eip) -> dict[str, Any]:
            if row.vm_uuid not in stopped:
                raise NotApplicable(row.uuid)  # rebound to another VM since we listed it
            return {"host_uuid": None}

        return self._fan_out(self.store.eips(vm_uuids=sorted(stopped)), "vm_stopped", placement, op_id,
                             {"host": host, "reason": "host_down"}, wait)

    # -- work, dataplane -----------------------------------------------------------------------
    def run_due(self, *, limit: int | None = None, batch_size: int = 100) -> int:
        """Run every due work item once (what ``eipflow worker --once`` does), ``batch_size`` items per
        claim and batch. Returns how many ran."""
        ran = 0
        while limit is None or ran < limit:
            want = batch_size if limit is None else min(batch_size, limit - ran)
            items = self.store.claim_due(self.runner.owner, self.runner.lease_seconds, want)
            if not items:
                break
            self.runner.run_batch(items)
            ran += len(items)
        return ran

    def work_items(self, *, statuses: Sequence[str] | None = None, eip_uuid: str | None = None) -> list[WorkItem]:
        return self.store.list_work(statuses=statuses, eip_uuid=eip_uuid)

    def retry_work(self, work_id: int) -> WorkItem:
        """Make a parked item due now with a fresh attempt budget."""
        if not self.store.requeue(work_id):
            item = self.store.work_item(work_id)
            if item is None:
                raise WorkItemNotFound(work_id)
            raise ConflictError(f"work item {work_id} is {item.status}; only parked or pending items can be retried")
        item = self.store.work_item(work_id)
        assert item is not None
        return item

    def dataplane(self, host: str | None = None) -> list[EipSpec]:
        """What the backend reports as realized (backends that can list their rules)."""
        if not isinstance(self.backend, ListsRules):
            raise InvalidInput(f"backend {type(self.backend).__name__} cannot list its rules")
        return self.backend.rules(host)


def connect(url: str | None = None, backend: Backend | str | None = None, **kwargs: Any) -> Eipflow:
    """Shorthand for :meth:`Eipflow.open`."""
    return Eipflow.open(url, backend, **kwargs)


def _deleted(eip: Eip) -> Eip:
    from dataclasses import replace

    return replace(eip, state="deleted")


def _eip_out(eip: Eip) -> Any:
    return eip.to_dict()


def _eip_in(data: Any) -> Eip:
    from datetime import datetime

    data = dict(data)
    data["created_at"] = datetime.fromisoformat(data["created_at"])
    data["updated_at"] = datetime.fromisoformat(data["updated_at"])
    return Eip(**data)


def _eips_out(eips: list[Eip]) -> Any:
    return [e.to_dict() for e in eips]


def _eips_in(data: Any) -> list[Eip]:
    return [_eip_in(d) for d in data]

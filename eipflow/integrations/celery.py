"""Celery tasks for eipflow's steps, safe under late acks, redelivery and retries.

Register them on your app, start a worker, and call them like any task::

    from celery import Celery
    from eipflow.integrations.celery import register

    app = Celery("cloud", broker="redis://127.0.0.1:6379/0", backend="redis://127.0.0.1:6379/0")
    eip = register(app)                      # opens Eipflow from $EIPFLOW_DB / $EIPFLOW_BACKEND per process
    eip.attach.delay(uuid, nic="nic-1", guest_ip="10.0.0.5", vm="vm-1", host="h1", op_id="req-42")

**Delivery guarantees.** Every task is ``acks_late`` with ``reject_on_worker_lost``: a message is
acknowledged only after the step finished, so a worker killed mid-step gets its message redelivered.
Every call runs with an eipflow operation id — the caller's ``op_id``, or ``celery:<task id>``,
which Celery keeps across retries and redeliveries — so a redelivered or retried task replays the
recorded outcome instead of doing the work twice.

**The attach is split into steps** so a redelivery resumes instead of restarting: (1) persist the
binding and its durable apply work item (``attach(wait=False)``, recorded under the operation id);
(2) run the EIP's work if it can be claimed now; (3) report the outcome. A redelivered attach replays
step 1, and step 2 claims the apply once the dead worker's lease has expired. While the work is
still leased elsewhere the task retries itself later with the same operation id.

**Outcomes.** Tasks return JSON: the EIP row as a dict (``list`` of rows for VM events). An attach
whose apply failed and was rolled back raises :class:`AttachRolledBack` (a plain, picklable-by-name
exception whose message says which EIP and why), so a chain stops there; one that a later detach, delete or
attach overtook raises :class:`AttachOvertaken` (the same reading as ``Eipflow.attach``'s
``AttachSuperseded``: :mod:`eipflow.outcome`). Errors that eipflow marks
``retryable`` (lost compare-and-swaps, database hiccups) are retried with backoff; the others fail
the task at once.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

from .._logging import get_logger
from ..api import Eipflow
from ..errors import AttachFailed, AttachSuperseded, ConflictError, EipflowError
from ..outcome import attach_outcome
from ..values import Eip
from . import FlowSource, resolve_flow

__all__ = ["AttachOvertaken", "AttachRolledBack", "EipflowTasks", "register"]

log = get_logger("eipflow.integrations.celery")

#: Retries of one task (pending work, retryable errors) before Celery gives up on it.
MAX_RETRIES = 60


class AttachOvertaken(Exception):
    """A later detach, delete or attach overtook the attach while it ran (``AttachSuperseded`` elsewhere).

    Plain and one-argument like :class:`AttachRolledBack`, for the same reason.
    """


class AttachRolledBack(Exception):
    """The attach's apply failed; eipflow rolled the binding back. Celery reports it as the task's failure.

    A plain exception with one message argument on purpose: Celery rebuilds it in the caller's process
    from its module, name and arguments.
    """


class _WorkPending(Exception):
    """The EIP's work is leased by another worker or waits for its backoff; the task retries later."""


class _PerProcess:
    """Opens the engine lazily, once per process: a prefork child must not reuse its parent's connections."""

    def __init__(self, source: FlowSource | None) -> None:
        self._source = source
        self._lock = threading.Lock()
        self._flow: Eipflow | None = None
        self._pid = -1

    def get(self) -> Eipflow:
        if isinstance(self._source, Eipflow):
            return self._source
        with self._lock:
            if self._flow is None or self._pid != os.getpid():
                self._flow = resolve_flow(self._source) if self._source is not None else Eipflow.open()
                self._pid = os.getpid()
            return self._flow


@dataclass(frozen=True)
class EipflowTasks:
    """The registered Celery tasks (each has ``.delay``/``.apply_async``/``.s``)."""

    create_eip: Any
    attach: Any
    detach: Any
    delete_eip: Any
    vm_stopped: Any
    vm_started: Any
    vm_migrated: Any
    run_due: Any


def _op_id(task: Any, op_id: str | None) -> str:
    return op_id or f"celery:{task.request.id}"


def _retry(task: Any, exc: BaseException, *, base_s: float) -> Exception:
    """Retry with capped exponential backoff; the arguments (and so the operation id) stay the same."""
    countdown = min(30.0, base_s * 2 ** task.request.retries)
    return task.retry(exc=exc, countdown=countdown, max_retries=MAX_RETRIES)  # type: ignore[no-any-return]


def _attach(flow: Eipflow, uuid: str, nic: str, guest_ip: str, vm: str, host: str, op_id: str) -> Eip:
    """Steps 1-3 of the attach (see the module docstring); raises _WorkPending while work runs elsewhere."""
    bound = flow.attach(uuid, nic=nic, guest_ip=guest_ip, vm=vm, host=host, op_id=op_id, wait=False)
    row = flow.runner.drive(uuid)
    outcome = attach_outcome(flow.store.history(uuid), row, uuid, version=bound.version)
    if outcome.ended == "pending":
        raise _WorkPending(f"EIP {uuid} is still {outcome.state} (work item {row.work_id if row else None}); "
                           "checking again later")
    try:
        return outcome.result()
    except AttachFailed as exc:
        raise AttachRolledBack(str(exc)) from None
    except AttachSuperseded as exc:
        raise AttachOvertaken(str(exc)) from None


def register(app: Any, flow: FlowSource | None = None, *, prefix: str = "eipflow", retry_base_s: float = 0.5
             ) -> EipflowTasks:
    """Register eipflow's tasks on ``app``.

    Args:
        app: a :class:`celery.Celery` app.
        flow: the engine, or a callable that opens one; default :meth:`Eipflow.open` with
            ``$EIPFLOW_DB``/``$EIPFLOW_BACKEND``, opened lazily in each worker process.
        prefix: task names are ``<prefix>.attach`` etc.
        retry_base_s: first retry delay; doubled per retry, capped at 30 s.
    """
    engine = _PerProcess(flow)
    options: dict[str, Any] = {"bind": True, "acks_late": True, "reject_on_worker_lost": True}

    def step(fn: Any) -> Any:
        """Run ``fn(flow, op_id, ...)`` with the operation id and the retry policy applied."""

        def run(task: Any, *args: Any, op_id: str | None = None, **kwargs: Any) -> Any:
            oid = _op_id(task, op_id)
            log.info("celery.step", task_name=task.name, op_id=oid, retries=task.request.retries,
                     redelivered=bool(task.request.delivery_info and task.request.delivery_info.get("redelivered")))
            try:
                return fn(engine.get(), oid, *args, **kwargs)
            except _WorkPending as exc:
                raise _retry(task, exc, base_s=retry_base_s) from exc
            except EipflowError as exc:
                # ConflictError from the operation ledger ("still running in another caller") is transient too.
                transient = exc.retryable or (type(exc) is ConflictError and "still running" in str(exc))
                if transient:
                    raise _retry(task, exc, base_s=retry_base_s) from exc
                raise

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        return app.task(name=f"{prefix}.{fn.__name__}", **options)(run)

    def create_eip(flow: Eipflow, op_id: str, vip: str, name: str | None = None) -> dict[str, Any]:
        """Allocate an EIP for ``vip``."""
        return flow.create_eip(vip, name, op_id=op_id).to_dict()

    def attach(flow: Eipflow, op_id: str, eip_uuid: str, nic: str, guest_ip: str, vm: str, host: str
               ) -> dict[str, Any]:
        """Attach the EIP; resumes a redelivered attach; raises AttachRolledBack when it was rolled back."""
        return _attach(flow, eip_uuid, nic, guest_ip, vm, host, op_id).to_dict()

    def detach(flow: Eipflow, op_id: str, eip_uuid: str) -> dict[str, Any]:
        """Detach the EIP (the revoke runs in this task, or in the in-flight call's)."""
        return flow.detach(eip_uuid, op_id=op_id).to_dict()

    def delete_eip(flow: Eipflow, op_id: str, eip_uuid: str) -> dict[str, Any]:
        """Delete the EIP (revoked and unbound first)."""
        return flow.delete_eip(eip_uuid, op_id=op_id).to_dict()

    def vm_stopped(flow: Eipflow, op_id: str, vm: str) -> list[dict[str, Any]]:
        """Record that the VM stopped and release its EIPs."""
        return [e.to_dict() for e in flow.vm_stopped(vm, op_id=op_id)]

    def vm_started(flow: Eipflow, op_id: str, vm: str, host: str) -> list[dict[str, Any]]:
        """Record that the VM runs on ``host`` and apply its EIPs there."""
        return [e.to_dict() for e in flow.vm_started(vm, host, op_id=op_id)]

    def vm_migrated(flow: Eipflow, op_id: str, vm: str, host: str) -> list[dict[str, Any]]:
        """Record that the VM moved to ``host``; its rules follow it."""
        return [e.to_dict() for e in flow.vm_migrated(vm, host, op_id=op_id)]

    def run_due(flow: Eipflow, op_id: str) -> int:
        """Run every due work item once (schedule it with celery beat as the reconciler's heartbeat)."""
        return flow.run_due()

    return EipflowTasks(
        create_eip=step(create_eip),
        attach=step(attach),
        detach=step(detach),
        delete_eip=step(delete_eip),
        vm_stopped=step(vm_stopped),
        vm_started=step(vm_started),
        vm_migrated=step(vm_migrated),
        run_due=step(run_due),
    )

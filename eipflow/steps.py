"""The attach flow as separate, resumable steps for orchestrators (Temporal, Airflow, Step Functions…).

``Eipflow.attach(wait=True)`` runs the whole flow in one call. An orchestrator
that runs each step as its own task, retrying it after a crash or timeout, uses
these three instead. Every step is safe to repeat:

1. :func:`bind` persists the binding and the durable apply work item (the
   intent). Repeating it with the same ``op_id`` replays the first answer and
   does nothing else; the same ``op_id`` with other parameters raises
   :class:`~eipflow.OperationIdReused`.
2. :func:`apply` runs the EIP's current work item if it can be claimed now. It
   does nothing when the EIP is stable, the item is leased by a live worker, or
   it is waiting for its backoff — a worker or a later retry will run it.
3. :func:`finish` drives the EIP to a stable state and reports the outcome:
   the row (``attached``, or ``released`` when the VM is stopped),
   :class:`~eipflow.AttachFailed` when the attach was rolled back, or
   :class:`~eipflow.AttachSuperseded` when a later request overtook it — the same
   reading as ``Eipflow.attach`` (:mod:`eipflow.outcome`). While work is still in
   flight elsewhere it raises :class:`StepPending` (retryable).

See ``docs/steps.md``.
"""

from __future__ import annotations

from .api import Eipflow
from .errors import EipNotFound, StepPending
from .outcome import attach_outcome
from .values import Eip

__all__ = ["StepPending", "apply", "bind", "finish"]


def bind(flow: Eipflow, uuid: str, *, nic: str, guest_ip: str, vm: str, host: str, op_id: str) -> Eip:
    """Step 1: persist the binding and its apply work item; the backend is not called.

    Args:
        flow: the opened flow.
        uuid: the EIP.
        nic: the VM NIC id.
        guest_ip: the NIC's guest IP.
        vm: the VM id.
        host: the host the VM runs on (eipflow's recorded placement of the VM wins).
        op_id: the idempotency key: the orchestrator's stable id for this attach.

    Returns:
        The row right after the binding was persisted (``binding``), replayed on repeats.

    Raises:
        OperationIdReused: ``op_id`` was used for a different request.
        IllegalTransition: the EIP is not ``detached`` (another attach won).
        GuestIpInUse: the guest IP already carries an EIP.
    """
    return flow.attach(uuid, nic=nic, guest_ip=guest_ip, vm=vm, host=host, op_id=op_id, wait=False)


def apply(flow: Eipflow, uuid: str) -> Eip:
    """Step 2: run the EIP's current work item if it is claimable now (one backend call at most).

    Returns:
        The row afterwards. A row still in flight means the work runs elsewhere or later.

    Raises:
        EipNotFound: the EIP does not exist (deleted meanwhile).
    """
    eip = flow.store.require(uuid)
    if eip.work_id is not None:
        flow.runner.run_item(eip.work_id)
    return flow.store.require(uuid)


def finish(flow: Eipflow, uuid: str, *, op_id: str | None = None) -> Eip:
    """Step 3: drive the EIP to a stable state and report how the attach ended
    (:func:`eipflow.outcome.attach_outcome`, the same reading :meth:`Eipflow.attach` reports).

    Args:
        flow: the opened flow.
        uuid: the EIP.
        op_id: the ``op_id`` given to :func:`bind`: judge that attach (default: the latest one).

    Returns:
        The stable row: ``attached``, or ``released`` (the VM is stopped; it is applied when the VM
        starts).

    Raises:
        AttachFailed: the attach's apply failed and the binding was rolled back.
        AttachSuperseded: a later detach, delete or attach overtook the attach (``by_event`` says which).
        StepPending: backend work is still in flight elsewhere or waiting for a retry.
        EipNotFound: the EIP never existed.
    """
    eip = flow.runner.drive(uuid)
    history = flow.store.history(uuid)
    if not history:
        raise EipNotFound(uuid)
    return attach_outcome(history, eip, uuid, op_id=op_id).result()

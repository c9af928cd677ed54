"""How an attach ended: the one reading of an EIP's history that every face reports from.

An attach records its intent (the ``attach`` history row), then its work runs — inline, in a worker, in
an orchestrator's step. Meanwhile other callers may record a detach, a delete, a VM stop or a later
attach. :func:`attach_outcome` reads what became of *this* attach (the rows after its ``attach`` record,
up to the next attach of the same EIP) and says which of the legal endings it reached:

============  ==================================================================================
``attached``   realized on the VM's host
``released``   bound, not realized: the VM is stopped; it is applied when the VM starts
``rolled_back``  the apply failed and the binding was rolled back (``error`` says why)
``superseded``   a later request overtook it: a detach, a delete, or another attach (``by`` says which)
``pending``      its work (or its rollback) is still in flight elsewhere, or waiting for a retry
============  ==================================================================================

:meth:`AttachOutcome.result` turns it into what the faces return: the row for ``attached`` and
``released``; :class:`~eipflow.AttachFailed`, :class:`~eipflow.AttachSuperseded` or
:class:`~eipflow.StepPending` for the others. ``Eipflow.attach``, ``AsyncEipflow.attach``,
``eipflow.steps.finish``, the Celery and TaskFlow tasks and the DBOS steps all report through it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import AttachFailed, AttachSuperseded, EipNotFound, StepPending
from .machine import IN_FLIGHT
from .values import Eip, TransitionRecord

__all__ = ["ENDINGS", "AttachOutcome", "attach_outcome"]

ENDINGS = ("attached", "released", "rolled_back", "superseded", "pending")
_OVERTAKERS = ("detach", "delete", "attach")


@dataclass(frozen=True, slots=True)
class AttachOutcome:
    """What became of one attach.

    Attributes:
        eip_uuid: the EIP.
        ended: one of :data:`ENDINGS`.
        row: the EIP's row now (``None`` once deleted).
        error: ``rolled_back``: the apply's error.
        by: ``superseded``: the history row of the request that overtook the attach.
    """

    eip_uuid: str
    ended: str
    row: Eip | None
    error: str | None = None
    by: TransitionRecord | None = None

    @property
    def state(self) -> str:
        return self.row.state if self.row is not None else "deleted"

    def result(self) -> Eip:
        """The row when the attach ``attached`` or ``released``; otherwise the ending's typed error.

        Raises:
            AttachFailed: ``rolled_back``.
            AttachSuperseded: ``superseded`` (with ``by_event``/``by_op_id`` of the overtaking request).
            StepPending: ``pending``.
        """
        if self.ended in ("attached", "released"):
            assert self.row is not None
            return self.row
        if self.ended == "rolled_back":
            raise AttachFailed(self.eip_uuid, self.error or "apply failed", self.state)
        if self.ended == "superseded":
            binding = (self.row.vm_nic_uuid, self.row.guest_ip) if self.row is not None else (None, None)
            raise AttachSuperseded(self.eip_uuid, self.state, binding,
                                   by_event=self.by.event if self.by else None,
                                   by_op_id=self.by.op_id if self.by else None)
        raise StepPending(self.eip_uuid, self.state, self.row.work_id if self.row is not None else None)


def attach_outcome(
    history: list[TransitionRecord], row: Eip | None, uuid: str, *, op_id: str | None = None,
    version: int | None = None,
) -> AttachOutcome:
    """Judge the attach recorded at ``version`` (or with ``op_id``, or the latest) from the EIP's history.

    Args:
        history: the EIP's whole history, oldest first.
        row: the EIP's row now (``None``: deleted).
        uuid: the EIP.
        op_id: judge the attach recorded with this operation id.
        version: judge the attach recorded at this version.

    Raises:
        EipNotFound: no history at all, or no such attach and no row.
        AttachFailed: the history holds no such attach (the EIP exists).
    """
    attaches = [r for r in history if r.event == "attach" and (op_id is None or r.op_id == op_id)
                and (version is None or r.version == version)]
    if not attaches:
        if row is None:
            raise EipNotFound(uuid)
        raise AttachFailed(uuid, "no such attach in the history", row.state)
    start = attaches[-1]
    later = [r for r in history if r.version > start.version]
    nxt = next((r for r in later if r.event == "attach"), None)
    mine = [r for r in later if nxt is None or r.version < nxt.version]  # this attach's own outcome only
    if any(r.to_state == "rolling_back" for r in mine):
        last = mine[-1]
        if last.to_state in IN_FLIGHT and nxt is None:
            return AttachOutcome(uuid, "pending", row)  # its rollback still runs
        error = next((str(r.details["error"]) for r in reversed(mine) if r.details.get("error")), "apply failed")
        return AttachOutcome(uuid, "rolled_back", row, error=error)
    overtaker = nxt or next((r for r in mine if r.event in _OVERTAKERS), None)
    binding = (start.details.get("nic"), start.details.get("guest_ip"))
    if row is None or nxt is not None or (row.vm_nic_uuid, row.guest_ip) != binding:
        return AttachOutcome(uuid, "superseded", row, by=overtaker)
    if row.state in IN_FLIGHT:
        return AttachOutcome(uuid, "pending", row)
    if row.state in ("attached", "released"):
        return AttachOutcome(uuid, row.state, row)
    return AttachOutcome(uuid, "superseded", row, by=overtaker)  # pragma: no cover - a bound row is one of those

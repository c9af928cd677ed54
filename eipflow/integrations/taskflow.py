"""OpenStack TaskFlow tasks that run eipflow steps: ``execute`` does the step, ``revert`` undoes it.

Put them in any TaskFlow pattern; a later task's failure reverts them through eipflow (a reverted
attach is detached cleanly: the rule revoked, the binding cleared, the history kept)::

    from taskflow import engines
    from taskflow.patterns import linear_flow
    from eipflow.integrations.taskflow import AttachEip, CreateEip

    flow = linear_flow.Flow("boot-vm").add(
        CreateEip(eipflow, name="allocate"),
        BootVm(),                                   # provides vm, host, nic, guest_ip
        AttachEip(eipflow, name="attach-eip"),
        ConfigureDns(),
    )
    engines.run(flow, store={"operation_id": request_id, "vip": "203.0.113.10"})

**Operation ids.** Each task derives its eipflow operation id from the flow's ``operation_id``
input (your request id) and its own task name, so a task that the engine runs again for the same
attempt — a resumed flow after a crash, an engine that re-dispatches — replays the first outcome and
does the backend work once. A task that was *reverted* and runs again (a ``Retry`` controller) is a
new attempt: it gets a new generation (``…/attach.2``), so the EIP is really attached again.

**Which engine.** The tasks hold an :class:`~eipflow.Eipflow` (or a callable that opens one), so
they suit the serial and parallel engines in one process. For TaskFlow's worker-based engine, give
them a callable that opens the engine inside the worker.
"""

from __future__ import annotations

import json
from typing import Any

from taskflow import task

from .. import validation
from ..api import Eipflow
from ..errors import EipNotFound, IllegalTransition, InvalidInput
from ..values import Eip
from . import FlowSource, resolve_flow

__all__ = ["AttachEip", "CreateEip", "DetachEip", "EipflowTask"]


class EipflowTask(task.Task):  # type: ignore[misc]  # taskflow ships no type information
    """Base: holds the engine source and builds operation ids from the flow's ``operation_id``."""

    def __init__(self, eipflow: FlowSource, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self._source = eipflow

    @property
    def eipflow(self) -> Eipflow:
        """The engine (opened on first use when a callable was given)."""
        if not isinstance(self._source, Eipflow):
            self._source = resolve_flow(self._source)
        return self._source

    def op_id(self, operation_id: str, step: str) -> str:
        """``<operation_id>/<task name>/<step>``: stable across re-runs of this task in this flow."""
        return f"{operation_id}/{self.name}/{step}"


class CreateEip(EipflowTask):
    """Allocate an EIP for ``vip``; revert deletes it.

    Requires ``vip`` and ``operation_id``; provides ``eip_uuid``.
    """

    default_provides = "eip_uuid"

    def execute(self, vip: str, operation_id: str) -> str:
        eip = self.eipflow.create_eip(vip, name=self.name, op_id=self.op_id(operation_id, "create"))
        return eip.uuid

    def revert(self, vip: str, operation_id: str, result: Any, **kwargs: Any) -> None:
        if not isinstance(result, str):
            return  # the create itself failed: it is one transaction, so nothing was allocated
        try:
            self.eipflow.delete_eip(result, op_id=self.op_id(operation_id, "delete"))
        except EipNotFound:
            pass  # deleted already (by a previous run of this revert)


class AttachEip(EipflowTask):
    """Attach the EIP ``eip_uuid`` to ``guest_ip`` of ``nic`` on ``vm`` at ``host``; revert detaches it.

    Requires ``eip_uuid``, ``nic``, ``guest_ip``, ``vm``, ``host`` and ``operation_id`` (rename any of
    them with TaskFlow's ``rebind``); provides ``eip``, the attached row as a dict.

    ``execute`` raises :class:`~eipflow.AttachFailed` when the apply failed (eipflow has already
    rolled the binding back), which makes the engine revert the flow. ``revert`` detaches only a
    binding that is still this task's (same NIC, guest IP and VM), so it never undoes an attach that
    a concurrent request won.
    """

    default_provides = "eip"

    def _generation(self, operation_id: str) -> int:
        """The attempt an execute or revert belongs to: the first whose attach is not closed.

        An attempt is closed when its attach failed (eipflow rolled it back) or its revert completed;
        a re-run of the task then is a new attempt, with a new operation id.
        """
        ops = self.eipflow.operations
        n = 1
        while (attach := ops.get(self.op_id(operation_id, f"attach.{n}"))) is not None:
            revert = ops.get(self.op_id(operation_id, f"revert.{n}"))
            if attach["status"] != "failed" and (revert is None or revert["status"] != "done"):
                break
            n += 1
        return n

    def execute(self, eip_uuid: str, nic: str, guest_ip: str, vm: str, host: str, operation_id: str) -> dict[str, Any]:
        n = self._generation(operation_id)
        eip = self.eipflow.attach(
            eip_uuid, nic=nic, guest_ip=guest_ip, vm=vm, host=host, op_id=self.op_id(operation_id, f"attach.{n}")
        )
        return eip.to_dict()

    def revert(
        self, eip_uuid: str, nic: str, guest_ip: str, vm: str, host: str, operation_id: str, result: Any, **kwargs: Any
    ) -> None:
        n = self._generation(operation_id)
        revert_op = self.op_id(operation_id, f"revert.{n}")
        if self.eipflow.operations.get(self.op_id(operation_id, f"attach.{n}")) is None:
            return  # this attempt never reached eipflow: nothing to undo
        try:
            row: Eip | None = self.eipflow.get_eip(eip_uuid)
        except EipNotFound:
            row = None
        if row is not None and _ours(row, nic, guest_ip, vm):
            try:
                self.eipflow.detach(eip_uuid, op_id=revert_op)
                return
            except IllegalTransition:
                pass  # detached between our read and the detach: the state we wanted
        # Nothing of ours to undo (another request's binding now, or the EIP is gone): still close
        # this attempt, so that a re-run attaches anew instead of replaying the old outcome.
        ops = self.eipflow.operations
        if ops.begin(revert_op, json.dumps({"op": "taskflow_revert", "eip": eip_uuid, "undone": False})) is None:
            ops.finish(revert_op, "done", "null")


class DetachEip(EipflowTask):
    """Detach the EIP ``eip_uuid``. Not undone on revert: re-attaching during a failed teardown would
    surprise more than it helps; add your own task if your flow needs that.

    Requires ``eip_uuid`` and ``operation_id``; provides ``eip``.
    """

    default_provides = "eip"

    def execute(self, eip_uuid: str, operation_id: str) -> dict[str, Any]:
        op_id = self.op_id(operation_id, "detach")
        try:
            eip = self.eipflow.detach(eip_uuid, op_id=op_id)
        except IllegalTransition as exc:
            if exc.state != "detached":
                raise
            eip = self.eipflow.get_eip(eip_uuid)  # nothing to detach: done
        return eip.to_dict()


def _ours(row: Eip, nic: str, guest_ip: str, vm: str) -> bool:
    # The row holds the guest IP in canonical form; the flow's store holds it as the caller wrote it.
    try:
        ip = validation.canonical_address("guest_ip", guest_ip)
    except InvalidInput:
        return False
    return (row.vm_nic_uuid, row.guest_ip, row.vm_uuid) == (nic, ip, vm)

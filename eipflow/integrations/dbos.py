"""DBOS Transact steps for eipflow: a replayed step resumes its eipflow operation instead of starting another.

Call them from a DBOS workflow like any step::

    from dbos import DBOS
    from eipflow import Eipflow
    from eipflow.integrations.dbos import EipflowSteps, shared_config

    DBOS(config=shared_config("postgresql+psycopg://cloud@db/cloud", name="cloud"))
    eips = EipflowSteps(lambda: Eipflow.open("postgresql+psycopg://cloud@db/cloud"))

    @DBOS.workflow()
    def boot_vm(request: dict) -> str:
        eip = eips.create_eip(request["vip"])
        vm = boot(request)                                  # your own @DBOS.step
        eips.attach(eip.uuid, nic=vm["nic"], guest_ip=vm["ip"], vm=vm["id"], host=vm["host"])
        publish_dns(eip.vip)                                # your own @DBOS.step
        return eip.uuid

    DBOS.launch()

**Exactly one effect.** DBOS runs a workflow's steps at least once: a process that dies inside a step
runs that step again when DBOS recovers the workflow. Each method here runs as one DBOS step
(``DBOS.run_step``) whose eipflow operation id is derived from the workflow id and the step's position
(:func:`operation_id`: ``dbos:<workflow id>/<step id>``). Recovery re-runs the workflow with the same
id and the same step positions, so a re-run step presents the same operation id and eipflow resumes
the operation the dead process started — the binding it persisted, the durable work item it leased —
instead of starting another; a step that had finished in eipflow but whose checkpoint DBOS had not yet
written replays the recorded outcome. A step DBOS already checkpointed is not run again at all.

The steps are synchronous; from an ``async def`` workflow call them with ``await asyncio.to_thread(...)``
(DBOS's context goes with the call), one at a time so that step positions stay deterministic.

**The attach step** persists the binding and its apply work item (``attach(wait=False)``, under the
operation id), runs the work if it can be claimed, and waits until the EIP is stable: while the work is
leased by a dead process it waits for that lease to expire (``EIPFLOW_LEASE_SECONDS``, default 60 s),
then runs the apply itself, once. It returns the row (``attached``; ``released`` when the VM is
stopped) or raises :class:`~eipflow.AttachFailed` when the apply failed and eipflow rolled the binding
back. Errors are eipflow's own types and pickle cleanly, so DBOS checkpoints them and a replayed step
raises the same error. Errors eipflow marks ``retryable`` (lost compare-and-swaps, database hiccups,
:class:`~eipflow.StepPending` when the wait ran out) are retried by DBOS's step retries with the same
step id, hence the same operation id; every other error fails the step at once.

**Transactions.** These are DBOS *steps*, not ``@DBOS.transaction``\\ s: DBOS opens no transaction
around them. eipflow commits its own short transactions on its own engine — the intent (row, history,
work item) in one, the completion in another — and never holds a transaction open across the backend
call. DBOS writes the step's checkpoint in a separate transaction on its system database after the step
returns. The two are not atomic; the operation id is what closes the gap. Do not call eipflow from inside
a ``@DBOS.transaction``: the backend call would then run inside that datasource transaction.

**One database or two.** DBOS keeps its system tables in the schema ``dbos`` (``dbos_system_schema``),
eipflow its tables in the connection's default schema, so on PostgreSQL one database holds both:
:func:`shared_config` points DBOS's ``system_database_url`` at eipflow's URL. To keep them apart, give
DBOS another database (or another SQLite file, which avoids two writers contending for one file lock).

**Cancellation.** ``DBOS.cancel_workflow`` stops a workflow at its next step boundary; a step already
running (these steps are synchronous, so never preempted) finishes, but DBOS does not checkpoint it. A
workflow cancelled during or after its attach step leaves the EIP ``attached`` (or ``released`` if the VM
stopped), with its rule — an attach that started completes through eipflow's durable work, so ``eipflow
reconcile`` has nothing to repair. DBOS runs no compensation: call :meth:`EipflowSteps.detach` (in a new
workflow, or in your workflow's error path) to undo it. ``DBOS.resume_workflow`` re-runs the cancelled
step with the same step id, and eipflow replays its outcome.

**Crash points** (for tests, see :mod:`eipflow.faultpoints`): ``EIPFLOW_CRASH_AT=dbos_step_done:<method>``
dies after the eipflow operation completed and before DBOS checkpoints the step;
``dbos_step_checkpointed:<method>`` dies after the checkpoint, before the workflow's next step.

**Forks.** ``DBOS.fork_workflow`` gives the fork a new workflow id, so its re-executed steps are new
eipflow operations: re-attaching an EIP the original already attached raises
:class:`~eipflow.IllegalTransition`. Fork from a step after the attach, or detach first.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from dbos import DBOS, DBOSConfig, StepOptions
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .._logging import get_logger
from ..api import Eipflow
from ..errors import ConflictError, EipflowError, InvalidInput, StepPending
from ..faultpoints import crash_point
from ..machine import IN_FLIGHT
from ..validation import MAX_ID_LENGTH
from ..values import Eip
from . import FlowSource, resolve_flow

__all__ = ["DEFAULT_STEP_OPTIONS", "EipflowSteps", "operation_id", "retryable", "shared_config"]

log = get_logger("eipflow.integrations.dbos")
T = TypeVar("T")

_PLAIN_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]+$")
_POLL_START_S = 0.02
_POLL_MAX_S = 0.5


def retryable(exc: BaseException) -> bool:
    """DBOS ``should_retry``: retry the errors eipflow marks ``retryable``, and nothing else.

    The operation ledger's "still running in another caller" (a plain :class:`~eipflow.ConflictError`)
    counts as retryable too: another process runs this very operation (a recovery racing the original
    process), and the retry gets its outcome.
    """
    if not isinstance(exc, EipflowError):
        return False
    return exc.retryable or (type(exc) is ConflictError and "still running" in str(exc))


#: DBOS step options of every eipflow step: retry eipflow's retryable errors with backoff.
DEFAULT_STEP_OPTIONS: StepOptions = {
    "retries_allowed": True,
    "max_attempts": 5,
    "interval_seconds": 1.0,
    "backoff_rate": 2.0,
    "should_retry": retryable,
}


def operation_id(workflow_id: str | None = None, step_id: int | None = None) -> str:
    """The eipflow operation id of a DBOS step: ``dbos:<workflow id>/<step id>``.

    Stable across every run of the same step of the same workflow (recovery, step retries), distinct
    for every other step. Workflow ids that are long or use characters eipflow's ids do not allow are
    replaced by their SHA-256 (``dbos:sha256:<hex>/<step id>``).

    Args:
        workflow_id: default: the running workflow's (``DBOS.workflow_id``).
        step_id: default: the running step's (``DBOS.step_id``).

    Raises:
        InvalidInput: called outside a DBOS step without both ids.
    """
    wf = workflow_id if workflow_id is not None else DBOS.workflow_id
    step = step_id if step_id is not None else DBOS.step_id
    if wf is None or step is None:
        raise InvalidInput("operation_id() needs a running DBOS step (or explicit workflow_id and step_id)")
    op = f"dbos:{wf}/{step}"
    if len(op) > MAX_ID_LENGTH or not _PLAIN_ID.match(wf):
        op = f"dbos:sha256:{hashlib.sha256(wf.encode()).hexdigest()}/{step}"
    return op


def shared_config(url: str, *, name: str, schema: str = "dbos", **extra: Any) -> DBOSConfig:
    """A DBOS configuration whose system tables live in eipflow's database, in their own schema.

    Args:
        url: eipflow's SQLAlchemy URL (PostgreSQL: DBOS connects with ``psycopg``; SQLite: one file
            holds both sets of tables, with distinct names).
        name: the DBOS application name.
        schema: the schema of DBOS's system tables (PostgreSQL).
        extra: any other :class:`dbos.DBOSConfig` key.

    Raises:
        InvalidInput: ``url`` is not a PostgreSQL or SQLite URL (DBOS keeps its tables in nothing else:
            give DBOS a ``system_database_url`` of its own).
    """
    try:
        dialect = make_url(url).get_backend_name()
    except ArgumentError:
        raise InvalidInput(f"not a database URL: {url!r}") from None
    if dialect not in ("postgresql", "sqlite"):
        raise InvalidInput(
            f"DBOS keeps its system tables in PostgreSQL or SQLite, not {dialect}: "
            "give DBOSConfig a system_database_url of its own"
        )
    config: dict[str, Any] = {"name": name, "system_database_url": url, "dbos_system_schema": schema, **extra}
    return config  # type: ignore[return-value]  # a TypedDict built from keyword arguments


class EipflowSteps:
    """eipflow's operations as DBOS steps (create, attach, detach, delete, the VM events).

    Call the methods from a ``@DBOS.workflow``; each runs as one step named ``<prefix>.<method>``
    with an operation id from :func:`operation_id`. Outside a workflow they run as plain calls (with
    the ``op_id`` you pass, if any). Results are checkpointed by DBOS as plain dicts and handed back
    as :class:`~eipflow.Eip` rows, so a checkpoint survives an eipflow upgrade.

    Args:
        flow: the engine, or a zero-argument callable that opens one on first use (default
            :meth:`Eipflow.open` with ``$EIPFLOW_DB`` / ``$EIPFLOW_BACKEND``).
        prefix: step names are ``<prefix>.attach`` etc. (what ``DBOS.list_workflow_steps`` shows).
        options: DBOS step options (default :data:`DEFAULT_STEP_OPTIONS`).
        settle_timeout_s: how long a step waits for backend work leased elsewhere (a dead process's
            lease) before raising :class:`~eipflow.StepPending`; default twice the lease.

    Raises:
        InvalidInput: ``settle_timeout_s`` is not positive.
    """

    def __init__(
        self,
        flow: FlowSource | None = None,
        *,
        prefix: str = "eipflow",
        options: StepOptions | None = None,
        settle_timeout_s: float | None = None,
    ) -> None:
        self._source: FlowSource = flow if flow is not None else Eipflow.open
        self._flow: Eipflow | None = flow if isinstance(flow, Eipflow) else None
        self._lock = threading.Lock()
        self.prefix = prefix
        self.options: StepOptions = {**DEFAULT_STEP_OPTIONS, **(options or {})}
        if settle_timeout_s is not None and not settle_timeout_s > 0:
            raise InvalidInput(f"settle_timeout_s must be a positive number of seconds, not {settle_timeout_s!r}")
        self.settle_timeout_s = settle_timeout_s

    @property
    def flow(self) -> Eipflow:
        """The engine (opened on first use when a callable was given)."""
        if self._flow is None:
            with self._lock:
                if self._flow is None:
                    self._flow = resolve_flow(self._source)
        return self._flow

    # -- the steps -------------------------------------------------------------------------------
    def create_eip(self, vip: str, name: str | None = None, *, op_id: str | None = None) -> Eip:
        """Allocate an EIP for ``vip`` (state ``detached``); a replay returns the same EIP."""
        return self._row("create_eip", lambda op: self.flow.create_eip(vip, name, op_id=op), op_id)

    def attach(
        self, eip_uuid: str, *, nic: str, guest_ip: str, vm: str, host: str, op_id: str | None = None
    ) -> Eip:
        """Attach the EIP and wait until it is stable; see the module docstring.

        Returns:
            The row: ``attached``, or ``released`` (the VM is stopped; applied when it starts), or
            ``detached`` when a detach recorded meanwhile overtook the attach.

        Raises:
            AttachFailed: the apply failed and the binding was rolled back.
            IllegalTransition: the EIP is not ``detached`` (another attach holds it).
            GuestIpInUse: the guest IP already carries an EIP.
            StepPending: the work stayed leased elsewhere for ``settle_timeout_s`` (retried by DBOS).
        """

        def run(op: str | None) -> Eip:
            self.flow.attach(eip_uuid, nic=nic, guest_ip=guest_ip, vm=vm, host=host, op_id=op, wait=False)
            return self._finish(eip_uuid, op)

        return self._row("attach", run, op_id)

    def detach(self, eip_uuid: str, *, op_id: str | None = None) -> Eip:
        """Revoke the EIP's rule and clear its binding; waits until it is ``detached``."""
        return self._row("detach", lambda op: self._settle(self.flow.detach(eip_uuid, op_id=op, wait=False)), op_id)

    def delete_eip(self, eip_uuid: str, *, op_id: str | None = None) -> Eip:
        """Delete the EIP (revoked and unbound first); returns the last row, ``state == "deleted"``."""

        def run(op: str | None) -> Eip:
            return self._settle(self.flow.delete_eip(eip_uuid, op_id=op, wait=False))

        return self._row("delete_eip", run, op_id)

    def vm_stopped(self, vm: str, *, op_id: str | None = None) -> list[Eip]:
        """The VM stopped: its EIPs are released (bindings kept, rules revoked)."""
        return self._rows("vm_stopped", lambda op: self.flow.vm_stopped(vm, op_id=op, wait=False), op_id)

    def vm_started(self, vm: str, host: str, *, op_id: str | None = None) -> list[Eip]:
        """The VM runs on ``host``: its released EIPs are applied there."""
        return self._rows("vm_started", lambda op: self.flow.vm_started(vm, host, op_id=op, wait=False), op_id)

    def vm_migrated(self, vm: str, to_host: str, *, op_id: str | None = None) -> list[Eip]:
        """The VM moved to ``to_host``: its rules follow it."""
        return self._rows("vm_migrated", lambda op: self.flow.vm_migrated(vm, to_host, op_id=op, wait=False), op_id)

    # -- machinery -------------------------------------------------------------------------------
    def _step(self, name: str, body: Callable[[str | None], T], op_id: str | None) -> T:
        """Run ``body(op_id)`` as the DBOS step ``<prefix>.<name>`` (a plain call outside a workflow)."""
        step_name = f"{self.prefix}.{name}"
        if DBOS.workflow_id is None:
            return body(op_id)  # not in a workflow: a plain call with the caller's op_id
        # Called from inside another step, DBOS runs this as a plain call in that step: the id is
        # the enclosing step's, qualified by the operation.
        nested = DBOS.step_id is not None

        def run() -> T:
            op = op_id
            if op is None:
                op = f"{operation_id()}/{name}" if nested else operation_id()
            status = DBOS.step_status
            log.info("dbos.step", step_name=step_name, op_id=op, workflow_id=DBOS.workflow_id,
                     attempt=status.current_attempt if status else None)
            result = body(op)
            # The eipflow operation is complete; DBOS has not checkpointed the step yet.
            crash_point("dbos_step_done", name)
            return result

        options: StepOptions = {**self.options, "name": step_name}
        result = DBOS.run_step(options, run)
        # DBOS has checkpointed the step; the workflow's next step has not started.
        crash_point("dbos_step_checkpointed", name)
        return result

    def _row(self, name: str, body: Callable[[str | None], Eip], op_id: str | None) -> Eip:
        return _eip(self._step(name, lambda op: body(op).to_dict(), op_id))

    def _rows(self, name: str, body: Callable[[str | None], list[Eip]], op_id: str | None) -> list[Eip]:
        def run(op: str | None) -> list[dict[str, Any]]:
            return [self._settle(e).to_dict() for e in body(op)]

        return [_eip(d) for d in self._step(name, run, op_id)]

    def _deadline(self) -> float:
        timeout = self.settle_timeout_s
        if timeout is None:
            timeout = 2 * self.flow.runner.lease_seconds
        return time.monotonic() + timeout

    def _finish(self, uuid: str, op: str | None) -> Eip:
        """Drive the attach to its outcome, waiting while its work is leased elsewhere."""
        from ..steps import finish

        deadline, pause = self._deadline(), _POLL_START_S
        while True:
            try:
                return finish(self.flow, uuid, op_id=op)
            except StepPending:
                if time.monotonic() > deadline:
                    raise
            # The work is leased by another process (alive, or dead and waiting for its lease to
            # expire): nothing to wake us, so poll with a capped backoff.
            time.sleep(pause)
            pause = min(pause * 2, _POLL_MAX_S)

    def _settle(self, eip: Eip) -> Eip:
        """Drive an intent's EIP to a stable state (or its deletion); returns the last row."""
        deadline, pause = self._deadline(), _POLL_START_S
        row: Eip | None = eip
        while True:
            if row is None or row.state == "deleted":
                return _gone(eip)
            if row.state not in IN_FLIGHT:
                return row
            row = self.flow.runner.drive(eip.uuid)
            if row is None:
                return _gone(eip)
            if row.state not in IN_FLIGHT:
                return row
            if time.monotonic() > deadline:
                raise StepPending(row.uuid, row.state, row.work_id)
            time.sleep(pause)  # leased elsewhere: see _finish
            pause = min(pause * 2, _POLL_MAX_S)


def _gone(eip: Eip) -> Eip:
    from dataclasses import replace

    return replace(eip, state="deleted", work_id=None)


def _eip(data: dict[str, Any]) -> Eip:
    from datetime import datetime

    fields = dict(data)
    fields["created_at"] = datetime.fromisoformat(fields["created_at"])
    fields["updated_at"] = datetime.fromisoformat(fields["updated_at"])
    return Eip(**fields)

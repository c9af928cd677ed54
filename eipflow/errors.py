"""Every error eipflow raises.

    EipflowError
    ├── NotFound (LookupError)
    │   ├── EipNotFound
    │   └── WorkItemNotFound
    ├── InvalidInput (ValueError)
    │   ├── InvalidAddress
    │   ├── InvalidIdentifier
    │   ├── InvalidBackendSpec
    │   └── OperationIdReused
    ├── ConflictError
    │   ├── IllegalTransition
    │   ├── VersionConflict
    │   ├── GuestIpInUse
    │   ├── VipInUse
    │   ├── AddressInUse        (a guest IP that is some EIP's VIP, or a VIP that is some EIP's guest IP)
    │   ├── AttachSuperseded    (a detach/delete/other attach overtook the in-flight attach)
    │   └── StepPending         (retryable: a step's backend work is still in flight elsewhere)
    ├── BackendError            (retryable: bool)
    │   ├── BackendTimeout      (outcome unknown: treated as maybe-applied)
    │   ├── StaleGeneration     (the host has seen a newer generation of this EIP: superseded, never retried)
    │   └── AddressNotAllowed   (not retryable: the host refuses to program that address)
    ├── AttachFailed            (the attach's apply failed and was rolled back)
    ├── DatabaseError           (connection problems, not a database; the URL is shown without secrets)
    └── eipflow.diagrams.errors (GraphvizNotFound, GraphvizFailed, DiagramsStale; InvalidSpec and
                                 UnknownDiagramFormat under InvalidInput)

Each error carries its context as attributes and builds its own message, which
says what is wrong and what to do. Bad input is rejected before anything changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "AddressInUse",
    "AddressNotAllowed",
    "AttachFailed",
    "AttachSuperseded",
    "BackendError",
    "BackendTimeout",
    "ConflictError",
    "DatabaseError",
    "EipNotFound",
    "EipflowError",
    "GuestIpInUse",
    "IllegalTransition",
    "InvalidAddress",
    "InvalidBackendSpec",
    "InvalidIdentifier",
    "InvalidInput",
    "NotFound",
    "OperationIdReused",
    "StaleGeneration",
    "StepPending",
    "VersionConflict",
    "VipInUse",
    "WorkItemNotFound",
]


#: how many characters of a rejected value a message echoes (a 10,000-character name is not repeated whole)
MAX_ECHO = 60


def shown(value: object) -> str:
    """``repr(value)`` for a message: escaped (no control characters reach a terminal) and bounded."""
    text = repr(value)
    if len(text) <= MAX_ECHO:
        return text
    size = f", {len(value)} characters" if isinstance(value, str | bytes) else ""
    return f"{text[:MAX_ECHO]}…{size}"


class EipflowError(Exception):
    """Base class of every error eipflow raises."""

    #: whether repeating the same call later may succeed
    retryable: bool = False

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take their context as __init__ arguments but hand Exception only the message,
        # so the default pickling (cls(*args)) cannot rebuild them. Rebuild from the message and the
        # attributes instead: durable-execution engines and task queues checkpoint errors by pickling.
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


def _rebuild(cls: type[EipflowError], args: tuple[Any, ...], state: dict[str, Any]) -> EipflowError:
    exc = cls.__new__(cls, *args)
    Exception.__init__(exc, *args)
    exc.__dict__.update(state)
    return exc


class NotFound(EipflowError, LookupError):
    """Something looked up by id does not exist."""


class EipNotFound(NotFound):
    """No EIP with that uuid (a deleted EIP keeps only its history)."""

    def __init__(self, eip_uuid: str) -> None:
        self.eip_uuid = eip_uuid
        super().__init__(f"EIP {eip_uuid} not found (deleted EIPs keep only their history: eip history {eip_uuid})")


class WorkItemNotFound(NotFound):
    """No work item with that id."""

    def __init__(self, work_id: int) -> None:
        self.work_id = work_id
        super().__init__(f"work item {work_id} not found (see: eipflow work list)")


class InvalidInput(EipflowError, ValueError):
    """A caller passed a value eipflow cannot accept; nothing was changed."""


class InvalidAddress(InvalidInput):
    """An IP address field is not a valid unicast IPv4/IPv6 address."""

    def __init__(self, field: str, value: object, reason: str = "not a valid IPv4 or IPv6 address") -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}: {shown(value)} is {reason}")


class InvalidIdentifier(InvalidInput):
    """An id or name is empty, too long, or has characters eipflow does not accept."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}: {shown(value)} is not accepted: {reason}")


class InvalidBackendSpec(InvalidInput):
    """A backend import path cannot be loaded."""

    def __init__(self, spec: str, reason: str) -> None:
        self.spec = spec
        self.reason = reason
        super().__init__(f"backend {spec!r}: {reason} (expected 'package.module:factory')")


class OperationIdReused(InvalidInput):
    """An operation id was reused for a different request."""

    def __init__(self, op_id: str, first: str, now: str) -> None:
        self.op_id = op_id
        self.first_request = first
        self.request = now
        super().__init__(
            f"operation id {op_id!r} was already used for a different request ({first}); "
            f"use a new operation id for {now}"
        )


class ConflictError(EipflowError):
    """The request conflicts with the current state of the database."""


class IllegalTransition(ConflictError):
    """The event is not allowed in the EIP's current state."""

    def __init__(
        self, *, eip_uuid: str | None, state: str, event: str, allowed: Sequence[str] = ()
    ) -> None:
        self.eip_uuid = eip_uuid
        self.state = state
        self.event = event
        self.allowed = tuple(allowed)
        who = f"EIP {eip_uuid}" if eip_uuid else "the EIP"
        allowed_text = ", ".join(self.allowed) if self.allowed else "nothing"
        super().__init__(f"cannot {event} {who}: it is {state}; allowed now: {allowed_text}")


class VersionConflict(ConflictError):
    """Somebody else changed the row between our read and our compare-and-swap, too often."""

    retryable = True

    def __init__(self, eip_uuid: str, expected_version: int, attempts: int = 1) -> None:
        self.eip_uuid = eip_uuid
        self.expected_version = expected_version
        self.attempts = attempts
        super().__init__(
            f"EIP {eip_uuid} changed concurrently (expected version {expected_version}, "
            f"{attempts} attempt(s)); reload and retry"
        )


class GuestIpInUse(ConflictError):
    """The guest IP already carries an EIP (enforced by a unique constraint)."""

    def __init__(self, guest_ip: str, holder: str | None = None) -> None:
        self.guest_ip = guest_ip
        self.holder = holder
        by = f" by EIP {holder}" if holder else ""
        super().__init__(f"guest IP {guest_ip} already has an EIP bound{by}; detach it first")


class VipInUse(ConflictError):
    """The VIP is already allocated to another EIP."""

    def __init__(self, vip: str) -> None:
        self.vip = vip
        super().__init__(f"VIP {vip} is already allocated to another EIP")


class AddressInUse(ConflictError):
    """One address cannot be both: a guest IP that is another EIP's VIP, or a VIP that is an EIP's guest IP."""

    def __init__(self, field: str, address: str, holder: str, holder_role: str) -> None:
        self.field = field
        self.address = address
        self.holder = holder
        self.holder_role = holder_role
        super().__init__(
            f"{field} {address} is the {holder_role} of EIP {holder}; an address cannot be both a VIP and a guest IP"
        )


class AttachSuperseded(ConflictError):
    """The attach's binding did not survive: a detach, delete or later attach overtook it while it ran.

    Attributes:
        eip_uuid: the EIP.
        state: its state now (``deleted`` once gone).
        binding: its ``(NIC, guest IP)`` now (``(None, None)`` when unbound).
        by_event: the overtaking request's event (``detach``, ``delete``, ``attach``), when known.
        by_op_id: the overtaking request's operation id, when it had one.
    """

    def __init__(self, eip_uuid: str, state: str, binding: tuple[str | None, str | None], *,
                 by_event: str | None = None, by_op_id: str | None = None) -> None:
        self.eip_uuid = eip_uuid
        self.state = state
        self.binding = binding
        self.by_event = by_event
        self.by_op_id = by_op_id
        now = f"bound to {binding[0]}/{binding[1]}" if binding[0] else "unbound"
        by = f" (a later {by_event}{f' {by_op_id}' if by_op_id else ''})" if by_event else ""
        super().__init__(f"attach of EIP {eip_uuid} was overtaken by a later request{by}: it is now {state}, {now}")


class StepPending(ConflictError):
    """The EIP's backend work is still in flight (leased elsewhere or waiting for a retry): call again later."""

    retryable = True

    def __init__(self, eip_uuid: str, state: str, work_id: int | None) -> None:
        self.eip_uuid = eip_uuid
        self.state = state
        self.work_id = work_id
        super().__init__(
            f"EIP {eip_uuid} is still {state} (work item {work_id}); retry finish later "
            f"(see: eipflow work list --eip {eip_uuid})"
        )


class BackendError(EipflowError):
    """The backend failed to apply or revoke.

    Backends raise this (or any exception, which the runner wraps in it). Set
    ``retryable=False`` for failures that retrying cannot fix.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        self.retryable = retryable
        super().__init__(message)


class BackendTimeout(BackendError):
    """The backend did not answer in time: the outcome is unknown (maybe applied)."""


class StaleGeneration(BackendError):
    """The host refused a call: it has already seen a newer generation of this EIP (a fencing token).

    Every backend call carries the EIP's *generation* (``EipSpec.generation``). A host remembers, per
    EIP, the highest generation it has seen, applied or revoked, and refuses what is older — so an actor
    acting on what it *used to* own (a worker paused past its lease, a late cleanup) cannot change the
    dataplane. Never retryable: the call was superseded, not failed.

    Attributes:
        eip_uuid: the EIP.
        host_uuid: the host that refused.
        requested: the generation the call carried.
        current: the highest generation the host has seen for the EIP.
        reason: ``older`` (a newer generation was seen), ``revoked`` (this generation was already
            revoked), ``changed`` (this generation was applied with other content) or ``newer_rule``
            (a revoke met a rule of a newer generation, which it must not remove).
    """

    REASONS = ("older", "revoked", "changed", "newer_rule")

    def __init__(self, eip_uuid: str, host_uuid: str, requested: int, current: int, reason: str) -> None:
        self.eip_uuid = eip_uuid
        self.host_uuid = host_uuid
        self.requested = requested
        self.current = current
        self.reason = reason
        why = {
            "older": "it has seen a newer one",
            "revoked": "that generation was already revoked",
            "changed": "that generation was already applied with other content",
            "newer_rule": "the rule it holds is newer than the revoke",
        }.get(reason, reason)
        super().__init__(
            f"host {host_uuid} refused generation {requested} of EIP {eip_uuid}: {why} "
            f"(host has {current}); the call was superseded",
            retryable=False,
        )


class AddressNotAllowed(BackendError):
    """The host will not program this address: outside its VIP ranges, its own address, or its gateway's.

    Raised by the agent's side before anything is changed; retrying cannot help.
    """

    def __init__(self, host_uuid: str, field: str, address: str, reason: str) -> None:
        self.host_uuid = host_uuid
        self.field = field
        self.address = address
        self.reason = reason
        super().__init__(f"host {host_uuid} refuses {field} {address}: {reason}", retryable=False)


class AttachFailed(EipflowError):
    """The attach's apply failed; the binding was rolled back (conditionally)."""

    def __init__(self, eip_uuid: str, error: str, state: str) -> None:
        self.eip_uuid = eip_uuid
        self.error = error
        self.state = state
        super().__init__(f"attach of EIP {eip_uuid} failed and was rolled back (now {state}): {error}")


class DatabaseError(EipflowError):
    """The database could not be reached or refused the request."""

    retryable = True
    #: a deadlock or serialization failure: the whole transaction may simply be run again
    transient: bool = False

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"database {url}: {reason}")

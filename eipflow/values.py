"""Immutable values eipflow hands to callers and backends."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the machine (python-statemachine) is imported only when facts are asked for
    from .machine import Facts

__all__ = ["Eip", "EipSpec", "TransitionRecord", "Vm", "WorkItem"]


@dataclass(frozen=True, slots=True)
class EipSpec:
    """What a backend realizes on a host: NAT ``vip`` <-> ``guest_ip`` of ``vm_nic_uuid``.

    ``generation`` is the fencing token: the EIP row's version at the transition that fixed this
    work's spec (a cleanup revoke carries the generation of the apply it undoes). It only grows for an
    EIP. A host refuses a call older than the newest generation it has seen for the EIP
    (:class:`~eipflow.StaleGeneration`); see :mod:`eipflow.backends.fencing`. ``0`` is older than
    anything eipflow sends (specs built by hand, rules written before generations existed).
    """

    eip_uuid: str
    vip: str
    vm_nic_uuid: str
    guest_ip: str
    host_uuid: str
    generation: int = 0

    def same_content(self, other: EipSpec) -> bool:
        """Whether both realize the same NAT on the same host (generations aside)."""
        return (self.eip_uuid, self.vip, self.vm_nic_uuid, self.guest_ip, self.host_uuid) == (
            other.eip_uuid, other.vip, other.vm_nic_uuid, other.guest_ip, other.host_uuid
        )


@dataclass(frozen=True, slots=True)
class Eip:
    """A snapshot of one EIP row."""

    uuid: str
    name: str | None
    vip: str
    state: str
    version: int
    desired: str
    vm_nic_uuid: str | None
    guest_ip: str | None
    vm_uuid: str | None
    host_uuid: str | None
    applied_host: str | None
    attach_confirmed: bool
    work_id: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def facts(self) -> Facts:
        from .machine import Facts

        return Facts(self.desired, self.host_uuid, self.applied_host, self.attach_confirmed)

    @property
    def bound(self) -> bool:
        return self.vm_nic_uuid is not None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        data["updated_at"] = self.updated_at.isoformat()
        return data


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    """One row of an EIP's history: the transition that produced ``version``."""

    id: int
    eip_uuid: str
    event: str
    from_state: str
    to_state: str
    version: int
    actor: str | None
    op_id: str | None
    at: datetime
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = self.at.isoformat()
        return data


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One durable backend action (the transactional outbox)."""

    id: int
    eip_uuid: str
    action: str  # "apply" | "revoke"
    spec: EipSpec | None  # None for an apply still in ``binding``: the spec is fixed when it starts
    status: str  # "pending" | "running" | "done" | "parked" | "cancelled"
    attempts: int
    due_at: datetime
    lease_owner: str | None
    lease_expires_at: datetime | None
    last_error: str | None
    cleanup: bool  # True: revokes an orphaned apply, drives no state
    created_at: datetime
    updated_at: datetime
    trace_context: str | None = None  # the creating caller's trace (W3C, JSON), when tracing was on

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("due_at", "lease_expires_at", "created_at", "updated_at"):
            value = data[key]
            data[key] = value.isoformat() if value is not None else None
        return data


@dataclass(frozen=True, slots=True)
class Vm:
    """What eipflow was last told about a VM."""

    uuid: str
    host_uuid: str | None  # None when stopped
    running: bool
    updated_at: datetime
    version: int = 0  # compare-and-swap token of the fact (0: never recorded)

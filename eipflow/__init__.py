"""eipflow: Elastic IP attach/detach/release as persisted, version-checked state machines.

The public API is re-exported here; everything else is private to its module. Names are imported
on first use (PEP 562), so ``import eipflow.cli`` or ``from eipflow.values import Eip`` does not load
the asyncio face, the worker or the machine library before they are needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .aio import AsyncEipflow
    from .api import DEFAULT_LEASE_SECONDS, Eipflow, connect
    from .backends import (
        MAX_BATCH,
        Backend,
        BatchBackend,
        Change,
        ChangeResult,
        Faults,
        Gate,
        HostRecord,
        InMemoryDataplane,
        ListsRules,
        SimulatedDataplane,
        load_backend,
        run_changes,
    )
    from .clock import Clock, ManualClock, SystemClock
    from .errors import (
        AddressInUse,
        AddressNotAllowed,
        AttachFailed,
        AttachSuperseded,
        BackendError,
        BackendTimeout,
        ConflictError,
        DatabaseError,
        EipflowError,
        EipNotFound,
        GuestIpInUse,
        IllegalTransition,
        InvalidAddress,
        InvalidBackendSpec,
        InvalidIdentifier,
        InvalidInput,
        NotFound,
        OperationIdReused,
        StaleGeneration,
        VersionConflict,
        VipInUse,
        WorkItemNotFound,
    )
    from .machine import EipMachine, Facts
    from .outcome import AttachOutcome, attach_outcome
    from .reconcile import Reconciler, ReconcileReport, Repair
    from .runner import RetryPolicy
    from .steps import StepPending
    from .values import Eip, EipSpec, TransitionRecord, Vm, WorkItem
    from .worker import Worker

#: public name -> the module that defines it
_MODULES: dict[str, str] = {
    "AsyncEipflow": ".aio",
    **dict.fromkeys(("DEFAULT_LEASE_SECONDS", "Eipflow", "connect"), ".api"),
    **dict.fromkeys(("MAX_BATCH", "Backend", "BatchBackend", "Change", "ChangeResult", "Faults", "Gate", "HostRecord",
                     "InMemoryDataplane", "ListsRules", "SimulatedDataplane", "load_backend", "run_changes"),
                    ".backends"),
    **dict.fromkeys(("Clock", "ManualClock", "SystemClock"), ".clock"),
    **dict.fromkeys((
        "AddressInUse", "AddressNotAllowed", "AttachFailed", "AttachSuperseded", "BackendError", "BackendTimeout",
        "ConflictError", "DatabaseError", "EipflowError", "EipNotFound", "GuestIpInUse", "IllegalTransition",
        "InvalidAddress", "InvalidBackendSpec", "InvalidIdentifier", "InvalidInput", "NotFound", "OperationIdReused",
        "StaleGeneration", "VersionConflict", "VipInUse", "WorkItemNotFound",
    ), ".errors"),
    **dict.fromkeys(("EipMachine", "Facts"), ".machine"),
    **dict.fromkeys(("AttachOutcome", "attach_outcome"), ".outcome"),
    **dict.fromkeys(("Reconciler", "ReconcileReport", "Repair"), ".reconcile"),
    "RetryPolicy": ".runner",
    "StepPending": ".steps",
    **dict.fromkeys(("Eip", "EipSpec", "TransitionRecord", "Vm", "WorkItem"), ".values"),
    "Worker": ".worker",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'eipflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULES))


__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "MAX_BATCH",
    "AddressInUse",
    "AddressNotAllowed",
    "AsyncEipflow",
    "AttachFailed",
    "AttachOutcome",
    "AttachSuperseded",
    "Backend",
    "BackendError",
    "BackendTimeout",
    "BatchBackend",
    "Change",
    "ChangeResult",
    "Clock",
    "ConflictError",
    "DatabaseError",
    "Eip",
    "EipMachine",
    "EipNotFound",
    "EipSpec",
    "Eipflow",
    "EipflowError",
    "Facts",
    "Faults",
    "Gate",
    "GuestIpInUse",
    "HostRecord",
    "IllegalTransition",
    "InMemoryDataplane",
    "InvalidAddress",
    "InvalidBackendSpec",
    "InvalidIdentifier",
    "InvalidInput",
    "ListsRules",
    "ManualClock",
    "NotFound",
    "OperationIdReused",
    "ReconcileReport",
    "Reconciler",
    "Repair",
    "RetryPolicy",
    "SimulatedDataplane",
    "StaleGeneration",
    "StepPending",
    "SystemClock",
    "TransitionRecord",
    "VersionConflict",
    "VipInUse",
    "Vm",
    "WorkItem",
    "WorkItemNotFound",
    "Worker",
    "__version__",
    "attach_outcome",
    "connect",
    "load_backend",
    "run_changes",
]

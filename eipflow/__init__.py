"""eipflow: Elastic IP attach/detach/release as persisted, version-checked state machines.

The public API is re-exported here; everything else is private to its module.
"""

from ._version import __version__
from .aio import AsyncEipflow
from .api import DEFAULT_LEASE_SECONDS, Eipflow, connect
from .backends import (
    Backend,
    Faults,
    Gate,
    HostRecord,
    InMemoryDataplane,
    ListsRules,
    SimulatedDataplane,
    load_backend,
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
from .reconcile import Reconciler, ReconcileReport, Repair
from .runner import RetryPolicy
from .steps import StepPending
from .values import Eip, EipSpec, TransitionRecord, Vm, WorkItem
from .worker import Worker

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "AddressInUse",
    "AddressNotAllowed",
    "AsyncEipflow",
    "AttachFailed",
    "AttachSuperseded",
    "Backend",
    "BackendError",
    "BackendTimeout",
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
    "connect",
    "load_backend",
]

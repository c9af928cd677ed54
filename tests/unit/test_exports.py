"""The public API is exactly what eipflow/__init__.py exports (a change here is an API change: review it)."""

from __future__ import annotations

import eipflow

EXPECTED = {
    "AddressInUse", "AddressNotAllowed", "AsyncEipflow", "AttachFailed", "AttachSuperseded", "Backend",
    "BackendError", "BackendTimeout", "Clock", "ConflictError", "DEFAULT_LEASE_SECONDS", "DatabaseError", "Eip",
    "EipMachine", "EipNotFound", "EipSpec", "Eipflow", "EipflowError", "Facts", "Faults", "Gate", "GuestIpInUse",
    "HostRecord", "IllegalTransition", "InMemoryDataplane",
    "InvalidAddress", "InvalidBackendSpec", "InvalidIdentifier", "InvalidInput", "ListsRules", "ManualClock",
    "NotFound", "OperationIdReused", "ReconcileReport", "Reconciler", "Repair", "RetryPolicy", "SimulatedDataplane",
    "StaleGeneration", "StepPending", "SystemClock", "TransitionRecord", "VersionConflict", "VipInUse", "Vm",
    "WorkItem", "WorkItemNotFound", "Worker", "__version__", "connect", "load_backend",
    "MAX_BATCH", "BatchBackend", "Change", "ChangeResult", "run_changes", "AttachOutcome", "attach_outcome",
}


def test_all_is_pinned() -> None:
    assert set(eipflow.__all__) == EXPECTED
    assert len(eipflow.__all__) == len(set(eipflow.__all__))


def test_every_export_resolves_and_public_callables_are_documented() -> None:
    for name in eipflow.__all__:
        obj = getattr(eipflow, name)
        if callable(obj) and not name.startswith("_"):
            assert (obj.__doc__ or "").strip(), f"{name} has no docstring"

"""Backends: the port (:class:`Backend`) and its adapters."""

from .base import Backend, ListsRules, load_backend
from .batch import MAX_BATCH, BatchBackend, Change, ChangeResult, run_changes
from .faults import Faults, Gate
from .fencing import HostRecord
from .simulated import BackendCall, InMemoryDataplane, SimulatedDataplane

__all__ = [
    "MAX_BATCH",
    "Backend",
    "BackendCall",
    "BatchBackend",
    "Change",
    "ChangeResult",
    "Faults",
    "Gate",
    "HostRecord",
    "InMemoryDataplane",
    "ListsRules",
    "SimulatedDataplane",
    "load_backend",
    "run_changes",
]

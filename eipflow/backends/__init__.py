"""Backends: the port (:class:`Backend`) and its adapters."""

from .base import Backend, ListsRules, load_backend
from .faults import Faults, Gate
from .fencing import HostRecord
from .simulated import BackendCall, InMemoryDataplane, SimulatedDataplane

__all__ = [
    "Backend",
    "BackendCall",
    "Faults",
    "Gate",
    "HostRecord",
    "InMemoryDataplane",
    "ListsRules",
    "SimulatedDataplane",
    "load_backend",
]

"""Persistence: schema, engine settings, and the version-checked store."""

from .database import DEFAULT_URL, create_db_engine, ensure_schema, redacted, resolve_url
from .store import LeaseClock, LeaseLost, NewWork, Operations, PlannedTransition, Store

__all__ = [
    "DEFAULT_URL",
    "LeaseClock",
    "LeaseLost",
    "NewWork",
    "Operations",
    "PlannedTransition",
    "Store",
    "create_db_engine",
    "ensure_schema",
    "redacted",
    "resolve_url",
]

"""Persistence: schema, engine settings, and the version-checked store."""

from .database import DEFAULT_URL, create_db_engine, ensure_schema, redacted, resolve_url
from .store import (
    ChainLease,
    LeaseClock,
    LeasedWork,
    LeaseLost,
    NewWork,
    Operations,
    PlannedTransition,
    Store,
    WorkUpdate,
)

__all__ = [
    "DEFAULT_URL",
    "ChainLease",
    "LeaseClock",
    "LeasedWork",
    "LeaseLost",
    "NewWork",
    "Operations",
    "PlannedTransition",
    "Store",
    "WorkUpdate",
    "create_db_engine",
    "ensure_schema",
    "redacted",
    "resolve_url",
]

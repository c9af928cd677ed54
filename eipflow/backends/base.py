"""The backend port: what realizes an EIP on a host, and how one is chosen by import path."""

from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable

from ..errors import InvalidBackendSpec
from ..values import EipSpec

__all__ = ["Backend", "EipSpec", "ListsRules", "load_backend"]


@runtime_checkable
class Backend(Protocol):
    """Realizes EIPs on hosts. Calls for one EIP never overlap; calls for different EIPs may.

    Both methods are idempotent. Raise :class:`eipflow.BackendError` (``retryable=False`` when a
    retry cannot help) or :class:`eipflow.BackendTimeout` when the outcome is unknown; any other
    exception is treated as a retryable failure with an unknown outcome.
    """

    def apply(self, spec: EipSpec) -> None:
        """Realize ``spec`` on ``spec.host_uuid``."""
        ...

    def revoke(self, spec: EipSpec) -> None:
        """Remove the rule for ``spec`` from ``spec.host_uuid``; an absent rule is not an error."""
        ...


@runtime_checkable
class ListsRules(Protocol):
    """Optional: backends that can say what is really realized (drift repair, ``dataplane list``)."""

    def rules(self, host_uuid: str | None = None) -> list[EipSpec]:
        ...


def load_backend(spec: str) -> Backend:
    """Import ``package.module:factory`` and call the factory with no arguments."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidBackendSpec(spec, "missing ':factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidBackendSpec(spec, f"cannot import {module_name} ({exc})") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise InvalidBackendSpec(spec, f"{module_name} has no callable {attr}")
    backend = factory()
    if not callable(getattr(backend, "apply", None)) or not callable(getattr(backend, "revoke", None)):
        raise InvalidBackendSpec(spec, "the factory's object has no apply()/revoke() methods")
    return backend  # type: ignore[no-any-return]

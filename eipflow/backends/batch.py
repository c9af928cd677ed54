"""The batch port: one host, many changes, one result per change.

A VM stop or a host evacuation changes hundreds of rules on one host at once; one backend call per
rule costs one HTTP request and one ``nft`` process each. Backends that can do better implement
:class:`BatchBackend` (``apply_changes``); every other backend is driven one change at a time through
the same :func:`run_changes` adapter, so the runner has one way to call any backend.

Each change is judged on its own by the host's generation rule (:mod:`eipflow.backends.fencing`):
a batch is not a fencing unit. A change's result says what became of it:

=====================  ===========================================================================
``done``               realized (or an idempotent repeat)
``refused``            the host has seen a newer generation (:class:`~eipflow.StaleGeneration`)
``failed``             failed, nothing changed, retrying may help (``BackendError(retryable=True)``)
``failed_permanent``   failed, retrying cannot help (``BackendError(retryable=False)``)
``unknown``            no answer: it may or may not have been realized (:class:`~eipflow.BackendTimeout`)
=====================  ===========================================================================

A backend whose whole batch call raises gives every change of the batch that error's result (a
timeout: every change ``unknown``), which is always safe: each change is idempotent and fenced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..errors import BackendError, BackendTimeout, StaleGeneration
from ..values import EipSpec

__all__ = [
    "MAX_BATCH",
    "STATUSES",
    "BatchBackend",
    "Change",
    "ChangeResult",
    "result_of",
    "run_changes",
]

#: The most changes eipflow puts in one batch call (the HTTP agent refuses larger bodies).
MAX_BATCH = 500

STATUSES = ("done", "refused", "failed", "failed_permanent", "unknown")


@dataclass(frozen=True, slots=True)
class Change:
    """One rule change of a batch: ``apply`` or ``revoke`` ``spec`` (its host is the batch's)."""

    action: str  # "apply" | "revoke"
    spec: EipSpec

    def __post_init__(self) -> None:
        if self.action not in ("apply", "revoke"):
            raise ValueError(f"action must be 'apply' or 'revoke', not {self.action!r}")


@dataclass(frozen=True, slots=True)
class ChangeResult:
    """What became of one change: a status of :data:`STATUSES` and, unless ``done``, its error."""

    status: str
    error: BackendError | None = None

    @property
    def ok(self) -> bool:
        return self.status == "done"


DONE = ChangeResult("done")


def result_of(error: BaseException | None) -> ChangeResult:
    """The result a change gets for ``error`` (``None``: done); any non-backend error is an unknown outcome."""
    if error is None:
        return DONE
    if isinstance(error, StaleGeneration):
        return ChangeResult("refused", error)
    if isinstance(error, BackendTimeout):
        return ChangeResult("unknown", error)
    if isinstance(error, BackendError):
        return ChangeResult("failed" if error.retryable else "failed_permanent", error)
    return ChangeResult("unknown", BackendTimeout(f"{type(error).__name__}: {error}"))


@runtime_checkable
class BatchBackend(Protocol):
    """Optional: a backend that realizes many changes on one host in one call."""

    def apply_changes(self, host_uuid: str, changes: Sequence[Change]) -> list[ChangeResult]:
        """Realize ``changes`` (all for ``host_uuid``, at most one per EIP) and say what became of each.

        Returns one :class:`ChangeResult` per change, in order. May raise instead (a lost connection):
        every change then gets that error's result.
        """
        ...


def run_changes(backend: object, host_uuid: str, changes: Sequence[Change]) -> list[ChangeResult]:
    """Run a host's changes on any backend: one batch call if it has one, else one call per change.

    Never raises for a backend's failure: each change's result says what happened to it.
    """
    if not changes:
        return []
    for change in changes:
        if change.spec.host_uuid != host_uuid:
            raise ValueError(f"change for {change.spec.eip_uuid} is for host {change.spec.host_uuid}, not {host_uuid}")
    batch = getattr(backend, "apply_changes", None)
    if callable(batch):
        try:
            results = list(batch(host_uuid, list(changes)))
        except Exception as exc:  # noqa: BLE001 - the whole call failed: every change shares its outcome
            failed = result_of(exc)
            return [failed] * len(changes)
        if len(results) != len(changes) or not all(isinstance(r, ChangeResult) for r in results):
            # A broken answer tells nothing of what was done: treat every change as an unknown outcome.
            unknown = ChangeResult("unknown", BackendTimeout(
                f"{type(backend).__name__}.apply_changes answered {len(results)} results for {len(changes)} changes"))
            return [unknown] * len(changes)
        return results
    out = []
    for change in changes:
        call = backend.apply if change.action == "apply" else backend.revoke  # type: ignore[attr-defined]
        try:
            call(change.spec)
        except Exception as exc:  # noqa: BLE001 - the result carries it
            out.append(result_of(exc))
        else:
            out.append(DONE)
    return out

"""The EIP lifecycle: one flat python-statemachine class, the single source of truth.

This module is pure: no I/O, no clock, no logging. The class declares states,
events, transitions and guards; everything else (the store's compare-and-swap,
the runner, the diagrams, the compiled lookup table in :mod:`eipflow.table`)
reads it from here.

Guards decide from :class:`Facts`, an immutable view of one EIP row *after*
the event's payload was applied (so ``vm_started`` on host H2 sees H2). Intents
that arrive while backend work is in flight (VM stop, migrate, detach, delete)
are self-transitions that only record the fact on the row; the runner's
completion events (``apply_ok``, ``apply_failed``, ``revoke_ok``…) then pick
the next state from the recorded intent — fenced completion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from statemachine import State, StateMachine

__all__ = [
    "ACTIONS",
    "COMPLETION_EVENTS",
    "DESIRED_VALUES",
    "EipMachine",
    "Facts",
    "IN_FLIGHT",
    "INTENT_EVENTS",
    "STABLE",
    "STATE_DESCRIPTIONS",
    "work_for",
]

DESIRED_VALUES: Final = ("attached", "detached", "deleted")


@dataclass(frozen=True, slots=True)
class Facts:
    """What the guards may look at: the row's intent and placement facts.

    Attributes:
        desired: what the user last asked for: ``attached``, ``detached`` or ``deleted``.
        host_uuid: the host the bound VM runs on as eipflow was last told, or ``None``
            when the VM is stopped (or nothing is bound).
        applied_host: the host that may hold a dataplane rule for this EIP (recorded
            *before* an apply starts, cleared only after a revoke is confirmed).
        attach_confirmed: the attach that created the binding has succeeded once
            (reached ``attached`` or ``released``). Until then a failed apply is an
            attach failure and rolls the binding back; afterwards the binding is kept
            and the apply retried.
    """

    desired: str = "detached"
    host_uuid: str | None = None
    applied_host: str | None = None
    attach_confirmed: bool = False


class EipMachine(StateMachine):
    """Lifecycle of one Elastic IP.

    Stable states: ``detached``, ``attached``, ``released``. In-flight states
    (each owns exactly one durable work item): ``binding``, ``applying``,
    ``releasing``, ``detaching``, ``rolling_back``. ``deleted`` is final: the
    row is removed, its history kept.
    """

    detached = State("Detached", initial=True, value="detached")
    binding = State("Binding", value="binding")
    applying = State("Applying", value="applying")
    attached = State("Attached", value="attached")
    rolling_back = State("Rolling back", value="rolling_back")
    releasing = State("Releasing", value="releasing")
    released = State("Released", value="released")
    detaching = State("Detaching", value="detaching")
    deleted = State("Deleted", value="deleted", final=True)

    # -- intents: what callers ask for ---------------------------------------------------
    attach = detached.to(binding)
    detach = (
        attached.to(detaching)
        | released.to(detached)
        | binding.to.itself()
        | applying.to.itself()
        | releasing.to.itself()
        | detaching.to.itself()
        | rolling_back.to.itself()
    )
    delete = (
        detached.to(deleted)
        | released.to(deleted)
        | attached.to(detaching)
        | binding.to.itself()
        | applying.to.itself()
        | releasing.to.itself()
        | detaching.to.itself()
        | rolling_back.to.itself()
    )
    vm_stopped = (
        attached.to(releasing)
        | released.to.itself()
        | binding.to.itself()
        | applying.to.itself()
        | releasing.to.itself()
        | detaching.to.itself()
        | rolling_back.to.itself()
    )
    vm_started = (
        released.to(applying)
        | attached.to.itself(cond="on_applied_host")
        | attached.to(releasing)
        | binding.to.itself()
        | applying.to.itself()
        | releasing.to.itself()
        | detaching.to.itself()
        | rolling_back.to.itself()
    )
    vm_migrated = (
        attached.to.itself(cond="on_applied_host")
        | attached.to(releasing)
        | released.to.itself()
        | binding.to.itself()
        | applying.to.itself()
        | releasing.to.itself()
        | detaching.to.itself()
        | rolling_back.to.itself()
    )

    # -- repairs: what the reconciler observed on the dataplane ---------------------------
    # An attached EIP's rule is missing (host reboot, manual flush): re-apply it through the
    # normal apply path, so the repair has history, a durable work item and retries.
    drift_detected = attached.to(applying, cond="vm_running") | attached.to(releasing)
    # A rule the row does not hold (stray) is being revoked by a cleanup work item: the row stays
    # where it is; the self-transition only puts the repair and its reason in the EIP's history.
    stray_detected = detached.to.itself() | attached.to.itself() | released.to.itself()

    # -- completions: what the runner reports after claiming or finishing backend work ---
    proceed = (
        binding.to(applying, cond=["wants_attached", "vm_running"])
        | binding.to(released, cond="wants_attached")
        | binding.to(deleted, cond="wants_deleted")
        | binding.to(detached)
    )
    apply_ok = (
        applying.to(attached, cond=["wants_attached", "on_applied_host"])
        | applying.to(releasing, cond="wants_attached")
        | applying.to(detaching)
    )
    apply_failed = (
        applying.to(rolling_back, unless="attach_confirmed")
        | applying.to(detaching, unless="wants_attached")
        | applying.to.itself(cond="on_applied_host")
        | applying.to(releasing)
    )
    revoke_ok = (
        releasing.to(applying, cond=["wants_attached", "vm_running"])
        | releasing.to(released, cond="wants_attached")
        | releasing.to(deleted, cond="wants_deleted")
        | releasing.to(detached)
        | detaching.to(deleted, cond="wants_deleted")
        | detaching.to(detached)
        | rolling_back.to(deleted, cond="wants_deleted")
        | rolling_back.to(detached)
    )
    revoke_failed = releasing.to.itself() | detaching.to.itself() | rolling_back.to.itself()

    # -- guards: pure functions of the Facts passed as ``facts=`` ------------------------
    @staticmethod
    def wants_attached(facts: Facts) -> bool:
        return facts.desired == "attached"

    @staticmethod
    def wants_deleted(facts: Facts) -> bool:
        return facts.desired == "deleted"

    @staticmethod
    def vm_running(facts: Facts) -> bool:
        return facts.host_uuid is not None

    @staticmethod
    def on_applied_host(facts: Facts) -> bool:
        return facts.host_uuid is not None and facts.host_uuid == facts.applied_host

    @staticmethod
    def attach_confirmed(facts: Facts) -> bool:
        return facts.attach_confirmed


STATE_DESCRIPTIONS: Final[dict[str, str]] = {
    "detached": "no binding; nothing on any host",
    "binding": "binding (NIC, guest IP, VM, host) persisted; the backend has not been called",
    "applying": "backend apply in flight on applied_host",
    "attached": "realized on applied_host",
    "rolling_back": "an attach's apply failed: revoking any partial apply, then clearing the "
    "binding only if the same NIC and guest IP are still bound",
    "releasing": "revoke in flight because the VM stopped or moved away (binding kept)",
    "released": "still bound to the NIC, nothing on any host (the VM is stopped)",
    "detaching": "revoke in flight before the binding is cleared",
    "deleted": "final: the row is gone, its history kept",
}

#: Backend work each in-flight state owns. ``binding`` owns the attach's apply
#: item: claiming it is what moves the row on (``proceed``).
ACTIONS: Final[dict[str, str]] = {
    "binding": "apply",
    "applying": "apply",
    "releasing": "revoke",
    "detaching": "revoke",
    "rolling_back": "revoke",
}
IN_FLIGHT: Final = frozenset(ACTIONS)
STABLE: Final = frozenset({"detached", "attached", "released"})

INTENT_EVENTS: Final = ("attach", "detach", "delete", "vm_stopped", "vm_started", "vm_migrated", "drift_detected",
                          "stray_detected")
COMPLETION_EVENTS: Final = ("proceed", "apply_ok", "apply_failed", "revoke_ok", "revoke_failed")


def work_for(state: str) -> str | None:
    """The backend action a state owns (``apply``/``revoke``), or ``None`` for stable states."""
    return ACTIONS.get(state)

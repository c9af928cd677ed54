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

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from statemachine import State, StateMachine
from statemachine.transition_list import TransitionList

__all__ = [
    "ACTIONS",
    "BOUND",
    "COMPLETION_EVENTS",
    "CONTINUES",
    "EFFECTS",
    "DESIRED_VALUES",
    "EipMachine",
    "Facts",
    "IN_FLIGHT",
    "INTENT_EVENTS",
    "STABLE",
    "STATE_DESCRIPTIONS",
    "StateEffects",
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


def _records_intent(*states: State) -> TransitionList:
    """Self-transitions that only record an intent on the row while backend work is in flight."""
    loops: TransitionList = states[0].to.itself()
    for state in states[1:]:
        loops = loops | state.to.itself()
    return loops


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
        | _records_intent(binding, applying, releasing, detaching, rolling_back)
    )
    delete = (
        detached.to(deleted)
        | released.to(deleted)
        | attached.to(detaching)
        | _records_intent(binding, applying, releasing, detaching, rolling_back)
    )
    vm_stopped = (
        attached.to(releasing)
        | released.to.itself()
        | _records_intent(binding, applying, releasing, detaching, rolling_back)
    )
    vm_started = (
        released.to(applying)
        | attached.to.itself(cond="on_applied_host")
        | attached.to(releasing)
        | _records_intent(binding, applying, releasing, detaching, rolling_back)
    )
    vm_migrated = (
        attached.to.itself(cond="on_applied_host")
        | attached.to(releasing)
        | released.to.itself()
        | _records_intent(binding, applying, releasing, detaching, rolling_back)
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

@dataclass(frozen=True, slots=True)
class StateEffects:
    """What *entering* a state does to the row and its work — declared once, here, for every state.

    The runner plans each transition from it (:meth:`eipflow.runner.Runner._plan`), the diagrams derive
    their "work enqueued" column from it, and the invariants derive which states hold a binding.

    Attributes:
        work: the backend action of the one work item an in-flight state owns (``apply``/``revoke``);
            ``None`` for stable states (entering one finishes the item and clears ``work_id``).
        work_host: where that work runs: ``"placed"`` (the host the VM runs on), ``"applied"`` (the host
            that holds the rule, ``applied_host``) or ``None`` (not fixed yet: ``binding`` fixes it when it
            proceeds).
        bound: the row holds a binding (NIC, guest IP) in this state.
        records_applied_host: entering records the VM's host as ``applied_host`` *before* the apply runs.
        sets: row fields entering the state sets (``None`` clears them).
    """

    work: str | None = None
    work_host: str | None = None
    bound: bool = False
    records_applied_host: bool = False
    sets: Mapping[str, Any] = field(default_factory=dict)


_UNBIND: Final = MappingProxyType({
    "vm_nic_uuid": None, "guest_ip": None, "vm_uuid": None, "host_uuid": None, "applied_host": None,
    "desired": "detached", "attach_confirmed": False,
})

#: The effects of entering each state. One entry per state (a test checks the machine has no other).
EFFECTS: Final[Mapping[str, StateEffects]] = MappingProxyType({
    "detached": StateEffects(sets=_UNBIND),
    "binding": StateEffects(work="apply", bound=True),
    "applying": StateEffects(work="apply", work_host="placed", bound=True, records_applied_host=True),
    "attached": StateEffects(bound=True, sets=MappingProxyType({"attach_confirmed": True, "last_error": None})),
    "rolling_back": StateEffects(work="revoke", work_host="applied", bound=True),
    "releasing": StateEffects(work="revoke", work_host="applied", bound=True),
    "released": StateEffects(bound=True, sets=MappingProxyType(
        {"applied_host": None, "attach_confirmed": True, "last_error": None})),
    "detaching": StateEffects(work="revoke", work_host="applied", bound=True),
    "deleted": StateEffects(),
})

#: ``(source, target)`` pairs whose work item goes on instead of a new one being enqueued: the attach's
#: apply item, created in ``binding`` without a host, gets its host (and generation) when it proceeds.
CONTINUES: Final = frozenset({("binding", "applying")})

#: Backend work each in-flight state owns (derived from :data:`EFFECTS`).
ACTIONS: Final[Mapping[str, str]] = MappingProxyType({s: e.work for s, e in EFFECTS.items() if e.work})
IN_FLIGHT: Final = frozenset(ACTIONS)
STABLE: Final = frozenset(s for s in EFFECTS if s not in ACTIONS and s != "deleted")
#: States in which the row holds a binding (derived from :data:`EFFECTS`).
BOUND: Final = frozenset(s for s, e in EFFECTS.items() if e.bound)

COMPLETION_EVENTS: Final = ("proceed", "apply_ok", "apply_failed", "revoke_ok", "revoke_failed")
#: Every other event is an intent: what callers (and the reconciler) ask for.
INTENT_EVENTS: Final = tuple(
    e.id for e in EipMachine.events if e.id not in COMPLETION_EVENTS  # type: ignore[attr-defined]  # class-level list
)


def work_for(state: str) -> str | None:
    """The backend action a state owns (``apply``/``revoke``), or ``None`` for stable states."""
    return ACTIONS.get(state)

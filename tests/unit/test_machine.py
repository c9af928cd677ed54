"""The machine class is the single source of truth; the compiled table must agree with it exactly."""

from __future__ import annotations

import itertools

import pytest
from statemachine.exceptions import TransitionNotAllowed

from eipflow import EipMachine, Facts, IllegalTransition
from eipflow.machine import ACTIONS, COMPLETION_EVENTS, IN_FLIGHT, INTENT_EVENTS, STABLE, STATE_DESCRIPTIONS
from eipflow.table import allowed_events, edges, resolve

STATES = [s.value for s in EipMachine.states]
EVENTS = sorted({e.event for e in edges()})
HOSTS = [None, "h1", "h2"]
ALL_FACTS = [
    Facts(desired, host, applied, confirmed)
    for desired, host, applied, confirmed in itertools.product(
        ("attached", "detached", "deleted"), HOSTS, HOSTS, (False, True)
    )
]


class _Row:
    def __init__(self, state: str) -> None:
        self.state = state


def _library(state: str, event: str, facts: Facts) -> str | None:
    row = _Row(state)
    machine = EipMachine(model=row)
    try:
        machine.send(event, facts=facts)
    except TransitionNotAllowed:
        return None
    return row.state


def _table(state: str, event: str, facts: Facts) -> str | None:
    try:
        return resolve(state, event, facts)
    except IllegalTransition:
        return None


@pytest.mark.parametrize("state", STATES)
def test_compiled_table_agrees_with_python_statemachine(state: str) -> None:
    """For every state, event and combination of facts, the table and the library pick the same target."""
    mismatches = [
        (event, facts, _library(state, event, facts), _table(state, event, facts))
        for event in [*EVENTS, "no_such_event"]
        for facts in ALL_FACTS
        if _library(state, event, facts) != _table(state, event, facts)
    ]
    assert mismatches == []


def test_states_and_events_are_the_documented_ones() -> None:
    assert set(STATES) == {
        "detached", "binding", "applying", "attached", "rolling_back", "releasing", "released", "detaching", "deleted",
    }
    assert set(EVENTS) == set(INTENT_EVENTS) | set(COMPLETION_EVENTS)
    assert IN_FLIGHT | STABLE | {"deleted"} == set(STATES)
    assert set(STATE_DESCRIPTIONS) == set(STATES)
    assert set(ACTIONS) == IN_FLIGHT


def test_initial_and_final() -> None:
    assert EipMachine.initial_state.value == "detached"  # type: ignore[attr-defined]
    assert [s.value for s in EipMachine.final_states] == ["deleted"]
    assert allowed_events("deleted") == []


ATTACHED_H1 = Facts("attached", "h1", "h1", True)


@pytest.mark.parametrize(
    ("state", "event", "facts", "target"),
    [
        # the attach path
        ("detached", "attach", Facts("attached", "h1", None, False), "binding"),
        ("binding", "proceed", Facts("attached", "h1", None, False), "applying"),
        ("applying", "apply_ok", Facts("attached", "h1", "h1", False), "attached"),
        # an attach to a stopped VM persists the binding and lands in released without a backend call
        ("binding", "proceed", Facts("attached", None, None, False), "released"),
        # detach or delete before the apply started: nothing to revoke
        ("binding", "proceed", Facts("detached", "h1", None, False), "detached"),
        ("binding", "proceed", Facts("deleted", "h1", None, False), "deleted"),
        # intents during an in-flight apply are recorded (self-transition) and acted on at completion
        ("applying", "vm_stopped", Facts("attached", None, "h1", False), "applying"),
        ("applying", "detach", Facts("detached", "h1", "h1", False), "applying"),
        ("applying", "vm_migrated", Facts("attached", "h2", "h1", False), "applying"),
        # fenced completion
        ("applying", "apply_ok", Facts("attached", None, "h1", False), "releasing"),  # VM stopped meanwhile
        ("applying", "apply_ok", Facts("attached", "h2", "h1", False), "releasing"),  # VM moved meanwhile
        ("applying", "apply_ok", Facts("detached", "h1", "h1", False), "detaching"),  # detached meanwhile
        ("applying", "apply_ok", Facts("deleted", "h1", "h1", False), "detaching"),
        # a failed attach rolls back; a failed re-apply keeps the binding and retries
        ("applying", "apply_failed", Facts("attached", "h1", "h1", False), "rolling_back"),
        ("applying", "apply_failed", Facts("detached", "h1", "h1", False), "rolling_back"),
        ("applying", "apply_failed", ATTACHED_H1, "applying"),
        ("applying", "apply_failed", Facts("attached", None, "h1", True), "releasing"),
        ("applying", "apply_failed", Facts("detached", "h1", "h1", True), "detaching"),
        ("rolling_back", "revoke_ok", Facts("attached", "h1", "h1", False), "detached"),
        ("rolling_back", "revoke_ok", Facts("deleted", "h1", "h1", False), "deleted"),
        # release paths
        ("attached", "vm_stopped", Facts("attached", None, "h1", True), "releasing"),
        ("releasing", "revoke_ok", Facts("attached", None, "h1", True), "released"),
        ("released", "vm_started", Facts("attached", "h2", None, True), "applying"),
        ("attached", "vm_migrated", Facts("attached", "h2", "h1", True), "releasing"),
        ("attached", "vm_migrated", ATTACHED_H1, "attached"),
        ("releasing", "revoke_ok", Facts("attached", "h2", "h1", True), "applying"),
        ("releasing", "revoke_ok", Facts("detached", "h2", "h1", True), "detached"),
        ("releasing", "revoke_failed", ATTACHED_H1, "releasing"),
        # detach and delete
        ("attached", "detach", Facts("detached", "h1", "h1", True), "detaching"),
        ("released", "detach", Facts("detached", None, None, True), "detached"),
        ("detaching", "revoke_ok", Facts("detached", "h1", "h1", True), "detached"),
        ("detaching", "revoke_ok", Facts("deleted", "h1", "h1", True), "deleted"),
        ("detached", "delete", Facts("deleted"), "deleted"),
        ("attached", "delete", Facts("deleted", "h1", "h1", True), "detaching"),
        ("released", "delete", Facts("deleted", None, None, True), "deleted"),
    ],
)
def test_transition(state: str, event: str, facts: Facts, target: str) -> None:
    assert resolve(state, event, facts) == target
    assert _library(state, event, facts) == target


@pytest.mark.parametrize(
    ("state", "event"),
    [
        ("detached", "detach"),
        ("binding", "attach"),
        ("applying", "attach"),
        ("attached", "attach"),
        ("released", "attach"),
        ("detaching", "attach"),
        ("detached", "vm_stopped"),
        ("detached", "apply_ok"),
        ("attached", "apply_ok"),
        ("attached", "revoke_ok"),
        ("deleted", "detach"),
        ("detached", "bogus"),
    ],
)
def test_illegal_transitions_raise_a_typed_error_naming_what_is_allowed(state: str, event: str) -> None:
    with pytest.raises(IllegalTransition) as info:
        resolve(state, event, ATTACHED_H1, eip_uuid="e-1")
    err = info.value
    assert (err.state, err.event, err.eip_uuid) == (state, event, "e-1")
    assert list(err.allowed) == allowed_events(state)
    assert state in str(err) and event in str(err)
    assert _library(state, event, ATTACHED_H1) is None


def test_every_in_flight_state_can_reach_a_stable_state() -> None:
    graph: dict[str, set[str]] = {}
    for e in edges():
        graph.setdefault(e.source, set()).add(e.target)
    for start in IN_FLIGHT:
        seen, todo = {start}, [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert seen & (STABLE | {"deleted"}), start

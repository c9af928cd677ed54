"""The machine compiled into a lookup table, for the hot path.

python-statemachine costs ~300 µs to restore a machine and send one event; a
version-checked transition on SQLite costs ~60-220 µs in total. So the runner
does not build a machine per transition: it compiles :class:`EipMachine` once
into ``(state, event) -> [(target, guards)]`` and evaluates the same guard
functions in the same order (first match wins, as in the library). The class
stays the single source of truth; ``tests/unit/test_table.py`` proves the table
and the library agree on every state, event and combination of facts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .errors import IllegalTransition
from .machine import EipMachine, Facts

__all__ = ["Edge", "TRANSITIONS", "allowed_events", "edges", "resolve"]

Guard = Callable[[Facts], bool]


@dataclass(frozen=True, slots=True)
class Edge:
    """One declared transition: ``source --event[guards]--> target``."""

    source: str
    event: str
    target: str
    guards: tuple[tuple[str, bool], ...]  # (guard name, expected value); all must hold
    order: int  # position among the transitions of (source, event)

    @property
    def guard_text(self) -> str:
        """Guards as a human readable expression (``wants_attached and not attach_confirmed``)."""
        return " and ".join(name if want else f"not {name}" for name, want in self.guards)


def _compile() -> tuple[dict[tuple[str, str], tuple[tuple[str, tuple[tuple[Guard, bool], ...]], ...]], list[Edge]]:
    table: dict[tuple[str, str], list[tuple[str, tuple[tuple[Guard, bool], ...]]]] = {}
    all_edges: list[Edge] = []
    for state in EipMachine.states:
        for transition in state.transitions:
            guards: list[tuple[str, bool]] = []
            for spec in transition.cond:
                name = spec.func
                if not isinstance(name, str) or not name.isidentifier():
                    raise TypeError(f"guard {name!r} must be the name of a guard method")
                guards.append((name, bool(spec.expected_value)))
            for event in transition.events:
                key = (transition.source.value, event.id)
                options = table.setdefault(key, [])
                funcs = tuple((getattr(EipMachine, n), want) for n, want in guards)
                all_edges.append(
                    Edge(transition.source.value, event.id, transition.target.value, tuple(guards), len(options))
                )
                options.append((transition.target.value, funcs))
    return {k: tuple(v) for k, v in table.items()}, all_edges


_TABLE, _EDGES = _compile()
TRANSITIONS: Final = _TABLE


def edges() -> list[Edge]:
    """Every declared transition, in declaration order."""
    return list(_EDGES)


def allowed_events(state: str) -> list[str]:
    """Events that have at least one transition out of ``state`` (guards ignored)."""
    seen: dict[str, None] = {}
    for src, event in _TABLE:
        if src == state:
            seen[event] = None
    return list(seen)


def resolve(state: str, event: str, facts: Facts, *, eip_uuid: str | None = None) -> str:
    """The target state for ``event`` in ``state`` given ``facts``.

    Raises:
        IllegalTransition: the event is not allowed in that state (or no guard holds).
    """
    options = _TABLE.get((state, event))
    if options:
        for target, guards in options:
            for fn, want in guards:
                if bool(fn(facts)) is not want:
                    break
            else:
                return target
    raise IllegalTransition(eip_uuid=eip_uuid, state=state, event=event, allowed=allowed_events(state))

"""The drawable view: a spec turned into nodes and merged edges, plus the history and diff overlays.

Renderers (:mod:`.renderers`) only lay out what this module decides: which transitions share
one arrow, how each arrow is classified, what is highlighted. Parallel transitions between the
same two states with the same category (and, in a diff, the same status) become one arrow
labelled with every event, so the five intents an in-flight state records are one loop, not five.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from .diff import diff_specs
from .spec import MachineSpec, StateSpec, TransitionSpec

__all__ = [
    "CATEGORIES",
    "Edge",
    "EdgeItem",
    "Graph",
    "HistoryStep",
    "Node",
    "diff_graph",
    "history_graph",
    "machine_graph",
]

#: edge categories in legend order; ``unknown`` only appears for history steps the spec does not declare
CATEGORIES: Final = ("intent", "release", "completion", "failure", "recorded", "unknown")

START: Final = "__start"


class HistoryStep(Protocol):
    """What a history overlay needs from one record (``TransitionRecord`` fits)."""

    @property
    def event(self) -> str: ...
    @property
    def from_state(self) -> str: ...
    @property
    def to_state(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Node:
    """One state as drawn. ``status`` is ``added``/``removed``/``changed`` in a diff, else ``""``;
    ``steps`` are the history step numbers that entered this state; ``current`` marks the EIP's state."""

    state: StateSpec
    status: str = ""
    current: bool = False
    steps: tuple[int, ...] = ()

    @property
    def id(self) -> str:
        return self.state.id


@dataclass(frozen=True, slots=True)
class EdgeItem:
    """One transition on an arrow, with the history steps that took it."""

    transition: TransitionSpec
    steps: tuple[int, ...] = ()

    @property
    def text(self) -> str:
        """``apply_ok [wants_attached]``, prefixed ``(2) (5)`` when history steps took it."""
        t = self.transition
        label = f"{t.event} [{t.guard_text}]" if t.guard_text else t.event
        if self.steps:
            label = " ".join(f"({n})" for n in self.steps) + " " + label
        return label


@dataclass(frozen=True, slots=True)
class Edge:
    """One arrow: every transition from ``source`` to ``target`` of one category (and diff status)."""

    source: str
    target: str
    category: str
    items: tuple[EdgeItem, ...]
    status: str = ""

    @property
    def steps(self) -> tuple[int, ...]:
        return tuple(sorted(n for item in self.items for n in item.steps))


@dataclass(frozen=True, slots=True)
class Graph:
    """Everything a renderer draws. ``initial_steps`` number the ``create`` step on the start arrow."""

    title: str
    mode: str  # "machine" | "history" | "diff"
    initial: str
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    initial_steps: tuple[int, ...] = ()


def _merge(
    spec: MachineSpec, transitions: Iterable[tuple[TransitionSpec, str, tuple[int, ...], str | None]]
) -> tuple[Edge, ...]:
    """Group (transition, status, steps, category override) into arrows, first appearance first."""
    groups: dict[tuple[str, str, str, str, bool], list[EdgeItem]] = {}
    for t, status, steps, category in transitions:
        # transitions a history took get their own arrow, so the highlight never covers an untaken event
        key = (t.source, t.target, category or spec.category(t), status, bool(steps))
        groups.setdefault(key, []).append(EdgeItem(t, steps))
    return tuple(Edge(src, dst, cat, tuple(items), status) for (src, dst, cat, status, _), items in groups.items())


def machine_graph(spec: MachineSpec) -> Graph:
    """The lifecycle as declared: every state, every transition, nothing highlighted."""
    edges = _merge(spec, ((t, "", (), None) for t in spec.transitions))
    return Graph(f"{spec.name}: EIP lifecycle", "machine", spec.initial, tuple(Node(s) for s in spec.states), edges)


def history_graph(spec: MachineSpec, records: Sequence[HistoryStep], *, title: str | None = None) -> Graph:
    """The machine with one EIP's path numbered in order and its current (last) state highlighted.

    Step ``n`` is ``records[n-1]``. The ``create`` record (from no state) numbers the start arrow. A
    record the spec does not declare (an older machine wrote it) is drawn as an ``unknown`` arrow
    rather than dropped, so the path stays complete.
    """
    taken: dict[tuple[str, str, str], list[int]] = {}
    initial_steps: list[int] = []
    unknown: dict[tuple[str, str, str], list[int]] = {}
    declared = {t.key for t in spec.transitions}
    entered: dict[str, list[int]] = {}
    for n, r in enumerate(records, start=1):
        entered.setdefault(r.to_state, []).append(n)
        if not r.from_state:
            initial_steps.append(n)
        elif (r.from_state, r.event, r.to_state) in declared:
            taken.setdefault((r.from_state, r.event, r.to_state), []).append(n)
        else:
            unknown.setdefault((r.from_state, r.event, r.to_state), []).append(n)
    current = records[-1].to_state if records else None
    rows: list[tuple[TransitionSpec, str, tuple[int, ...], str | None]] = [
        (t, "", tuple(taken.get(t.key, ())), None) for t in spec.transitions
    ]
    rows += [
        (TransitionSpec(src, ev, dst, (), 0, ""), "", tuple(steps), "unknown")
        for (src, ev, dst), steps in unknown.items()
    ]
    nodes = [Node(s, current=s.id == current, steps=tuple(entered.get(s.id, ()))) for s in spec.states]
    known = {s.id for s in spec.states}
    # states the spec no longer has still appear, so every step has both ends
    extra = [sid for r in records for sid in (r.from_state, r.to_state) if sid and sid not in known]
    for sid in dict.fromkeys(extra):
        nodes.append(Node(StateSpec(sid, sid, "unknown", None, "not in this machine"), current=sid == current,
                          steps=tuple(entered.get(sid, ()))))
    return Graph(title or f"{spec.name}: one EIP's path", "history", spec.initial, tuple(nodes),
                 _merge(spec, rows), tuple(initial_steps))


def diff_graph(old: MachineSpec, new: MachineSpec) -> Graph:
    """Both machines in one picture: added states/transitions green, removed red, changed orange."""
    d = diff_specs(old, new)
    added_s = {s.id for s in d.added_states}
    changed_s = {s.id for _, s in d.changed_states}
    nodes = [Node(s, "added" if s.id in added_s else "changed" if s.id in changed_s else "") for s in new.states]
    nodes += [Node(s, "removed") for s in d.removed_states]
    added_t = {t.key for t in d.added_transitions}
    changed_t = {t.key for _, t in d.changed_transitions}
    rows: list[tuple[TransitionSpec, str, tuple[int, ...], str | None]] = []
    for t in new.transitions:
        status = "added" if t.key in added_t else "changed" if t.key in changed_t else ""
        rows.append((t, status, (), None))
    # a removed transition is classified by the old spec (its event may be gone from the new one)
    rows += [(t, "removed", (), old.category(t)) for t in d.removed_transitions]
    return Graph(f"{new.name}: changes since the old spec", "diff", new.initial, tuple(nodes), _merge(new, rows))

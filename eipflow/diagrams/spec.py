"""The machine as data: extracted once from :class:`~eipflow.machine.EipMachine`, serialised as canonical JSON.

This is the *extract/model* layer (as in python-statemachine's ``contrib/diagram``): every renderer
and the review diff read a :class:`MachineSpec`, never the class itself, so a spec loaded from an
old JSON file can be drawn and compared exactly like the live machine.

The transitions come from :func:`eipflow.table.edges` (the same compiled view the runner uses), in
declaration order, so everything generated from a spec is deterministic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .. import machine, table
from .errors import InvalidSpec

__all__ = [
    "FAILURE_EVENTS",
    "RELEASE_EVENTS",
    "SPEC_FORMAT",
    "EventSpec",
    "MachineSpec",
    "StateSpec",
    "TransitionSpec",
    "current_spec",
    "load_spec",
    "work_enqueued",
]

#: bumped when the JSON layout changes incompatibly
SPEC_FORMAT: Final = 1

#: VM facts that take the rule off a host (or put it back): drawn as release edges
RELEASE_EVENTS: Final = frozenset({"vm_stopped", "vm_migrated", "vm_started"})
#: completions that report a failed backend call: drawn as failure edges
FAILURE_EVENTS: Final = frozenset({"apply_failed", "revoke_failed"})


@dataclass(frozen=True, slots=True)
class StateSpec:
    """One state.

    Attributes:
        id: the value stored in the row's ``state`` column.
        name: the human name declared on the class.
        kind: ``stable``, ``in-flight`` (owns a durable work item) or ``final``.
        action: the backend work an in-flight state owns (``apply``/``revoke``), else ``None``.
        description: one line from :data:`eipflow.machine.STATE_DESCRIPTIONS`.
        initial: whether a new EIP starts here.
    """

    id: str
    name: str
    kind: str
    action: str | None
    description: str
    initial: bool = False


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One event: an ``intent`` (callers ask for it) or a ``completion`` (the runner reports it)."""

    id: str
    kind: str


@dataclass(frozen=True, slots=True)
class TransitionSpec:
    """One declared transition ``source --event[guards]--> target``.

    Attributes:
        order: position among the transitions of (source, event); the first whose guards hold wins.
        guards: (guard name, expected value) pairs that must all hold.
        work: the backend work taking this transition enqueues (``enqueue apply``, ``enqueue revoke``,
            ``continue apply``) or ``""``.
    """

    source: str
    event: str
    target: str
    guards: tuple[tuple[str, bool], ...]
    order: int
    work: str

    @property
    def key(self) -> tuple[str, str, str]:
        """Identity for diffs: a (source, event) pair never declares the same target twice."""
        return (self.source, self.event, self.target)

    @property
    def guard_text(self) -> str:
        """``wants_attached and not attach_confirmed``; ``else`` for an unguarded fallback."""
        text = " and ".join(name if want else f"not {name}" for name, want in self.guards)
        return text or ("else" if self.order > 0 else "")

    @property
    def is_loop(self) -> bool:
        return self.source == self.target

    def describe(self) -> str:
        """``applying --apply_ok [wants_attached]--> attached``."""
        guard = f" [{self.guard_text}]" if self.guard_text else ""
        return f"{self.source} --{self.event}{guard}--> {self.target}"


@dataclass(frozen=True, slots=True)
class MachineSpec:
    """The whole machine: states, events and transitions in declaration order."""

    name: str
    initial: str
    states: tuple[StateSpec, ...]
    events: tuple[EventSpec, ...]
    transitions: tuple[TransitionSpec, ...]

    def state(self, state_id: str) -> StateSpec | None:
        return next((s for s in self.states if s.id == state_id), None)

    def event_kind(self, event: str) -> str:
        found = next((e for e in self.events if e.id == event), None)
        return found.kind if found else "completion"

    def category(self, t: TransitionSpec) -> str:
        """How an edge is drawn: ``recorded`` (an intent kept on the row while work is in flight),
        ``failure``, ``release``, ``intent`` or ``completion``."""
        kind = self.event_kind(t.event)
        if t.is_loop and kind == "intent":
            return "recorded"
        if t.event in FAILURE_EVENTS:
            return "failure"
        if t.event in RELEASE_EVENTS:
            return "release"
        return kind

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SPEC_FORMAT,
            "machine": self.name,
            "initial": self.initial,
            "states": [
                {
                    "id": s.id,
                    "name": s.name,
                    "kind": s.kind,
                    "action": s.action,
                    "description": s.description,
                    "initial": s.initial,
                }
                for s in self.states
            ],
            "events": [{"id": e.id, "kind": e.kind} for e in self.events],
            "transitions": [
                {
                    "source": t.source,
                    "event": t.event,
                    "target": t.target,
                    "guards": [{"name": n, "expected": w} for n, w in t.guards],
                    "order": t.order,
                    "work": t.work,
                }
                for t in self.transitions
            ],
        }

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, two-space indent, trailing newline (byte-stable)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "spec") -> MachineSpec:
        """Rebuild a spec from :meth:`to_dict` output.

        Raises:
            InvalidSpec: the document is not a spec of a format we read.
        """
        if not isinstance(data, dict):
            raise InvalidSpec(source, "expected a JSON object")
        if data.get("format") != SPEC_FORMAT:
            raise InvalidSpec(source, f"format {data.get('format')!r}, expected {SPEC_FORMAT}")
        try:
            states = tuple(
                StateSpec(
                    str(s["id"]), str(s["name"]), str(s["kind"]), s.get("action"), str(s.get("description", "")),
                    bool(s.get("initial", False)),
                )
                for s in data["states"]
            )
            events = tuple(EventSpec(str(e["id"]), str(e["kind"])) for e in data["events"])
            transitions = tuple(
                TransitionSpec(
                    str(t["source"]), str(t["event"]), str(t["target"]),
                    tuple((str(g["name"]), bool(g["expected"])) for g in t.get("guards", [])),
                    int(t.get("order", 0)), str(t.get("work", "")),
                )
                for t in data["transitions"]
            )
            return cls(str(data["machine"]), str(data["initial"]), states, events, transitions)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidSpec(source, f"missing or malformed field: {exc}") from exc


def work_enqueued(source: str, target: str) -> str:
    """The backend work a ``source → target`` transition enqueues, from :data:`machine.EFFECTS`.

    Entering an in-flight state enqueues the work it owns, except where the source's item goes on
    (:data:`machine.CONTINUES`: ``binding → applying`` continues the attach's apply). Self-transitions
    only record a fact.
    """
    action = machine.EFFECTS[target].work
    if source == target or action is None:
        return ""
    return f"continue {action}" if (source, target) in machine.CONTINUES else f"enqueue {action}"


def _kind(state_id: str, final: bool) -> str:
    if final:
        return "final"
    return "in-flight" if state_id in machine.IN_FLIGHT else "stable"


def current_spec() -> MachineSpec:
    """The spec of the machine as declared in :mod:`eipflow.machine` right now."""
    cls = machine.EipMachine
    states = tuple(
        StateSpec(
            id=s.value,
            name=s.name,
            kind=_kind(s.value, bool(s.final)),
            action=machine.work_for(s.value),
            description=machine.STATE_DESCRIPTIONS.get(s.value, ""),
            initial=bool(s.initial),
        )
        for s in cls.states
    )
    events = tuple(EventSpec(e, "intent") for e in machine.INTENT_EVENTS) + tuple(
        EventSpec(e, "completion") for e in machine.COMPLETION_EVENTS
    )
    transitions = tuple(
        TransitionSpec(e.source, e.event, e.target, e.guards, e.order, work_enqueued(e.source, e.target))
        for e in table.edges()
    )
    initial = next(s.id for s in states if s.initial)
    return MachineSpec(cls.__name__, initial, states, events, transitions)


def load_spec(path: str | Path) -> MachineSpec:
    """Read a spec written by ``eipflow diagram --export-spec``.

    Raises:
        InvalidSpec: unreadable file, bad JSON or not a spec.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidSpec(str(path), exc.strerror or str(exc)) from exc
    except json.JSONDecodeError as exc:
        raise InvalidSpec(str(path), f"invalid JSON: {exc}") from exc
    return MachineSpec.from_dict(data, source=str(path))

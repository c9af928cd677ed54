"""What a change to the machine changes: two :class:`MachineSpec` compared state by state, edge by edge."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from .spec import EventSpec, MachineSpec, StateSpec, TransitionSpec

__all__ = ["SpecDiff", "diff_specs"]


@dataclass(frozen=True, slots=True)
class SpecDiff:
    """Differences from an ``old`` spec to a ``new`` one, each list in the new (then old) declaration order.

    ``changed_*`` pairs are ``(old, new)`` with the same identity: a state's id, an event's id, a
    transition's (source, event, target).
    """

    added_states: tuple[StateSpec, ...]
    removed_states: tuple[StateSpec, ...]
    changed_states: tuple[tuple[StateSpec, StateSpec], ...]
    added_events: tuple[EventSpec, ...]
    removed_events: tuple[EventSpec, ...]
    changed_events: tuple[tuple[EventSpec, EventSpec], ...]
    added_transitions: tuple[TransitionSpec, ...]
    removed_transitions: tuple[TransitionSpec, ...]
    changed_transitions: tuple[tuple[TransitionSpec, TransitionSpec], ...]

    @property
    def empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))

    def to_text(self) -> str:
        """The review summary ``eipflow diagram --diff`` prints (``+`` added, ``-`` removed, ``~`` changed)."""
        if self.empty:
            return "no differences"
        lines: list[str] = []
        if self.added_states or self.removed_states or self.changed_states:
            lines.append("states:")
            lines += [f"  + {s.id} ({s.kind})" for s in self.added_states]
            lines += [f"  - {s.id} ({s.kind})" for s in self.removed_states]
            lines += [f"  ~ {new.id}: {_changes(old, new, ('name', 'kind', 'action', 'initial'))}"
                      for old, new in self.changed_states]
        if self.added_events or self.removed_events or self.changed_events:
            lines.append("events:")
            lines += [f"  + {e.id} ({e.kind})" for e in self.added_events]
            lines += [f"  - {e.id} ({e.kind})" for e in self.removed_events]
            lines += [f"  ~ {new.id}: {_changes(old, new, ('kind',))}" for old, new in self.changed_events]
        if self.added_transitions or self.removed_transitions or self.changed_transitions:
            lines.append("transitions:")
            lines += [f"  + {t.describe()}" for t in self.added_transitions]
            lines += [f"  - {t.describe()}" for t in self.removed_transitions]
            lines += [f"  ~ {new.source} --{new.event}--> {new.target}: {_transition_changes(old, new)}"
                      for old, new in self.changed_transitions]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (transitions as their ``describe()`` text plus fields)."""

        def t(x: TransitionSpec) -> dict[str, Any]:
            return {"source": x.source, "event": x.event, "target": x.target, "guard": x.guard_text,
                    "order": x.order, "work": x.work}

        return {
            "states": {
                "added": [s.id for s in self.added_states],
                "removed": [s.id for s in self.removed_states],
                "changed": [s.id for _, s in self.changed_states],
            },
            "events": {
                "added": [e.id for e in self.added_events],
                "removed": [e.id for e in self.removed_events],
                "changed": [e.id for _, e in self.changed_events],
            },
            "transitions": {
                "added": [t(x) for x in self.added_transitions],
                "removed": [t(x) for x in self.removed_transitions],
                "changed": [{"old": t(o), "new": t(n)} for o, n in self.changed_transitions],
            },
        }


def _changes(old: object, new: object, names: tuple[str, ...]) -> str:
    parts = [f"{n} {getattr(old, n)!r} → {getattr(new, n)!r}" for n in names if getattr(old, n) != getattr(new, n)]
    return "; ".join(parts)


def _transition_changes(old: TransitionSpec, new: TransitionSpec) -> str:
    parts = []
    if old.guards != new.guards:
        parts.append(f"guard [{old.guard_text or '-'}] → [{new.guard_text or '-'}]")
    if old.order != new.order:
        parts.append(f"order {old.order} → {new.order}")
    if old.work != new.work:
        parts.append(f"work {old.work or '-'!r} → {new.work or '-'!r}")
    return "; ".join(parts)


def diff_specs(old: MachineSpec, new: MachineSpec) -> SpecDiff:
    """Compare two specs (typically a committed ``spec.json`` against the current machine)."""
    old_states = {s.id: s for s in old.states}
    new_states = {s.id: s for s in new.states}
    old_events = {e.id: e for e in old.events}
    new_events = {e.id: e for e in new.events}
    old_trans = {t.key: t for t in old.transitions}
    new_trans = {t.key: t for t in new.transitions}
    return SpecDiff(
        added_states=tuple(s for k, s in new_states.items() if k not in old_states),
        removed_states=tuple(s for k, s in old_states.items() if k not in new_states),
        changed_states=tuple(
            (old_states[k], s) for k, s in new_states.items()
            if k in old_states and _state_sig(old_states[k]) != _state_sig(s)
        ),
        added_events=tuple(e for k, e in new_events.items() if k not in old_events),
        removed_events=tuple(e for k, e in old_events.items() if k not in new_events),
        changed_events=tuple(
            (old_events[k], e) for k, e in new_events.items() if k in old_events and old_events[k] != e
        ),
        added_transitions=tuple(t for k, t in new_trans.items() if k not in old_trans),
        removed_transitions=tuple(t for k, t in old_trans.items() if k not in new_trans),
        changed_transitions=tuple(
            (old_trans[k], t) for k, t in new_trans.items() if k in old_trans and old_trans[k] != t
        ),
    )


def _state_sig(s: StateSpec) -> tuple[object, ...]:
    # descriptions are prose: rewording one is not a machine change worth flagging in review
    return (s.name, s.kind, s.action, s.initial)

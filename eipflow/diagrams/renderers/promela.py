"""The machine's transition relation as Promela, for the SPIN model of the protocol (``model/``).

The model (``model/eipflow.pml``) is the hand-written *protocol*: the row's compare-and-swap, work
items with leases, workers, backend calls, hosts with generations. What the row may do on each
event is not written by hand: it is this file, generated from the same :class:`MachineSpec` the
diagrams come from, so a change to :mod:`eipflow.machine` changes what SPIN explores (and
``tests/model/`` fails while the committed file is stale).

The output defines one constant per state and event, the in-flight/stable/final sets, and an
``inline resolve(ev, tgt, work)`` that reads the row's state ``st`` and the guard macros
``G_<guard>`` (which the protocol defines over its row variables) and picks, like
:func:`eipflow.table.resolve`, the first declared transition whose guards all hold. A guard the
protocol does not define is a compile error, not a silent gap.

Regenerate with ``python -m eipflow.diagrams.renderers.promela diagrams/spec.json model/machine.pml``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from ..errors import InvalidSpec
from ..spec import MachineSpec, TransitionSpec, load_spec

__all__ = ["WORK_MACROS", "guard_names", "to_promela"]

#: the ``work`` field of a transition -> the Promela constant the protocol acts on
WORK_MACROS: Final = {
    "": "W_NONE",
    "enqueue apply": "W_ENQUEUE_APPLY",
    "enqueue revoke": "W_ENQUEUE_REVOKE",
    "continue apply": "W_CONTINUE_APPLY",
}


def _ident(value: str, source: str) -> str:
    if not value.isidentifier():
        raise InvalidSpec(source, f"{value!r} is not usable as a Promela name")
    return value


def _guard(t: TransitionSpec) -> str:
    parts = [f"G_{name}" if want else f"!G_{name}" for name, want in t.guards]
    return " && ".join(parts)


def _work(t: TransitionSpec, source: str) -> str:
    try:
        return WORK_MACROS[t.work]
    except KeyError:
        raise InvalidSpec(source, f"transition {t.describe()} enqueues unknown work {t.work!r}") from None


def guard_names(spec: MachineSpec) -> list[str]:
    """Every guard the transitions use, in first-use order (the protocol must define ``G_<name>`` for each)."""
    seen: dict[str, None] = {}
    for t in spec.transitions:
        for name, _ in t.guards:
            seen[name] = None
    return list(seen)


def _chain(options: Sequence[TransitionSpec], indent: str, source: str) -> list[str]:
    """Nested ``if`` for one (state, event): the first option whose guards hold wins, like the table."""
    first, rest = options[0], options[1:]
    set_target = f"tgt = S_{first.target}; work = {_work(first, source)}"
    guard = _guard(first)
    if not guard:
        return [f"{indent}{set_target}"]  # later options are unreachable, as in the library
    lines = [f"{indent}if", f"{indent}:: ({guard}) -> {set_target}"]
    if rest:
        lines.append(f"{indent}:: else ->")
        lines += _chain(rest, indent + "   ", source)
    else:
        lines.append(f"{indent}:: else -> skip /* no guard holds: illegal */")
    lines.append(f"{indent}fi")
    return lines


def _set_macro(name: str, members: Sequence[str]) -> str:
    body = " || ".join(f"(s) == S_{m}" for m in members) or "0"
    return f"#define {name}(s) ({body})"


def to_promela(spec: MachineSpec, *, source: str = "diagrams/spec.json") -> str:
    """The Promela text of ``model/machine.pml`` for ``spec`` (deterministic: the same spec, the same bytes).

    Raises:
        InvalidSpec: a state, event or guard name is not a Promela identifier, or a transition
            enqueues work the protocol does not know.
    """
    states = [_ident(s.id, source) for s in spec.states]
    events = [_ident(e.id, source) for e in spec.events]
    for name in guard_names(spec):
        _ident(name, source)
    lines = [
        f"/* {spec.name}'s transition relation, generated from the machine's exported spec by",
        "   eipflow.diagrams.renderers.promela. Do not edit: regenerate",
        "   (python -m eipflow.diagrams.renderers.promela diagrams/spec.json model/machine.pml). */",
        "",
        "/* states, in declaration order */",
    ]
    lines += [f"#define S_{s} {i}" for i, s in enumerate(states)]
    lines += ["#define S_NONE 255", "", "/* events: intents (callers, the reconciler) and completions (the runner) */"]
    lines += [f"#define E_{e.id} {i} /* {e.kind} */" for i, e in enumerate(spec.events)]
    lines += [
        "",
        "/* backend work a transition enqueues */",
        *(f"#define {macro} {i}" for i, macro in enumerate(WORK_MACROS.values())),
        "",
        f"#define INITIAL_STATE S_{spec.initial}",
        _set_macro("IN_FLIGHT", [s.id for s in spec.states if s.kind == "in-flight"]),
        _set_macro("STABLE", [s.id for s in spec.states if s.kind == "stable"]),
        _set_macro("FINAL", [s.id for s in spec.states if s.kind == "final"]),
        _set_macro("OWNS_APPLY", [s.id for s in spec.states if s.action == "apply"]),
        _set_macro("OWNS_REVOKE", [s.id for s in spec.states if s.action == "revoke"]),
        "",
        f"/* guards the protocol defines over its row: {', '.join(f'G_{g}' for g in guard_names(spec))} */",
        "",
        "/* The target of event `ev` in state `st`: the first declared transition whose guards",
        "   hold, or S_NONE when the event is illegal there. `work` is what it enqueues. */",
        "inline resolve(ev, tgt, work) {",
        "d_step {",
        "   tgt = S_NONE; work = W_NONE;",
        "   if",
    ]
    grouped: dict[tuple[str, str], list[TransitionSpec]] = {}
    for t in spec.transitions:
        grouped.setdefault((t.source, t.event), []).append(t)
    for (state, event), options in grouped.items():
        ordered = sorted(options, key=lambda t: t.order)
        lines.append(f"   :: (st == S_{state} && ev == E_{event}) ->")
        lines += _chain(ordered, "      ", source)
    lines += ["   :: else -> skip /* no transition declared: illegal */", "   fi", "}", "}", ""]
    lines += ["/* names for the readable trace */", "inline say_state(s) {", "   if"]
    lines += [f'   :: (s) == S_{s} -> printf("{s}")' for s in states]
    lines += ['   :: else -> printf("?")', "   fi", "}", "", "inline say_event(e) {", "   if"]
    lines += [f'   :: (e) == E_{e} -> printf("{e}")' for e in events]
    lines += ['   :: else -> printf("?")', "   fi", "}", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m eipflow.diagrams.renderers.promela [--check] SPEC OUT``: write (or check) the model's machine."""
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    paths = [a for a in args if a != "--check"]
    spec_path, out = (paths + ["diagrams/spec.json", "model/machine.pml"][len(paths):])[:2]
    text = to_promela(load_spec(spec_path), source=spec_path)
    target = Path(out)
    current = target.read_text(encoding="utf-8") if target.exists() else None
    if check:
        if current != text:
            print(f"{out} is stale: regenerate it from {spec_path}", file=sys.stderr)
            return 1
        return 0
    if current != text:
        target.write_text(text, encoding="utf-8")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

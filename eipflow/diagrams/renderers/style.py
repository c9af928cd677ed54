"""One palette for every renderer, so the DOT/SVG/PNG and the Mermaid diagrams read the same way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["EDGE", "LEGEND", "NODE", "STATUS", "EdgeStyle", "NodeStyle", "wrap_items"]


@dataclass(frozen=True, slots=True)
class EdgeStyle:
    color: str
    line: str  # "solid" | "dashed" | "dotted" | "bold"
    width: float


@dataclass(frozen=True, slots=True)
class NodeStyle:
    fill: str
    stroke: str
    dashed: bool


EDGE: Final[dict[str, EdgeStyle]] = {
    "intent": EdgeStyle("#1565c0", "solid", 1.6),      # blue: a caller asked
    "release": EdgeStyle("#e65100", "dashed", 1.6),    # orange dashed: the VM stopped/moved/started
    "completion": EdgeStyle("#37474f", "solid", 1.2),  # slate: the runner reports backend work done
    "failure": EdgeStyle("#c62828", "bold", 2.0),      # red: the backend call failed
    "recorded": EdgeStyle("#9e9e9e", "dotted", 1.0),   # grey: intent kept on the row while work runs
    "unknown": EdgeStyle("#8e24aa", "dashed", 1.6),    # purple: a history step this machine does not declare
}

NODE: Final[dict[str, NodeStyle]] = {
    "stable": NodeStyle("#e8f5e9", "#2e7d32", False),
    "in-flight": NodeStyle("#fff3cd", "#b26a00", True),
    "final": NodeStyle("#e0e0e0", "#424242", False),
    "unknown": NodeStyle("#f3e5f5", "#8e24aa", True),
}

#: diff status colours (fill, stroke); history colours for the current and visited states
STATUS: Final[dict[str, tuple[str, str]]] = {
    "added": ("#c8e6c9", "#1b5e20"),
    "removed": ("#ffcdd2", "#b71c1c"),
    "changed": ("#ffe0b2", "#e65100"),
    "current": ("#81d4fa", "#01579b"),
    "visited": ("#e1f5fe", "#0277bd"),
    "faded": ("#fafafa", "#bdbdbd"),
}
PATH_COLOR: Final = "#0277bd"

LEGEND: Final = (
    ("intent", "intent: a caller asks (attach, detach, delete)"),
    ("release", "release: VM stopped / migrated / started"),
    ("completion", "completion: backend work finished"),
    ("failure", "failure: apply or revoke failed"),
    ("recorded", "recorded: intent kept on the row until the work returns"),
)


def wrap_items(items: list[str], width: int = 34) -> list[str]:
    """Pack labels into lines of at most ``width`` characters, ``", "``-separated (one per line if longer)."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + 2 + len(item) <= width:
            lines[-1] += ", " + item
        else:
            lines.append(item)
    return lines

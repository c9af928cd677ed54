"""Errors the diagram tools raise, in the :mod:`eipflow.errors` hierarchy.

    EipflowError
    ├── GraphvizNotFound     (SVG/PNG asked for, no ``dot`` on PATH)
    ├── GraphvizFailed       (``dot`` ran and exited non-zero)
    ├── DiagramsStale        (``eipflow diagram --check`` found files the machine no longer generates)
    └── InvalidInput (ValueError)
        ├── InvalidSpec          (a ``--diff`` spec file that is not an eipflow machine spec)
        └── UnknownDiagramFormat (a file extension or ``--format`` we cannot write)
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import EipflowError, InvalidInput

__all__ = ["DiagramsStale", "GraphvizFailed", "GraphvizNotFound", "InvalidSpec", "UnknownDiagramFormat"]


class GraphvizNotFound(EipflowError):
    """Graphviz ``dot`` is needed for SVG/PNG and is not installed."""

    def __init__(self, formats: Sequence[str], written: Sequence[str] = ()) -> None:
        self.formats = tuple(formats)
        self.written = tuple(written)
        done = f"; wrote the text formats ({', '.join(self.written)})" if self.written else ""
        super().__init__(
            f"cannot render {', '.join(self.formats)}: Graphviz 'dot' is not on PATH{done}. "
            "Install Graphviz (e.g. apt-get install graphviz) or ask for a text format (mermaid, dot, md)"
        )


class GraphvizFailed(EipflowError):
    """``dot`` exited non-zero (its stderr is kept)."""

    def __init__(self, fmt: str, returncode: int, stderr: str) -> None:
        self.format = fmt
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(
            f"Graphviz 'dot -T{fmt}' failed with exit code {returncode}: {stderr.strip() or 'no message'} "
            "(check the DOT with: eipflow diagram --format dot)"
        )


class DiagramsStale(EipflowError):
    """Generated diagrams on disk differ from what the current machine generates."""

    def __init__(self, directory: str, stale: Sequence[tuple[str, str]]) -> None:
        self.directory = directory
        self.stale = tuple(stale)  # (path, reason)
        lines = "; ".join(f"{path} ({reason})" for path, reason in self.stale)
        super().__init__(
            f"stale diagrams: {lines}. Regenerate with: eipflow diagram --out {directory}, then commit them"
        )


class InvalidSpec(InvalidInput):
    """A machine spec file could not be read."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(
            f"{source}: not an eipflow machine spec ({reason}); write one with: eipflow diagram --export-spec FILE"
        )


class UnknownDiagramFormat(InvalidInput):
    """The requested output format (or file extension) is not one we write."""

    def __init__(self, what: str, allowed: Sequence[str]) -> None:
        self.what = what
        self.allowed = tuple(allowed)
        super().__init__(f"cannot write a diagram as {what!r}; use one of: {', '.join(self.allowed)}")

"""Renderers: a :class:`~eipflow.diagrams.graph.Graph` (or a spec) to Mermaid, DOT or a Markdown table."""

from __future__ import annotations

from .dot import to_dot
from .markdown import to_markdown
from .mermaid import to_mermaid

__all__ = ["to_dot", "to_markdown", "to_mermaid"]

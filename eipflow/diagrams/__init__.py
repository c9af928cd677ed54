"""Diagrams of the EIP lifecycle, generated from :class:`eipflow.machine.EipMachine`.

Layered like python-statemachine's ``contrib/diagram``: :mod:`.spec` extracts the machine as
data (and reads/writes it as canonical JSON), :mod:`.graph` turns a spec into nodes and merged
edges with optional history or diff overlays, :mod:`.renderers` write Mermaid, DOT and Markdown,
:mod:`.graphviz` runs ``dot`` for SVG/PNG, and :mod:`.files` owns the committed ``diagrams/``.
"""

from __future__ import annotations

from .diff import SpecDiff, diff_specs
from .errors import DiagramsStale, GraphvizFailed, GraphvizNotFound, InvalidSpec, UnknownDiagramFormat
from .files import DEFAULT_DIR, WriteResult, check_dir, render_graph, text_files, write_dir, write_graph
from .graph import Edge, EdgeItem, Graph, Node, diff_graph, history_graph, machine_graph
from .graphviz import dot_available
from .spec import EventSpec, MachineSpec, StateSpec, TransitionSpec, current_spec, load_spec, work_enqueued

__all__ = [
    "DEFAULT_DIR",
    "DiagramsStale",
    "Edge",
    "EdgeItem",
    "EventSpec",
    "Graph",
    "GraphvizFailed",
    "GraphvizNotFound",
    "InvalidSpec",
    "MachineSpec",
    "Node",
    "SpecDiff",
    "StateSpec",
    "TransitionSpec",
    "UnknownDiagramFormat",
    "WriteResult",
    "check_dir",
    "current_spec",
    "diff_graph",
    "diff_specs",
    "dot_available",
    "history_graph",
    "load_spec",
    "machine_graph",
    "render_graph",
    "text_files",
    "work_enqueued",
    "write_dir",
    "write_graph",
]

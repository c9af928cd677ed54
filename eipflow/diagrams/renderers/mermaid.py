"""Mermaid ``flowchart`` (renders inline on GitHub/GitLab).

A flowchart rather than ``stateDiagram-v2``: only flowcharts can colour and dash individual
arrows (``linkStyle``), which is what tells intents, releases, completions and failures apart.
"""

from __future__ import annotations

import json

from ..graph import Edge, Graph, Node
from .style import EDGE, NODE, PATH_COLOR, STATUS, wrap_items

__all__ = ["to_mermaid"]

START_ID = "start__"

_ARROW = {"solid": "-->", "dashed": "-.->", "dotted": "-.->", "bold": "==>"}


def _text(text: str) -> str:
    # Mermaid labels are double-quoted; the only characters that break them are quotes and '#'
    return text.replace('"', "#quot;").replace("#", "#35;") if '"' in text or "#" in text else text


def _node_decl(node: Node) -> str:
    s = node.state
    label = f"<b>{_text(s.name)}</b>"
    if s.action:
        label += f"<br/><small>{s.action} in flight</small>"
    if node.steps:
        label += f"<br/><small>step {' '.join(str(n) for n in node.steps)}</small>"
    if node.status:
        label += f"<br/><small>{node.status}</small>"
    if s.kind == "final":
        return f'    {s.id}((("{label}")))'
    if s.kind == "stable":
        return f'    {s.id}(["{label}"])'
    return f'    {s.id}["{label}"]'


def _node_class(graph: Graph, node: Node) -> str:
    if graph.mode == "diff" and node.status:
        return node.status
    if graph.mode == "history":
        return "current" if node.current else "visited" if node.steps else "faded"
    return {"in-flight": "inflight"}.get(node.state.kind, node.state.kind)


def _edge_style(graph: Graph, edge: Edge) -> tuple[str, str]:
    """(arrow, linkStyle) for one edge."""
    st = EDGE[edge.category]
    color, width, line = st.color, st.width, st.line
    if graph.mode == "diff":
        color, width = (STATUS[edge.status][1], 2.5) if edge.status else (STATUS["faded"][1], 1.0)
        line = "dashed" if edge.status == "removed" else "bold" if edge.status else "solid"
    elif graph.mode == "history":
        color, width, line = (PATH_COLOR, 3.0, "bold") if edge.steps else (STATUS["faded"][1], 1.0, line)
    style = f"stroke:{color},stroke-width:{width}px,color:{color}"
    if line in ("dashed", "dotted"):
        style += ",stroke-dasharray:" + ("6 4" if line == "dashed" else "2 3")
    return _ARROW[line], style


def to_mermaid(graph: Graph) -> str:
    """The graph as a Mermaid flowchart (deterministic for a given graph)."""
    # front matter is YAML: a JSON string is valid YAML and survives the ':' in our titles
    lines = ["---", f"title: {json.dumps(graph.title)}", "---", "flowchart LR"]
    lines.append(f'    {START_ID}(("start"))')
    lines += [_node_decl(n) for n in graph.nodes]
    start_label = " ".join(f"({n})" for n in graph.initial_steps) + " create" if graph.initial_steps else ""
    lines.append(f'    {START_ID} -->|"{start_label}"| {graph.initial}' if start_label
                 else f"    {START_ID} --> {graph.initial}")
    link_styles = [f"    linkStyle 0 stroke:{PATH_COLOR if graph.initial_steps else '#000'},stroke-width:1.5px"]
    for index, edge in enumerate(graph.edges, start=1):
        arrow, style = _edge_style(graph, edge)
        items = wrap_items([_text(i.text) for i in edge.items])
        if graph.mode == "diff" and edge.status:
            items[0] = f"{edge.status}: {items[0]}"
        lines.append(f'    {edge.source} {arrow}|"{"<br/>".join(items)}"| {edge.target}')
        link_styles.append(f"    linkStyle {index} {style}")
    lines += link_styles
    classes = {
        "stable": NODE["stable"], "inflight": NODE["in-flight"], "final": NODE["final"], "unknown": NODE["unknown"],
    }
    for name, ns in classes.items():
        dash = ",stroke-dasharray:5 3" if ns.dashed else ""
        lines.append(f"    classDef {name} fill:{ns.fill},stroke:{ns.stroke},stroke-width:1.5px{dash}")
    for name in ("added", "removed", "changed", "current", "visited", "faded"):
        fill, stroke = STATUS[name]
        lines.append(f"    classDef {name} fill:{fill},stroke:{stroke},stroke-width:2px")
    lines.append("    classDef startNode fill:#000,stroke:#000,color:#fff")
    lines.append(f"    class {START_ID} startNode")
    by_class: dict[str, list[str]] = {}
    for node in graph.nodes:
        by_class.setdefault(_node_class(graph, node), []).append(node.id)
    lines += [f"    class {','.join(ids)} {name}" for name, ids in by_class.items()]
    return "\n".join(lines) + "\n"

"""Graphviz DOT, built with pydot in a fixed order so the text is byte-stable.

python-statemachine's own DOT names its start node after ``id()`` and so differs on every run;
this renderer names everything after state ids and emits nodes and edges in declaration order.
"""

from __future__ import annotations

from html import escape

import pydot

from ..graph import START, Edge, Graph, Node
from .style import EDGE, LEGEND, NODE, PATH_COLOR, STATUS, wrap_items

__all__ = ["to_dot"]

FONT = "Helvetica"


def _q(*lines: str) -> str:
    """A DOT double-quoted string of ``lines`` joined by Graphviz's centred line break ``\\n``."""
    return '"' + "\\n".join(line.replace("\\", "\\\\").replace('"', '\\"') for line in lines) + '"'


def _node_colors(graph: Graph, node: Node) -> tuple[str, str, float]:
    base = NODE.get(node.state.kind, NODE["unknown"])
    fill, stroke, width = base.fill, base.stroke, 1.5
    if graph.mode == "diff" and node.status:
        fill, stroke = STATUS[node.status]
        width = 2.5
    elif graph.mode == "history":
        if node.current:
            (fill, stroke), width = STATUS["current"], 3.0
        elif node.steps:
            (fill, stroke), width = STATUS["visited"], 2.0
        else:
            fill, stroke = STATUS["faded"]
    return fill, stroke, width


def _node(graph: Graph, node: Node) -> pydot.Node:
    s = node.state
    fill, stroke, width = _node_colors(graph, node)
    styles = ["rounded", "filled"]
    if NODE.get(s.kind, NODE["unknown"]).dashed:
        styles.append("dashed")
    lines = [f"<b>{escape(s.name)}</b>"]
    if s.action:
        lines.append(f'<font point-size="9">{escape(s.action)} in flight</font>')
    if graph.mode == "history" and node.steps:
        lines.append(f'<font point-size="9">step {" ".join(str(n) for n in node.steps)}</font>')
    if graph.mode == "history" and node.current:
        lines.append('<font point-size="9"><b>current</b></font>')
    if graph.mode == "diff" and node.status:
        lines.append(f'<font point-size="9">{node.status}</font>')
    fontcolor = STATUS["faded"][1] if graph.mode == "history" and not node.steps and not node.current else "black"
    return pydot.Node(
        s.id,
        label="<" + "<br/>".join(lines) + ">",
        shape="box",
        style=_q(",".join(styles)),
        fillcolor=_q(fill),
        color=_q(stroke),
        fontcolor=_q(fontcolor),
        penwidth=str(width),
        peripheries="2" if s.kind == "final" else "1",
        tooltip=_q(f"{s.id} ({s.kind}): {s.description}"),
    )


def _edge(graph: Graph, edge: Edge) -> pydot.Edge:
    st = EDGE[edge.category]
    color, width, style = st.color, st.width, st.line
    fontcolor = st.color
    if graph.mode == "diff":
        if edge.status:
            color = fontcolor = STATUS[edge.status][1]
            width = 2.5
            style = "dashed" if edge.status == "removed" else "bold"
        else:
            color = fontcolor = STATUS["faded"][1]
    elif graph.mode == "history":
        if edge.steps:
            color = fontcolor = PATH_COLOR
            width, style = 3.0, "bold"
        else:
            color = fontcolor = STATUS["faded"][1]
    lines = wrap_items([i.text for i in edge.items])
    if graph.mode == "diff" and edge.status:
        lines[0] = f"{edge.status}: {lines[0]}"
    # two loops on one state would overlap on its east side: failure loops go on top instead
    e = pydot.Edge(
        edge.source,
        edge.target,
        label=_q(*lines),
        color=_q(color),
        fontcolor=_q(fontcolor),
        style=style,
        penwidth=str(width),
        fontsize="9" if edge.category == "recorded" else "10",
        tooltip=_q("; ".join(i.transition.describe() for i in edge.items)),
    )
    if edge.source == edge.target and edge.category == "failure":
        # two loops on one state would overlap on its east side: failure loops go on top instead
        e.set("tailport", "n")
        e.set("headport", "n")
    return e


def _legend(graph: Graph) -> pydot.Node:
    rows = [
        f'<tr><td align="left"><font color="{EDGE[cat].color}"><b>{escape(text.split(":")[0])}</b></font>'
        f"{escape(':' + text.split(':', 1)[1])}</td></tr>"
        for cat, text in LEGEND
    ]
    rows.append('<tr><td align="left">dashed box: in flight, owns one durable apply/revoke item</td></tr>')
    rows.append('<tr><td align="left">double border: final (row removed, history kept)</td></tr>')
    if graph.mode == "history":
        rows.append(f'<tr><td align="left"><font color="{PATH_COLOR}"><b>(n)</b></font>: history step n</td></tr>')
    if graph.mode == "diff":
        rows.append(
            f'<tr><td align="left"><font color="{STATUS["added"][1]}"><b>added</b></font>, '
            f'<font color="{STATUS["removed"][1]}"><b>removed</b></font>, '
            f'<font color="{STATUS["changed"][1]}"><b>changed</b></font></td></tr>'
        )
    table = '<table border="0" cellborder="0" cellspacing="1" cellpadding="1">' + "".join(rows) + "</table>"
    return pydot.Node("__legend", label=f"<{table}>", shape="plaintext", fontsize="9")


def to_dot(graph: Graph) -> str:
    """The graph as DOT source (deterministic for a given graph)."""
    g = pydot.Dot(
        "eip_lifecycle",
        graph_type="digraph",
        rankdir="TB",
        label=_q(graph.title),
        labelloc="t",
        fontname=FONT,
        fontsize="14",
        nodesep="0.5",
        ranksep="0.9",
        newrank="true",
    )
    g.set_node_defaults(fontname=FONT, fontsize="11", margin=_q("0.15,0.06"))
    g.set_edge_defaults(fontname=FONT, fontsize="10", arrowsize="0.7")
    start_color = PATH_COLOR if graph.initial_steps else "black"
    g.add_node(pydot.Node(START, label=_q(""), shape="circle", style="filled", fillcolor="black", color="black",
                          width="0.15", height="0.15", fixedsize="true"))
    for node in graph.nodes:
        g.add_node(_node(graph, node))
    start_label = " ".join(f"({n})" for n in graph.initial_steps) + " create" if graph.initial_steps else ""
    g.add_edge(pydot.Edge(START, graph.initial, label=_q(start_label), color=_q(start_color),
                          fontcolor=_q(start_color), penwidth="3.0" if graph.initial_steps else "1.2"))
    for edge in graph.edges:
        g.add_edge(_edge(graph, edge))
    g.add_node(_legend(graph))
    return str(g.to_string())

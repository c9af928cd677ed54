"""Diagrams generated from the machine: structure, determinism, freshness check, diffs, history overlay."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pydot
import pytest

from eipflow import machine, table
from eipflow.diagrams import (
    GraphvizNotFound,
    InvalidSpec,
    MachineSpec,
    UnknownDiagramFormat,
    check_dir,
    current_spec,
    diff_graph,
    diff_specs,
    history_graph,
    load_spec,
    machine_graph,
    render_graph,
    text_files,
    work_enqueued,
    write_dir,
    write_graph,
)
from eipflow.diagrams import graphviz as gv
from eipflow.diagrams.renderers import to_dot, to_markdown, to_mermaid
from eipflow.diagrams.renderers.style import STATUS
from tests._support import parse_dot

needs_dot = pytest.mark.skipif(
    shutil.which("dot") is None, reason="Graphviz 'dot' is not installed (apt-get install graphviz)"
)

Row = tuple[str, str, str, str]  # (source, event, target, guard as displayed)


def expected_rows() -> set[Row]:
    """Every transition straight from the compiled table (not from the diagram code under test)."""
    return {(e.source, e.event, e.target, e.guard_text or ("else" if e.order else "")) for e in table.edges()}


def state_ids() -> set[str]:
    return {s.value for s in machine.EipMachine.states}


_ENTRY = re.compile(r"^(?:\(\d+\) )*(?P<event>[a-z_]+)(?: \[(?P<guard>[^\]]+)\])?$")


def parse_label(label: str, *, line_break: str) -> list[tuple[str, str, tuple[int, ...]]]:
    """A drawn edge label back into (event, guard, steps) entries."""
    out = []
    for line in label.split(line_break):
        for entry in line.split(", "):
            m = _ENTRY.match(entry.strip())
            assert m, f"unparseable label entry {entry!r} in {label!r}"
            steps = tuple(int(n) for n in re.findall(r"\((\d+)\)", entry))
            out.append((m["event"], m["guard"] or "", steps))
    return out


def dot_rows(src: str) -> tuple[set[str], set[Row], pydot.Dot]:
    graph = parse_dot(src)
    nodes = {n.get_name() for n in graph.get_nodes()} - {"__start", "__legend", "node", "edge", "graph"}
    rows: set[Row] = set()
    for e in graph.get_edges():
        if e.get_source() == "__start":
            continue
        for event, guard, _ in parse_label(e.get_label().strip('"'), line_break="\\n"):
            rows.add((e.get_source(), event, e.get_destination(), guard))
    return nodes, rows, graph


_MMD_EDGE = re.compile(r"^    (?P<src>\w+) (?:-->|-\.->|==>)\|\"(?P<label>[^\"]*)\"\| (?P<dst>\w+)$")
_MMD_NODE = re.compile(r"^    (?P<id>\w+)[\[(]")


def mermaid_rows(src: str) -> tuple[set[str], set[Row]]:
    nodes: set[str] = set()
    rows: set[Row] = set()
    for line in src.splitlines():
        if m := _MMD_EDGE.match(line):
            if m["src"] == "start__":
                continue
            for event, guard, _ in parse_label(m["label"], line_break="<br/>"):
                rows.add((m["src"], event, m["dst"], guard))
        elif (m := _MMD_NODE.match(line)) and " " not in line.split("[")[0].split("(")[0].strip():
            nodes.add(m["id"])
    return nodes - {"start__"}, rows


# -- the spec ---------------------------------------------------------------------------------------


def test_spec_has_every_state_event_and_transition_of_the_machine() -> None:
    """The extracted spec is the machine: states, events and transitions, in declaration order."""
    spec = current_spec()
    assert [s.id for s in spec.states] == [s.value for s in machine.EipMachine.states]
    assert {e.id for e in spec.events} == {e.id for e in machine.EipMachine.events}
    assert [(t.source, t.event, t.target, t.guards, t.order) for t in spec.transitions] == [
        (e.source, e.event, e.target, e.guards, e.order) for e in table.edges()
    ]
    kinds = {s.id: s.kind for s in spec.states}
    assert {k for k, v in kinds.items() if v == "in-flight"} == set(machine.IN_FLIGHT)
    assert {k for k, v in kinds.items() if v == "stable"} == set(machine.STABLE)
    assert kinds["deleted"] == "final"
    assert spec.initial == "detached"


@pytest.mark.parametrize(
    ("source", "target", "work"),
    [
        ("detached", "binding", "enqueue apply"),
        ("binding", "applying", "continue apply"),
        ("released", "applying", "enqueue apply"),
        ("releasing", "applying", "enqueue apply"),
        ("applying", "releasing", "enqueue revoke"),
        ("applying", "rolling_back", "enqueue revoke"),
        ("attached", "detaching", "enqueue revoke"),
        ("applying", "attached", ""),
        ("releasing", "released", ""),
        ("applying", "applying", ""),
        ("releasing", "releasing", ""),
    ],
)
def test_work_enqueued_follows_the_actions_each_state_owns(source: str, target: str, work: str) -> None:
    """Entering an in-flight state with other work enqueues it; binding→applying continues the attach's item."""
    assert work_enqueued(source, target) == work


def test_spec_json_round_trips_and_is_byte_stable() -> None:
    """The canonical JSON reads back to the same spec, and two exports are identical."""
    spec = current_spec()
    assert MachineSpec.from_dict(json.loads(spec.to_json())) == spec
    assert current_spec().to_json() == spec.to_json()
    data = json.loads(spec.to_json())
    assert data["format"] == 1
    assert {s["kind"] for s in data["states"]} == {"stable", "in-flight", "final"}


def test_load_spec_rejects_what_is_not_a_spec(tmp_path: Path) -> None:
    """Bad files give InvalidSpec naming the file and how to write a good one."""
    bad = tmp_path / "old.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidSpec, match="invalid JSON") as info:
        load_spec(bad)
    assert info.value.source == str(bad)
    bad.write_text(json.dumps({"format": 99}))
    with pytest.raises(InvalidSpec, match="--export-spec"):
        load_spec(bad)


# -- text formats, structurally ------------------------------------------------------------------------


def test_dot_has_every_state_and_transition_and_nothing_else() -> None:
    """Parsing the DOT back gives exactly the machine's states and transitions (merged edges expanded)."""
    nodes, rows, graph = dot_rows(text_files()["eip-lifecycle.dot"])
    assert nodes == state_ids()
    assert rows == expected_rows()
    styles = {n.get_name(): n.get("style").strip('"') for n in graph.get_nodes() if n.get_name() in state_ids()}
    assert all("dashed" in styles[s] for s in machine.IN_FLIGHT)
    assert not any("dashed" in styles[s] for s in machine.STABLE)
    starts = [e for e in graph.get_edges() if e.get_source() == "__start"]
    assert [e.get_destination() for e in starts] == ["detached"]


def test_dot_draws_categories_distinctly() -> None:
    """Release, failure, completion, intent and recorded edges each get their own colour."""
    _, _, graph = dot_rows(text_files()["eip-lifecycle.dot"])
    spec = current_spec()
    colour_by_category: dict[str, set[str]] = {}
    for e in graph.get_edges():
        if e.get_source() == "__start":
            continue
        events = {ev for ev, _, _ in parse_label(e.get_label().strip('"'), line_break="\\n")}
        categories = {
            spec.category(t) for t in spec.transitions
            if t.source == e.get_source() and t.target == e.get_destination() and t.event in events
        }
        assert len(categories) == 1, f"one arrow mixes categories {categories}"
        colour_by_category.setdefault(categories.pop(), set()).add(e.get("color"))
    assert {"intent", "release", "completion", "failure", "recorded"} <= set(colour_by_category)
    colours = [c for cs in colour_by_category.values() for c in cs]
    assert all(len(cs) == 1 for cs in colour_by_category.values())
    assert len(set(colours)) == len(colours)


def test_mermaid_has_every_state_and_transition_and_nothing_else() -> None:
    """The Mermaid flowchart names every state once and every transition once."""
    nodes, rows = mermaid_rows(text_files()["eip-lifecycle.mmd"])
    assert nodes == state_ids()
    assert rows == expected_rows()


def test_markdown_table_lists_every_transition_with_its_work() -> None:
    """One row per transition, with guard, target and the backend work it enqueues."""
    md = text_files()["transitions.md"]
    section = md.split("## Transitions", 1)[1]
    rows: set[Row] = set()
    work: dict[tuple[str, str, str], str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != 7 or not cells[0].startswith("`"):
            continue
        src, event, _, _, guard, target, enq = cells
        tgt = target.split()[0].strip("`")
        rows.add((src.strip("`"), event.strip("`"), tgt, "" if guard == "—" else guard.strip("`")))
        work[(src.strip("`"), event.strip("`"), tgt)] = "" if enq == "—" else enq
    assert rows == expected_rows()
    assert work[("detached", "attach", "binding")] == "enqueue apply"
    assert work[("binding", "proceed", "applying")] == "continue apply"
    assert work[("released", "vm_started", "applying")] == "enqueue apply"
    assert work[("attached", "vm_stopped", "releasing")] == "enqueue revoke"


def test_text_formats_are_deterministic() -> None:
    """Two generations are byte-identical (no ids, no set ordering)."""
    assert text_files() == text_files()


# -- images ------------------------------------------------------------------------------------------------


@needs_dot
def test_svg_parses_names_every_state_and_carries_the_dot_hash() -> None:
    """The SVG is XML, has a node titled after each state, and is stamped with its DOT source's hash."""
    graph = machine_graph(current_spec())
    svg = render_graph(graph, "svg")
    root = ET.fromstring(svg)
    ns = {"svg": "http://www.w3.org/2000/svg"}
    titles = {
        g.findtext("svg:title", namespaces=ns)
        for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "node"
    }
    assert state_ids() <= titles
    assert gv.read_stamp(svg) == gv.source_hash(to_dot(graph))


@needs_dot
def test_png_carries_the_dot_hash_in_a_text_chunk() -> None:
    """The PNG stays a valid PNG and its tEXt chunk holds the DOT hash."""
    graph = machine_graph(current_spec())
    png = render_graph(graph, "png")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png[12:16] == b"IHDR"
    assert gv.read_stamp(png) == gv.source_hash(to_dot(graph))


def test_images_without_dot_raise_a_typed_error_and_text_still_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No Graphviz: GraphvizNotFound says what to install, and the text files are written anyway."""
    monkeypatch.setattr(gv.shutil, "which", lambda _name: None)
    with pytest.raises(GraphvizNotFound, match="apt-get install graphviz") as info:
        write_dir(tmp_path)
    assert set(info.value.formats) == {str(tmp_path / "eip-lifecycle.svg"), str(tmp_path / "eip-lifecycle.png")}
    assert {p.name for p in tmp_path.iterdir()} == set(text_files())
    with pytest.raises(GraphvizNotFound):
        write_graph(machine_graph(current_spec()), tmp_path / "x.svg")
    assert write_graph(machine_graph(current_spec()), tmp_path / "x.mmd").read_text().startswith("---")


def test_unknown_extension_is_rejected(tmp_path: Path) -> None:
    """A file name we cannot write says which extensions work."""
    with pytest.raises(UnknownDiagramFormat, match=r"\.svg"):
        write_graph(machine_graph(current_spec()), tmp_path / "x.pdf")


# -- freshness check ------------------------------------------------------------------------------------------


@needs_dot
def test_check_fails_on_a_stale_file_and_passes_after_regeneration(tmp_path: Path) -> None:
    """A hand-edited table, a missing file and an image from an older machine are each named stale."""
    out = tmp_path / "diagrams"
    write_dir(out)
    assert check_dir(out) == []
    (out / "transitions.md").write_text((out / "transitions.md").read_text().replace("enqueue apply", "nothing"))
    (out / "eip-lifecycle.mmd").unlink()
    svg = (out / "eip-lifecycle.svg").read_bytes()
    (out / "eip-lifecycle.svg").write_bytes(svg.replace(gv.source_hash(text_files()["eip-lifecycle.dot"]).encode(),
                                                        b"0" * 64))
    stale = dict(check_dir(out))
    assert set(stale) == {str(out / n) for n in ("transitions.md", "eip-lifecycle.mmd", "eip-lifecycle.svg")}
    assert stale[str(out / "eip-lifecycle.mmd")] == "missing"
    assert "older machine" in stale[str(out / "eip-lifecycle.svg")]
    written = write_dir(out).written
    assert {p.name for p in written} == {"transitions.md", "eip-lifecycle.mmd", "eip-lifecycle.svg"}
    assert check_dir(out) == []
    assert write_dir(out).written == ()  # regenerating without a change touches nothing


def test_check_flags_everything_when_the_machine_changed(tmp_path: Path) -> None:
    """Files generated from an older machine (one transition fewer) are stale, images included."""
    spec = current_spec()
    older = MachineSpec(spec.name, spec.initial, spec.states, spec.events, spec.transitions[1:])
    out = tmp_path / "d"
    out.mkdir()
    for name, content in text_files(older).items():
        (out / name).write_text(content)
    (out / "eip-lifecycle.svg").write_text("<svg/>")
    stale = dict(check_dir(out))
    assert set(stale) == {str(out / n) for n in (*text_files(), "eip-lifecycle.svg", "eip-lifecycle.png")}
    assert "no source stamp" in stale[str(out / "eip-lifecycle.svg")]


# -- diffs ----------------------------------------------------------------------------------------------------


def _edited_old_spec() -> tuple[MachineSpec, dict[str, object]]:
    """An 'old' spec: without attached→releasing on vm_stopped, with an extra transition, one guard changed."""
    data = json.loads(current_spec().to_json())
    data["transitions"] = [
        t for t in data["transitions"]
        if not (t["source"] == "attached" and t["event"] == "vm_stopped" and t["target"] == "releasing")
    ]
    data["transitions"].append({"source": "applying", "event": "vm_stopped", "target": "detached",
                                "guards": [], "order": 1, "work": ""})
    for t in data["transitions"]:
        if (t["source"], t["event"], t["target"]) == ("binding", "proceed", "released"):
            t["guards"] = []
    return MachineSpec.from_dict(data), data


def test_diff_reports_added_removed_and_changed_transitions() -> None:
    """Against an edited old spec: the transition it lacks is added, its extra one removed, the guard changed."""
    old, _ = _edited_old_spec()
    delta = diff_specs(old, current_spec())
    assert [t.key for t in delta.added_transitions] == [("attached", "vm_stopped", "releasing")]
    assert [t.key for t in delta.removed_transitions] == [("applying", "vm_stopped", "detached")]
    assert [(o.guards, n.guards) for o, n in delta.changed_transitions] == [((), (("wants_attached", True),))]
    text = delta.to_text()
    assert "  + attached --vm_stopped--> releasing" in text.splitlines()
    assert "  - applying --vm_stopped [else]--> detached" in text.splitlines()
    assert "guard [else] → [wants_attached]" in text
    assert diff_specs(current_spec(), current_spec()).to_text() == "no differences"


def test_diff_graph_colours_added_green_and_removed_red() -> None:
    """The drawn diff: the added arrow in the 'added' colour, the removed one in the 'removed' colour."""
    old, _ = _edited_old_spec()
    src = to_dot(diff_graph(old, current_spec()))
    graph = parse_dot(src)
    colour = {
        (e.get_source(), e.get_destination()): (e.get("color").strip('"'), e.get_label())
        for e in graph.get_edges() if "added" in e.get_label() or "removed" in e.get_label()
    }
    assert colour[("attached", "releasing")][0] == STATUS["added"][1]
    assert "vm_stopped" in colour[("attached", "releasing")][1]
    assert colour[("applying", "detached")][0] == STATUS["removed"][1]
    mmd = to_mermaid(diff_graph(old, current_spec()))
    assert '"removed: vm_stopped [else]"| detached' in mmd


def test_diff_shows_added_and_removed_states() -> None:
    """A state only the old spec has is drawn as removed; one only the new spec has, as added."""
    spec = current_spec()
    data = json.loads(spec.to_json())
    data["states"] = [s for s in data["states"] if s["id"] != "released"]
    data["states"].append({"id": "quarantined", "name": "Quarantined", "kind": "stable", "action": None,
                           "description": "", "initial": False})
    delta = diff_specs(MachineSpec.from_dict(data), spec)
    assert [s.id for s in delta.added_states] == ["released"]
    assert [s.id for s in delta.removed_states] == ["quarantined"]
    nodes = {n.id: n.status for n in diff_graph(MachineSpec.from_dict(data), spec).nodes}
    assert nodes["released"] == "added" and nodes["quarantined"] == "removed" and nodes["attached"] == ""


# -- history overlay -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rec:
    event: str
    from_state: str
    to_state: str


def test_history_graph_numbers_the_path_and_highlights_the_current_state() -> None:
    """Each step lands on the arrow it took, in order; the last state is current; visited states are marked."""
    records = [
        Rec("create", "", "detached"),
        Rec("attach", "detached", "binding"),
        Rec("proceed", "binding", "applying"),
        Rec("vm_stopped", "applying", "applying"),
        Rec("apply_ok", "applying", "releasing"),
        Rec("revoke_ok", "releasing", "released"),
        Rec("teleported", "released", "attached"),  # not in this machine: still drawn, flagged unknown
    ]
    graph = history_graph(current_spec(), records)
    assert graph.initial_steps == (1,)
    taken = sorted((n, e.source, item.transition.event, e.target, e.category)
                   for e in graph.edges for item in e.items for n in item.steps)
    assert [(s, ev, t) for _, s, ev, t, _ in taken] == [(r.from_state, r.event, r.to_state) for r in records[1:]]
    assert [n for n, *_ in taken] == [2, 3, 4, 5, 6, 7]
    assert taken[-1][-1] == "unknown"
    nodes = {n.id: n for n in graph.nodes}
    assert [n.id for n in graph.nodes if n.current] == ["attached"]
    assert nodes["applying"].steps == (3, 4) and nodes["deleted"].steps == ()

    src = to_dot(graph)
    parsed = parse_dot(src)
    numbered = sorted(
        (step, e.get_source(), ev, e.get_destination())
        for e in parsed.get_edges() if e.get_source() != "__start"
        for ev, _, steps in parse_label(e.get_label().strip('"'), line_break="\\n") for step in steps
    )
    assert [(s, ev, t) for _, s, ev, t in numbered] == [(r.from_state, r.event, r.to_state) for r in records[1:]]
    fills = {n.get_name(): n.get("fillcolor").strip('"') for n in parsed.get_nodes() if n.get("fillcolor")}
    assert fills["attached"] == STATUS["current"][0]
    assert fills["binding"] == STATUS["visited"][0]
    assert fills["deleted"] == STATUS["faded"][0]
    assert "class attached current" in to_mermaid(graph)


def test_markdown_renderer_escapes_pipes() -> None:
    """A guard or description with '|' cannot break the table."""
    spec = current_spec()
    s0 = spec.states[0]
    odd = MachineSpec(spec.name, spec.initial, (type(s0)(s0.id, s0.name, s0.kind, s0.action, "a | b", True),),
                      spec.events, ())
    assert "a \\| b" in to_markdown(odd)

"""``eipflow diagram`` and ``eipflow eip history --diagram`` through ``main(argv)``."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from eipflow import Eipflow, InMemoryDataplane
from eipflow.cli import main
from eipflow.diagrams import current_spec, text_files
from eipflow.diagrams.renderers.style import STATUS
from tests._support import parse_dot

needs_dot = pytest.mark.skipif(
    shutil.which("dot") is None, reason="Graphviz 'dot' is not installed (apt-get install graphviz)"
)


@needs_dot
def test_diagram_writes_every_format_then_check_passes_fails_and_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out writes all six files; --check passes, names a stale file (exit 1), passes after regenerating."""
    out = tmp_path / "diagrams"
    assert main(["diagram", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {
        "eip-lifecycle.mmd", "eip-lifecycle.dot", "eip-lifecycle.svg", "eip-lifecycle.png", "transitions.md",
        "spec.json",
    }
    assert main(["diagram", "--check", "--dir", str(out)]) == 0
    capsys.readouterr()

    (out / "eip-lifecycle.dot").write_text((out / "eip-lifecycle.dot").read_text() + "// edited\n")
    assert main(["diagram", "--check", "--dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{out / 'eip-lifecycle.dot'} (differs from the current machine)" in err
    assert "eip-lifecycle.mmd" not in err
    assert f"eipflow diagram --out {out}" in err

    assert main(["diagram", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out / 'eip-lifecycle.dot'}"
    assert main(["diagram", "--check", "--dir", str(out)]) == 0


def test_format_prints_one_text_format_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """--format mermaid/dot/md/json print exactly what the files would hold."""
    files = text_files()
    for fmt, name in (("mermaid", "eip-lifecycle.mmd"), ("dot", "eip-lifecycle.dot"), ("md", "transitions.md"),
                      ("json", "spec.json")):
        assert main(["diagram", "--format", fmt]) == 0
        assert capsys.readouterr().out == files[name]


def test_conflicting_options_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """--check and --format together: exit 2 naming both."""
    assert main(["diagram", "--check", "--format", "dot"]) == 2
    assert "--format, --check" in capsys.readouterr().err


def test_export_spec_then_diff_reports_added_and_removed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An exported spec edited by hand: --diff prints the added and removed transitions, --json as one document."""
    spec_file = tmp_path / "old.json"
    assert main(["diagram", "--export-spec", str(spec_file)]) == 0
    data = json.loads(spec_file.read_text())
    assert data == json.loads(current_spec().to_json())
    data["transitions"] = [t for t in data["transitions"] if (t["source"], t["event"]) != ("released", "delete")]
    data["transitions"].append({"source": "attached", "event": "apply_failed", "target": "detached",
                                "guards": [{"name": "wants_deleted", "expected": False}], "order": 0, "work": ""})
    spec_file.write_text(json.dumps(data))
    capsys.readouterr()

    assert main(["diagram", "--diff", str(spec_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  + released --delete--> deleted" in lines
    assert "  - attached --apply_failed [not wants_deleted]--> detached" in lines

    drawn = tmp_path / "review.mmd"
    assert main(["--json", "diagram", "--diff", str(spec_file), "--out", str(drawn)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(t["source"], t["event"], t["target"]) for t in doc["transitions"]["added"]] == [
        ("released", "delete", "deleted")
    ]
    assert [(t["source"], t["event"], t["target"]) for t in doc["transitions"]["removed"]] == [
        ("attached", "apply_failed", "detached")
    ]
    assert doc["drawn"] == str(drawn)
    mmd = drawn.read_text()
    assert re.search(r'released -->\|"added: delete"\| deleted', mmd) or 'released ==>|"added: delete"| deleted' in mmd
    assert 'attached -.->|"removed: apply_failed [not wants_deleted]"| detached' in mmd


def test_diff_of_an_unreadable_spec_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that is not a spec is bad input (exit 2) with a hint."""
    bad = tmp_path / "old.json"
    bad.write_text("[]")
    assert main(["diagram", "--diff", str(bad)]) == 2
    assert "--export-spec" in capsys.readouterr().err


def _attach_then_stop(url: str) -> tuple[str, list[tuple[str, str, str]]]:
    """A real attach and VM stop on SQLite; returns the EIP and its history as (from, event, to)."""
    flow = Eipflow.open(url, InMemoryDataplane(), owner="test")
    try:
        eip = flow.create_eip("203.0.113.7")
        flow.attach(eip.uuid, nic="nic-1", guest_ip="10.0.0.5", vm="vm-1", host="host-a")
        flow.vm_stopped("vm-1")
        assert flow.get_eip(eip.uuid).state == "released"
        return eip.uuid, [(r.from_state, r.event, r.to_state) for r in flow.history(eip.uuid)]
    finally:
        flow.close()


def test_history_diagram_numbers_the_real_path_in_order(sqlite_url: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """eip history --diagram FILE.dot: each recorded step is numbered on its arrow, the final state highlighted."""
    uuid, steps = _attach_then_stop(sqlite_url)
    assert [s[1] for s in steps][:2] == ["create", "attach"]
    assert steps[-1][2] == "released"
    path = tmp_path / "story.dot"
    assert main(["--db", sqlite_url, "eip", "history", uuid, "--diagram", str(path)]) == 0
    out = capsys.readouterr()
    assert "attach" in out.out and "released" in out.out  # the timeline table is still printed
    assert f"drew {path}" in out.err

    graph = parse_dot(path.read_text())
    numbered: list[tuple[int, str, str, str]] = []
    for e in graph.get_edges():
        label = e.get_label().strip('"')
        for line in label.split("\\n"):
            for entry in line.split(", "):
                nums = [int(n) for n in re.findall(r"\((\d+)\)", entry)]
                event = re.sub(r"^(?:\(\d+\) )*", "", entry).split(" [")[0]
                numbered += [(n, e.get_source(), event, e.get_destination()) for n in nums]
    numbered.sort()
    assert [n for n, *_ in numbered] == list(range(1, len(steps) + 1))
    assert numbered[0][1:] == ("__start", "create", "detached")
    assert [x[1:] for x in numbered[1:]] == steps[1:]
    fills = {n.get_name(): n.get("fillcolor") for n in graph.get_nodes() if n.get("fillcolor")}
    assert fills["released"].strip('"') == STATUS["current"][0]
    assert fills["attached"].strip('"') == STATUS["visited"][0]
    assert fills["rolling_back"].strip('"') == STATUS["faded"][0]


def test_history_diagram_in_mermaid_and_json_output(sqlite_url: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """--json keeps stdout one JSON document; the .mmd marks the current state and the path."""
    uuid, steps = _attach_then_stop(sqlite_url)
    path = tmp_path / "story.mmd"
    assert main(["--db", sqlite_url, "--json", "eip", "history", uuid, "--diagram", str(path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(r["from_state"], r["event"], r["to_state"]) for r in doc] == steps
    mmd = path.read_text()
    assert "class released current" in mmd
    assert '"(2) attach"| binding' in mmd


@needs_dot
def test_history_diagram_as_svg(sqlite_url: str, tmp_path: Path) -> None:
    """The SVG variant renders (format chosen by extension)."""
    uuid, _ = _attach_then_stop(sqlite_url)
    path = tmp_path / "story.svg"
    assert main(["--db", sqlite_url, "eip", "history", uuid, "--diagram", str(path)]) == 0
    assert b"(2) attach" in path.read_bytes()


def test_history_diagram_rejects_an_unknown_extension(sqlite_url: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """.pdf is not a format we write: exit 2, nothing drawn."""
    uuid, _ = _attach_then_stop(sqlite_url)
    assert main(["--db", sqlite_url, "eip", "history", uuid, "--diagram", str(tmp_path / "x.pdf")]) == 2
    assert ".mmd" in capsys.readouterr().err
    assert not (tmp_path / "x.pdf").exists()

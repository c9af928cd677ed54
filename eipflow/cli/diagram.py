"""``eipflow diagram``: the lifecycle drawn from the machine class, checked, exported and diffed.

The diagrams package (and pydot) is imported inside the commands, so other commands start fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from ..values import TransitionRecord
from ._context import State, emit, pass_state

__all__ = ["draw_history", "register"]

TEXT_FORMATS = ("mermaid", "dot", "md", "json")


@click.command("diagram")
@click.option("--format", "fmt", type=click.Choice(TEXT_FORMATS), default=None,
              help="print one text format on stdout instead of writing files (json = the spec)")
@click.option("--out", "--dir", "out", type=click.Path(path_type=Path), default=None,
              help="directory to write or --check [default: diagrams]; with --diff, a .svg/.png/.mmd/.dot file")
@click.option("--check", is_flag=True, help="exit non-zero naming every file that differs from the machine")
@click.option("--export-spec", "export_spec", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="write the machine as canonical JSON to FILE ('-' for stdout)")
@click.option("--diff", "old_spec", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="compare the machine with an older --export-spec file (draw it with --out FILE)")
@pass_state
def diagram(
    state: State, fmt: str | None, out: Path | None, check: bool, export_spec: str | None, old_spec: Path | None
) -> None:
    """Draw the EIP lifecycle (Mermaid, DOT, SVG, PNG, Markdown table, JSON spec).

    Without options, writes every format into diagrams/ (SVG/PNG need Graphviz 'dot').
    """
    from .. import diagrams as d

    chosen = [name for name, on in (("--format", fmt), ("--check", check), ("--export-spec", export_spec),
                                    ("--diff", old_spec)) if on]
    if len(chosen) > 1:
        raise click.UsageError(f"use one of {', '.join(chosen)} at a time")
    spec = d.current_spec()

    if fmt is not None:
        if out is not None:
            raise click.UsageError("--format prints to stdout; drop --out (or drop --format to write files)")
        text = {"mermaid": lambda: d.text_files(spec)["eip-lifecycle.mmd"],
                "dot": lambda: d.text_files(spec)["eip-lifecycle.dot"],
                "md": lambda: d.text_files(spec)["transitions.md"],
                "json": spec.to_json}[fmt]()
        click.echo(text, nl=False)
        return

    if export_spec is not None:
        if export_spec == "-":
            click.echo(spec.to_json(), nl=False)
        else:
            Path(export_spec).write_text(spec.to_json(), encoding="utf-8")
            emit(state, {"written": [export_spec]}, f"wrote {export_spec}")
        return

    if old_spec is not None:
        old = d.load_spec(old_spec)
        delta = d.diff_specs(old, spec)
        data = delta.to_dict()
        if out is not None:
            d.write_graph(d.diff_graph(old, spec), out)
            data["drawn"] = str(out)
        emit(state, data, delta.to_text() + (f"\ndrew {out}" if out is not None else ""))
        return

    directory = out if out is not None else Path(d.DEFAULT_DIR)
    if check:
        stale = d.check_dir(directory, spec)
        if stale:
            raise d.DiagramsStale(str(directory), stale)
        emit(state, {"directory": str(directory), "stale": []}, f"{directory}: up to date")
        return

    result = d.write_dir(directory, spec)
    written = [str(p) for p in result.written]
    emit(state, {"directory": str(directory), "written": written},
         "\n".join(f"wrote {p}" for p in written) if written else f"{directory}: up to date")


def draw_history(records: Sequence[TransitionRecord], path: str | Path, uuid: str) -> Path:
    """Draw the machine with one EIP's path numbered and its current state highlighted.

    The format follows the extension (``.mmd``, ``.dot``, ``.svg``, ``.png``).
    """
    from .. import diagrams as d

    written = d.write_graph(d.history_graph(d.current_spec(), records, title=f"EIP {uuid}: path through the lifecycle"),
                            path)
    click.echo(f"drew {written}", err=True)  # stdout stays the timeline (or the one JSON document)
    return written


def register(root: click.Group) -> None:
    """Add this module's commands to the root group."""
    root.add_command(diagram)

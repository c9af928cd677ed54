"""The committed ``diagrams/`` directory: what it holds, writing it, and checking it is fresh.

Text files (``.mmd``, ``.dot``, ``.md``, ``.json``) are compared byte for byte. ``.svg`` and ``.png``
are compared by the DOT hash stamped into them (see :mod:`.graphviz`), so the check gives the same
answer with any Graphviz version, or none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from . import graphviz
from .errors import GraphvizNotFound, UnknownDiagramFormat
from .graph import Graph, machine_graph
from .renderers import to_dot, to_markdown, to_mermaid
from .spec import MachineSpec, current_spec

__all__ = [
    "DEFAULT_DIR",
    "GRAPH_FORMATS",
    "IMAGE_FILES",
    "TEXT_FILES",
    "WriteResult",
    "check_dir",
    "render_graph",
    "text_files",
    "write_dir",
    "write_graph",
]

DEFAULT_DIR: Final = "diagrams"
BASENAME: Final = "eip-lifecycle"
DOT_FILE: Final = f"{BASENAME}.dot"
TEXT_FILES: Final = (f"{BASENAME}.mmd", DOT_FILE, "transitions.md", "spec.json")
IMAGE_FILES: Final = (f"{BASENAME}.svg", f"{BASENAME}.png")

#: file extension -> format for one-off drawings (history, diff)
GRAPH_FORMATS: Final = {".mmd": "mermaid", ".mermaid": "mermaid", ".dot": "dot", ".gv": "dot", ".svg": "svg",
                        ".png": "png"}


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Files written (unchanged files are left alone and not listed)."""

    written: tuple[Path, ...]


def text_files(spec: MachineSpec | None = None) -> dict[str, str]:
    """Every text file of ``diagrams/`` as the machine generates it now, by file name."""
    spec = spec or current_spec()
    graph = machine_graph(spec)
    return {
        f"{BASENAME}.mmd": to_mermaid(graph),
        DOT_FILE: to_dot(graph),
        "transitions.md": to_markdown(spec),
        "spec.json": spec.to_json(),
    }


def write_dir(directory: str | Path = DEFAULT_DIR, spec: MachineSpec | None = None) -> WriteResult:
    """Write all formats into ``directory`` (created if needed); unchanged files are not rewritten.

    Raises:
        GraphvizNotFound: ``dot`` is missing; the text files were written, the images were not.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    texts = text_files(spec)
    written: list[Path] = []
    for name, content in texts.items():
        if _write_if_changed(out / name, content.encode("utf-8")):
            written.append(out / name)
    if not graphviz.dot_available():
        raise GraphvizNotFound([str(out / n) for n in IMAGE_FILES], [str(out / n) for n in texts])
    digest = graphviz.source_hash(texts[DOT_FILE])
    for name in IMAGE_FILES:
        path = out / name
        # an image already rendered from this exact DOT is kept: re-rendering only churns bytes
        if path.exists() and graphviz.read_stamp(path.read_bytes()) == digest:
            continue
        path.write_bytes(graphviz.render(texts[DOT_FILE], name.rsplit(".", 1)[1]))
        written.append(path)
    return WriteResult(tuple(written))


def _write_if_changed(path: Path, data: bytes) -> bool:
    if path.exists() and path.read_bytes() == data:
        return False
    path.write_bytes(data)
    return True


def check_dir(directory: str | Path = DEFAULT_DIR, spec: MachineSpec | None = None) -> list[tuple[str, str]]:
    """Stale files in ``directory`` as ``(path, reason)``; empty when everything is fresh.

    Other files (``README.md``) are not looked at.
    """
    out = Path(directory)
    texts = text_files(spec)
    stale: list[tuple[str, str]] = []
    for name, content in texts.items():
        path = out / name
        if not path.exists():
            stale.append((str(path), "missing"))
        elif path.read_bytes() != content.encode("utf-8"):
            stale.append((str(path), "differs from the current machine"))
    digest = graphviz.source_hash(texts[DOT_FILE])
    for name in IMAGE_FILES:
        path = out / name
        if not path.exists():
            stale.append((str(path), "missing"))
            continue
        stamp = graphviz.read_stamp(path.read_bytes())
        if stamp is None:
            stale.append((str(path), "not rendered by eipflow diagram (no source stamp)"))
        elif stamp != digest:
            stale.append((str(path), "rendered from an older machine"))
    return stale


def render_graph(graph: Graph, fmt: str) -> bytes:
    """One graph as ``mermaid``, ``dot``, ``svg`` or ``png`` bytes.

    Raises:
        UnknownDiagramFormat: another format.
        GraphvizNotFound: SVG/PNG without ``dot``.
    """
    if fmt == "mermaid":
        return to_mermaid(graph).encode("utf-8")
    if fmt == "dot":
        return to_dot(graph).encode("utf-8")
    if fmt in ("svg", "png"):
        return graphviz.render(to_dot(graph), fmt)
    raise UnknownDiagramFormat(fmt, sorted(set(GRAPH_FORMATS.values())))


def write_graph(graph: Graph, path: str | Path) -> Path:
    """Write one graph, the format chosen by the file extension (``.mmd``, ``.dot``, ``.svg``, ``.png``).

    Raises:
        UnknownDiagramFormat: an extension we do not write.
        GraphvizNotFound: ``.svg``/``.png`` without ``dot``.
    """
    target = Path(path)
    fmt = GRAPH_FORMATS.get(target.suffix.lower())
    if fmt is None:
        raise UnknownDiagramFormat(target.suffix or target.name, sorted(GRAPH_FORMATS))
    data = render_graph(graph, fmt)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target

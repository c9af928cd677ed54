"""``eipflow eip …``: create, show, list, history, delete."""

from __future__ import annotations

from collections.abc import Sequence

import click

from ..validation import printable
from ..values import Eip, TransitionRecord
from ._context import State, emit, pass_state

SHOW_FIELDS = (
    "uuid", "name", "vip", "state", "version", "desired", "vm_nic_uuid", "guest_ip", "vm_uuid",
    "host_uuid", "applied_host", "work_id", "last_error", "created_at", "updated_at",
)


def show_text(eip: Eip) -> str:
    data = eip.to_dict()
    return "\n".join(f"{k:13} {'-' if data[k] is None else data[k]}" for k in SHOW_FIELDS)


def list_text(eips: list[Eip]) -> str:
    if not eips:
        return "no EIPs"
    rows = [("UUID", "VIP", "STATE", "VER", "GUEST IP", "VM", "HOST")]
    rows += [
        (e.uuid, e.vip, e.state, str(e.version), e.guest_ip or "-", e.vm_uuid or "-",
         e.applied_host or e.host_uuid or "-")
        for e in eips
    ]
    return _table(rows)


def history_text(records: list[TransitionRecord]) -> str:
    rows = [("TIME", "EVENT", "FROM → TO", "VER", "ACTOR", "DETAILS")]
    for r in records:
        details = " ".join(f"{k}={v}" for k, v in sorted(r.details.items()))
        rows.append((r.at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], r.event, f"{r.from_state or '∅'} → {r.to_state}",
                     str(r.version), r.actor or "-", details))
    return _table(rows)


def _table(rows: Sequence[Sequence[str]]) -> str:
    rows = [[printable(c) for c in r] for r in rows]  # escaped before measuring, so columns still line up
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


@click.group("eip")
def eip_group() -> None:
    """Manage EIPs."""


@eip_group.command("create")
@click.option("--vip", required=True, help="the public IP address")
@click.option("--name", default=None)
@click.option("--op-id", default=None, help="idempotency key")
@pass_state
def create(state: State, vip: str, name: str | None, op_id: str | None) -> None:
    """Allocate an EIP (prints its uuid)."""
    eip = state.flow.create_eip(vip, name, op_id=op_id)
    emit(state, eip.to_dict(), eip.uuid)


@eip_group.command("show")
@click.argument("uuid")
@pass_state
def show(state: State, uuid: str) -> None:
    """Show one EIP."""
    from .. import validation as v

    eip = state.reader().require(v.eip_uuid(uuid))
    emit(state, eip.to_dict(), show_text(eip))


def _check_state(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from ..machine import STATE_DESCRIPTIONS  # only when filtering: the machine library is not free to import

    if value not in STATE_DESCRIPTIONS:
        raise click.BadParameter(f"{value!r} is not a state; one of: {', '.join(STATE_DESCRIPTIONS)}")
    return value


_LIMIT = click.option("--limit", type=click.IntRange(min=1), default=None,
                      help="at most this many rows (page with --after) [default: all]")


@eip_group.command("list")
@click.option("--state", "state_filter", default=None, callback=_check_state, help="only EIPs in this state")
@click.option("--vm", default=None, help="only EIPs bound to this VM")
@_LIMIT
@click.option("--after", default=None, metavar="UUID",
              help="start after this EIP (the last uuid of the previous page; list order is creation time)")
@pass_state
def list_(state: State, state_filter: str | None, vm: str | None, limit: int | None, after: str | None) -> None:
    """List EIPs, oldest first.

    Page through many with --limit N, then --after LAST_UUID until a page is shorter than N.
    """
    from ._read import eips_page

    eips = eips_page(state.reader(), state=state_filter, vm_uuid=vm, limit=limit, after=after)
    emit(state, [e.to_dict() for e in eips], list_text(eips))


@eip_group.command("history")
@click.argument("uuid")
@click.option("--diagram", "diagram_file", type=click.Path(dir_okay=False), default=None,
              help="also draw the path taken on the machine, by extension: FILE.mmd, .dot, .svg or .png")
@_LIMIT
@click.option("--after", "after_version", type=click.IntRange(min=0), default=None, metavar="VERSION",
              help="only transitions after this version (the last VER of the previous page)")
@pass_state
def history(state: State, uuid: str, diagram_file: str | None, limit: int | None, after_version: int | None) -> None:
    """Print the EIP's timeline, oldest first (kept after deletion, until pruned)."""
    from ._read import history_page

    if diagram_file is not None:
        _check_diagram_target(diagram_file)  # before anything is printed
    records = history_page(state.reader(), uuid, limit=limit, after=after_version)
    emit(state, [r.to_dict() for r in records], history_text(records))
    if diagram_file is not None:
        from .diagram import draw_history

        draw_history(records, diagram_file, uuid)


def _check_diagram_target(path: str) -> None:
    from pathlib import Path

    from ..diagrams import GraphvizNotFound, dot_available
    from ..diagrams.files import GRAPH_FORMATS

    suffix = Path(path).suffix.lower()
    fmt = GRAPH_FORMATS.get(suffix)
    if fmt is None:
        raise click.BadParameter(f"{path!r}: unknown format {suffix or '(no extension)'}; use one of "
                                 f"{', '.join(sorted(GRAPH_FORMATS))}", param_hint="'--diagram'")
    if fmt in ("svg", "png") and not dot_available():
        raise GraphvizNotFound([fmt])


@eip_group.command("delete")
@click.argument("uuid")
@click.option("--op-id", default=None, help="idempotency key")
@click.option("--no-wait", is_flag=True, help="record the intent only; a worker does the revoke")
@pass_state
def delete(state: State, uuid: str, op_id: str | None, no_wait: bool) -> None:
    """Delete an EIP (detaching it first if needed)."""
    eip = state.flow.delete_eip(uuid, op_id=op_id, wait=not no_wait)
    emit(state, eip.to_dict(), f"{eip.uuid} {eip.state}")


def register(root: click.Group) -> None:
    root.add_command(eip_group)

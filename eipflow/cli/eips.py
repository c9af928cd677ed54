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
    eip = state.flow.get_eip(uuid)
    emit(state, eip.to_dict(), show_text(eip))


@eip_group.command("list")
@click.option("--state", "state_filter", default=None, help="only EIPs in this state")
@click.option("--vm", default=None, help="only EIPs bound to this VM")
@pass_state
def list_(state: State, state_filter: str | None, vm: str | None) -> None:
    """List EIPs."""
    eips = state.flow.list_eips(state=state_filter, vm_uuid=vm)
    emit(state, [e.to_dict() for e in eips], list_text(eips))


@eip_group.command("history")
@click.argument("uuid")
@click.option("--diagram", "diagram_file", type=click.Path(dir_okay=False), default=None,
              help="also draw the path taken on the machine, by extension: FILE.mmd, .dot, .svg or .png")
@pass_state
def history(state: State, uuid: str, diagram_file: str | None) -> None:
    """Print the EIP's timeline (kept after deletion)."""
    records = state.flow.history(uuid)
    emit(state, [r.to_dict() for r in records], history_text(records))
    if diagram_file is not None:
        from .diagram import draw_history

        draw_history(records, diagram_file, uuid)


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

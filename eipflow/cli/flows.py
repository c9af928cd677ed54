"""``eipflow attach|detach|vm …|host down|dataplane list``."""

from __future__ import annotations

import click

from ..values import Eip
from ._context import State, emit, exit_partial, pass_state
from ._partial import rules_per_host
from .eips import _table, show_text

_OP = click.option("--op-id", default=None, help="idempotency key: a repeated call with it does the work once")
_NO_WAIT = click.option("--no-wait", is_flag=True, help="record the intent only; a worker runs the backend work")


def _many(state: State, eips: list[Eip], what: str) -> None:
    text = "\n".join(f"{e.uuid} {e.state}" for e in eips) or f"no EIPs bound to that VM ({what} recorded)"
    emit(state, [e.to_dict() for e in eips], text)


@click.command("attach")
@click.argument("uuid")
@click.option("--nic", required=True, help="VM NIC id (opaque)")
@click.option("--guest-ip", required=True, help="the NIC's guest IP")
@click.option("--vm", required=True, help="VM id (opaque)")
@click.option("--host", required=True, help="the host the VM runs on")
@_OP
@_NO_WAIT
@pass_state
def attach(
    state: State, uuid: str, nic: str, guest_ip: str, vm: str, host: str, op_id: str | None, no_wait: bool
) -> None:
    """Attach an EIP to a VM NIC's guest IP; returns when attached (exit 5 if rolled back)."""
    eip = state.flow.attach(uuid, nic=nic, guest_ip=guest_ip, vm=vm, host=host, op_id=op_id, wait=not no_wait)
    emit(state, eip.to_dict(), show_text(eip))


@click.command("detach")
@click.argument("uuid")
@_OP
@_NO_WAIT
@pass_state
def detach(state: State, uuid: str, op_id: str | None, no_wait: bool) -> None:
    """Detach an EIP (deferred to the in-flight backend call if one runs)."""
    eip = state.flow.detach(uuid, op_id=op_id, wait=not no_wait)
    emit(state, eip.to_dict(), show_text(eip))


@click.group("vm")
def vm_group() -> None:
    """Tell eipflow what happened to a VM."""


@vm_group.command("stop")
@click.argument("vm")
@_OP
@_NO_WAIT
@pass_state
def vm_stop(state: State, vm: str, op_id: str | None, no_wait: bool) -> None:
    """The VM stopped: release its EIPs."""
    _many(state, state.flow.vm_stopped(vm, op_id=op_id, wait=not no_wait), "stop")


@vm_group.command("start")
@click.argument("vm")
@click.option("--host", required=True)
@_OP
@_NO_WAIT
@pass_state
def vm_start(state: State, vm: str, host: str, op_id: str | None, no_wait: bool) -> None:
    """The VM started on HOST: apply its EIPs there."""
    _many(state, state.flow.vm_started(vm, host, op_id=op_id, wait=not no_wait), "start")


@vm_group.command("migrate")
@click.argument("vm")
@click.option("--to", "to_host", required=True)
@_OP
@_NO_WAIT
@pass_state
def vm_migrate(state: State, vm: str, to_host: str, op_id: str | None, no_wait: bool) -> None:
    """The VM moved to another host: move its EIPs."""
    _many(state, state.flow.vm_migrated(vm, to_host, op_id=op_id, wait=not no_wait), "migrate")


@click.group("host")
def host_group() -> None:
    """Tell eipflow what happened to a host."""


@host_group.command("down")
@click.argument("host")
@_OP
@_NO_WAIT
@pass_state
def host_down(state: State, host: str, op_id: str | None, no_wait: bool) -> None:
    """HOST is down or being evacuated: its VMs stopped there; release all their EIPs (batched)."""
    eips = state.flow.host_down(host, op_id=op_id, wait=not no_wait)
    text = "\n".join(f"{e.uuid} {e.state}" for e in eips) or "no EIPs on that host's VMs (host down recorded)"
    emit(state, [e.to_dict() for e in eips], text)


@click.group("dataplane")
def dataplane_group() -> None:
    """Inspect the backend's rules."""


@dataplane_group.command("list")
@click.option("--host", default=None)
@pass_state
def dataplane_list(state: State, host: str | None) -> None:
    """Rules the backend reports as realized (exit 6 when some hosts could not be asked)."""
    rules, hosts = rules_per_host(state.read_flow(), host)
    rows = [("HOST", "EIP", "VIP", "GUEST IP", "NIC")]
    rows += [(r.host_uuid, r.eip_uuid, r.vip, r.guest_ip, r.vm_nic_uuid) for r in rules]
    emit(
        state,
        [{"host_uuid": r.host_uuid, "eip_uuid": r.eip_uuid, "vip": r.vip, "guest_ip": r.guest_ip,
          "vm_nic_uuid": r.vm_nic_uuid} for r in rules],
        _table(rows) if rules else "no rules",
    )
    unreachable = {h: why for h, why in hosts.items() if why is not None}
    if unreachable:
        exit_partial(unreachable, len(hosts))


def register(root: click.Group) -> None:
    for command in (attach, detach, vm_group, host_group, dataplane_group):
        root.add_command(command)

"""Addresses through the public API: one canonical form everywhere, refused classes, and cross-EIP rules.

Every refusal is checked to change nothing: rows, history, work items, VM facts and rules are compared
before and after (on every configured database).
"""

from __future__ import annotations

from typing import Any

import pytest

from eipflow import AddressInUse, Eipflow, GuestIpInUse, InMemoryDataplane, InvalidAddress, VipInUse


def snapshot(flow: Eipflow, backend: InMemoryDataplane) -> tuple[Any, ...]:
    """Everything a refused request must leave as it was."""
    return (
        [e.to_dict() for e in flow.list_eips()],
        [r.to_dict() for r in flow.store.all_history()],
        [w.to_dict() for w in flow.work_items()],
        flow.vm("vm-1"),
        backend.rules(),
    )


def attach(flow: Eipflow, uuid: str, guest_ip: str, n: int = 1) -> Any:
    return flow.attach(uuid, nic=f"nic-{n}", guest_ip=guest_ip, vm=f"vm-{n}", host="h1")


def test_every_spelling_is_stored_compared_and_sent_in_one_form(flow: Eipflow, backend: InMemoryDataplane) -> None:
    """Upper case and zero runs are canonicalised before the row, the unique constraints and the backend see them."""
    eip = flow.create_eip("2001:DB8:0:0::A")
    assert eip.vip == "2001:db8::a"
    with pytest.raises(VipInUse):
        flow.create_eip("2001:db8::a")
    attached = attach(flow, eip.uuid, "FD00:0::5")
    assert attached.guest_ip == "fd00::5"
    assert [(r.vip, r.guest_ip) for r in backend.rules()] == [("2001:db8::a", "fd00::5")]
    other = flow.create_eip("2001:db8::b")
    before = snapshot(flow, backend)
    with pytest.raises(GuestIpInUse):
        attach(flow, other.uuid, "fd00:0:0::5", n=2)
    assert snapshot(flow, backend) == before


@pytest.mark.parametrize("vip", ["2001:db8::a%x", "fe80::1%pub0", "fe80::1%x;flush ruleset", "127.0.0.1",
                                 "255.255.255.255", "::ffff:203.0.113.10", "169.254.0.9", "fe80::1", "0.0.0.0",
                                 "224.0.0.5", "240.1.2.3"])
def test_refused_vips_change_nothing(flow: Eipflow, backend: InMemoryDataplane, vip: str) -> None:
    flow.create_eip("2001:db8::a")
    before = snapshot(flow, backend)
    with pytest.raises(InvalidAddress) as info:
        flow.create_eip(vip)
    assert info.value.field == "vip"
    assert snapshot(flow, backend) == before


@pytest.mark.parametrize(("vip", "guest", "why"), [
    ("203.0.113.10", "fd00::5", "IPv6 address but the EIP's VIP"),
    ("2001:db8::a", "192.0.2.10", "IPv4 address but the EIP's VIP"),
    ("203.0.113.10", "203.0.113.10", "own VIP"),
    ("203.0.113.10", "127.0.0.1", "loopback"),
    ("2001:db8::a", "fd00::5%a", "zone ID"),
    ("203.0.113.10", "169.254.169.254", "link-local"),
])
def test_refused_guest_ips_change_nothing(flow: Eipflow, backend: InMemoryDataplane, vip: str, guest: str,
                                          why: str) -> None:
    eip = flow.create_eip(vip)
    before = snapshot(flow, backend)
    with pytest.raises(InvalidAddress, match=why) as info:
        attach(flow, eip.uuid, guest)
    assert info.value.field == "guest_ip"
    assert snapshot(flow, backend) == before
    assert attach(flow, eip.uuid, "fd00::9" if ":" in vip else "192.0.2.9").state == "attached"  # the id is free


def test_a_guest_ip_that_is_another_eips_vip_is_refused(flow: Eipflow, backend: InMemoryDataplane) -> None:
    a = flow.create_eip("203.0.113.10")
    b = flow.create_eip("203.0.113.11")
    before = snapshot(flow, backend)
    with pytest.raises(AddressInUse) as info:
        attach(flow, a.uuid, "203.0.113.11")
    assert (info.value.field, info.value.holder, info.value.holder_role) == ("guest_ip", b.uuid, "VIP")
    assert snapshot(flow, backend) == before


def test_a_vip_that_is_some_eips_guest_ip_is_refused(flow: Eipflow, backend: InMemoryDataplane) -> None:
    a = flow.create_eip("203.0.113.10")
    attach(flow, a.uuid, "192.0.2.10")
    before = snapshot(flow, backend)
    with pytest.raises(AddressInUse) as info:
        flow.create_eip("192.0.2.10", op_id="create-1")
    assert (info.value.field, info.value.holder, info.value.holder_role) == ("vip", a.uuid, "guest IP")
    assert snapshot(flow, backend) == before
    flow.detach(a.uuid)
    assert flow.create_eip("192.0.2.10", op_id="create-1").vip == "192.0.2.10"  # the op id was not used up

"""NftablesBackend against a real ``nft`` in a throwaway namespace: the kernel's ruleset is the oracle."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from eipflow import AddressNotAllowed, AttachFailed, BackendError, Eipflow, StaleGeneration
from eipflow.agent.lab import Lab
from eipflow.backends.nftables import NftablesBackend, parse_rules
from eipflow.values import EipSpec

pytestmark = pytest.mark.netns

HOST = "host-1"


@pytest.fixture
def host(lab: Lab) -> str:
    ns = lab.netns("h")
    lab.veth(ns, "pub0", ns, "pub0p")  # no dummy module everywhere; a veth pair serves
    return ns


@pytest.fixture
def nft(host: str) -> NftablesBackend:
    return NftablesBackend(HOST, public_interface="pub0", namespace=host)


def spec(eip: str | None = None, *, guest: str = "192.0.2.10", vip: str = "203.0.113.100",
         nic: str = "nic-1", gen: int = 1) -> EipSpec:
    return EipSpec(eip or str(uuid.uuid4()), vip, nic, guest, HOST, gen)


def kernel_rules(lab: Lab, ns: str) -> list[str]:
    """The eipflow table's rule lines as nft prints them (empty when the table is absent)."""
    out = lab.run(ns, "nft", "list", "table", "inet", "eipflow", check=False).stdout
    return [line.strip() for line in out.splitlines() if " comment " in line]


def addresses(lab: Lab, ns: str) -> set[str]:
    data = json.loads(lab.run(ns, "ip", "-j", "addr", "show", "dev", "pub0").stdout)
    return {a["local"] for link in data for a in link["addr_info"]}


def test_apply_writes_dnat_snat_and_the_vip_address(lab: Lab, host: str, nft: NftablesBackend) -> None:
    """One apply puts the DNAT and SNAT rules in the kernel and the VIP on the public interface."""
    s = spec()
    nft.apply(s)
    rules = kernel_rules(lab, host)
    assert any("ip daddr 203.0.113.100" in r and "dnat ip to 192.0.2.10" in r and s.eip_uuid in r for r in rules)
    assert any('oifname "pub0" ip saddr 192.0.2.10' in r and "snat ip to 203.0.113.100" in r for r in rules)
    assert len(rules) == 2
    assert "203.0.113.100" in addresses(lab, host)
    assert nft.rules() == [s]
    assert nft.rules("other-host") == []


def test_apply_is_idempotent_and_replaces_the_eips_old_rules(lab: Lab, host: str, nft: NftablesBackend) -> None:
    """Applying twice leaves one pair; applying a new binding of the same EIP replaces the old pair."""
    s = spec()
    nft.apply(s)
    nft.apply(s)
    assert len(kernel_rules(lab, host)) == 2
    moved = spec(s.eip_uuid, guest="192.0.2.11", nic="nic-2", gen=2)
    nft.apply(moved)
    rules = kernel_rules(lab, host)
    assert len(rules) == 2 and all("192.0.2.10" not in r for r in rules)
    assert nft.rules() == [moved]


def test_a_late_revoke_never_removes_a_newer_generation(lab: Lab, host: str, nft: NftablesBackend) -> None:
    """A late revoke of an older generation — another binding, or the very same one — is refused: the newer
    rules and the VIP stay. A revoke of the current generation removes all of the EIP's rules."""
    old = spec(gen=3)
    new = spec(old.eip_uuid, guest="192.0.2.11", nic="nic-2", gen=5)
    nft.apply(new)
    before = kernel_rules(lab, host)
    for late in (old, spec(old.eip_uuid, guest="192.0.2.11", nic="nic-2", gen=4)):
        with pytest.raises(StaleGeneration) as info:
            nft.revoke(late)
        assert (info.value.reason, info.value.current) == ("newer_rule", 5)
    assert kernel_rules(lab, host) == before and nft.rules() == [new]
    assert "203.0.113.100" in addresses(lab, host)
    nft.revoke(new)
    assert kernel_rules(lab, host) == []
    assert "203.0.113.100" not in addresses(lab, host)
    nft.revoke(new)  # the same revoke again: not an error
    assert nft.rules() == []


def test_a_stale_apply_is_refused_and_changes_no_kernel_rule(lab: Lab, host: str, nft: NftablesBackend) -> None:
    """The zombie's apply of an older generation, and a replay of a revoked generation: the ruleset is untouched."""
    current = spec(gen=9)
    nft.apply(current)
    before = lab.ruleset(host)
    with pytest.raises(StaleGeneration) as info:
        nft.apply(spec(current.eip_uuid, guest="192.0.2.66", gen=8))
    assert info.value.reason == "older"
    with pytest.raises(StaleGeneration):
        nft.apply(spec(current.eip_uuid, guest="192.0.2.66", gen=9))  # same generation, other content
    assert lab.ruleset(host) == before
    nft.revoke(spec(current.eip_uuid, gen=10))
    with pytest.raises(StaleGeneration):
        nft.apply(current)  # a captured apply replayed after the revoke
    assert kernel_rules(lab, host) == []


def test_generations_survive_a_restart_in_the_state_dir(lab: Lab, host: str, tmp_path: Path) -> None:
    """The tombstone of a revoke lives in the agent's state dir: a new backend (an agent restart) still
    refuses the late apply it was left for; the rules' comments carry the generation of what is realized."""
    first = NftablesBackend(HOST, public_interface="pub0", namespace=host, state_dir=tmp_path)
    s = spec(gen=4)
    first.apply(s)
    assert sum("dnat@4" in r or "snat@4" in r for r in kernel_rules(lab, host)) == 2
    first.revoke(spec(s.eip_uuid, gen=6))
    restarted = NftablesBackend(HOST, public_interface="pub0", namespace=host, state_dir=tmp_path)
    with pytest.raises(StaleGeneration) as info:
        restarted.apply(s)
    assert info.value.current == 6
    assert kernel_rules(lab, host) == []
    restarted.apply(spec(s.eip_uuid, gen=7))
    again = NftablesBackend(HOST, public_interface="pub0", namespace=host)  # no state dir: the kernel still knows
    with pytest.raises(StaleGeneration):
        again.apply(spec(s.eip_uuid, guest="192.0.2.99", gen=5))
    assert [r.generation for r in again.rules()] == [7]


def test_rules_lists_several_eips_and_long_nic_ids(lab: Lab, host: str, nft: NftablesBackend) -> None:
    """NIC ids up to the 128-character limit survive the round trip through two rule comments."""
    long_nic = "n" * 60 + "-" + "x" * 67  # 128 characters: longer than one comment can hold
    a = spec(nic=long_nic, gen=10**12)  # a long generation too: both still fit the two 128-byte comments
    b = spec(guest="192.0.2.20", vip="203.0.113.101", nic="eni-0abc")
    nft.apply(a)
    nft.apply(b)
    assert sorted(nft.rules(), key=lambda x: x.eip_uuid) == sorted([a, b], key=lambda x: x.eip_uuid)
    nft.revoke(a)
    assert nft.rules() == [b]


def test_ipv6_spec(lab: Lab, host: str, nft: NftablesBackend) -> None:
    """IPv6 VIPs get ip6 DNAT/SNAT and a /128 address."""
    s = spec(vip="2001:db8::100", guest="2001:db8:1::10")
    nft.apply(s)
    assert any("dnat ip6 to 2001:db8:1::10" in r for r in kernel_rules(lab, host))
    assert "2001:db8::100" in addresses(lab, host)
    assert nft.rules() == [s]
    nft.revoke(s)
    assert kernel_rules(lab, host) == []


def test_foreign_rules_in_the_table_are_left_alone(lab: Lab, host: str, nft: NftablesBackend) -> None:
    """A rule without eipflow's comment is not listed and never deleted."""
    nft.apply(spec())
    lab.run(host, "nft", "add", "rule", "inet", "eipflow", "prerouting", "ip", "daddr", "198.51.100.7", "accept")
    assert len(nft.rules()) == 1
    nft.revoke(nft.rules()[0])
    out = lab.run(host, "nft", "list", "table", "inet", "eipflow").stdout
    assert "198.51.100.7" in out


def test_announce_none_needs_no_interface(lab: Lab, host: str) -> None:
    """With announce = none the VIP is not added as an address and SNAT matches any interface."""
    nft = NftablesBackend(HOST, announce="none", namespace=host)
    s = spec()
    nft.apply(s)
    assert "203.0.113.100" not in addresses(lab, host)
    assert any(r.startswith("ip saddr 192.0.2.10") for r in kernel_rules(lab, host))
    nft.revoke(s)


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (spec(guest="2001:db8::1"), r"IPv6 address but the EIP's VIP 203\.0\.113\.100 is IPv4"),
        (spec(guest="fe80::1%pub0", vip="2001:db8::100"), "zone ID"),
        (spec(guest="fd00::5", vip="2001:db8::a%x;flush ruleset"), "zone ID"),
        (spec(guest="127.0.0.1"), "loopback"),
        (spec(vip="255.255.255.255"), "broadcast"),
        (spec(vip="203.0.113.100", guest="203.0.113.100"), "own VIP"),
        (EipSpec("not-a-uuid", "203.0.113.1", "nic", "192.0.2.1", HOST), "invalid spec"),
        (EipSpec(str(uuid.uuid4()), "203.0.113.1", "nic", "192.0.2.1", "host-2"), "not host-2"),
        (EipSpec(str(uuid.uuid4()), "203.0.113.1", "nic\n", "192.0.2.1; flush ruleset", HOST), "invalid spec"),
    ],
)
def test_invalid_specs_are_refused_before_nft_runs(lab: Lab, host: str, nft: NftablesBackend, bad: EipSpec,
                                                   why: str) -> None:
    """Bad input never reaches nft: a non-retryable BackendError, and the ruleset stays empty."""
    with pytest.raises(BackendError, match=why) as info:
        nft.apply(bad)
    assert info.value.retryable is False
    assert lab.run(host, "nft", "list", "ruleset").stdout.strip() == ""


def test_parse_ignores_unrelated_json() -> None:
    """parse_rules reads only rules carrying eipflow's comment."""
    items = [
        {"metainfo": {}},
        {"rule": {"chain": "prerouting", "handle": 4, "comment": "someone else", "expr": []}},
        {"rule": {"chain": "prerouting", "handle": 5, "comment": "eipflow abc dnat nic", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "203.0.113.5"}},
            {"dnat": {"family": "ip", "addr": "192.0.2.5"}},
        ]}},
    ]
    [rule] = parse_rules(items)
    assert (rule.eip_uuid, rule.vip, rule.guest_ip, rule.nic_part, rule.handle) == (
        "abc", "203.0.113.5", "192.0.2.5", "nic", 5)


def _failing_ip(tmp_path: Path, verb: str) -> str:
    """An ``ip`` that fails ``ip addr VERB …`` (as a kernel refusing the address would) and runs the rest.

    Also in a batch (``ip -force -batch -``): its ``addr VERB`` lines fail, the others run.
    """
    real = shutil.which("ip")
    assert real is not None
    script = tmp_path / "ip"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = addr ] && [ "$2" = {verb} ]; then\n'
        '  echo "RTNETLINK answers: Operation not permitted" >&2; exit 2\n'
        'fi\n'
        'if [ "$1" = -force ] && [ "$2" = -batch ]; then\n'
        '  lines=$(cat)\n'
        f'  printf "%s\\n" "$lines" | grep -v "^addr {verb} " | {real} -force -batch - || exit $?\n'
        f'  printf "%s\\n" "$lines" | grep -q "^addr {verb} " || exit 0\n'
        '  echo "RTNETLINK answers: Operation not permitted" >&2; exit 1\n'
        'fi\n'
        f'exec {real} "$@"\n'
    )
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_apply_whose_address_step_fails_leaves_nothing_behind(lab: Lab, host: str, tmp_path: Path, v6: bool) -> None:
    """nft commits the rules, then ``ip addr add`` fails: the apply takes its rules back before it raises."""
    nft = NftablesBackend(HOST, public_interface="pub0", namespace=host, ip=_failing_ip(tmp_path, "add"))
    s = spec(vip="2001:db8::100", guest="2001:db8:1::10") if v6 else spec()
    before = (kernel_rules(lab, host), addresses(lab, host))
    with pytest.raises(BackendError, match=r"ip addr add .* failed"):
        nft.apply(s)
    assert (kernel_rules(lab, host), addresses(lab, host)) == before == ([], before[1])
    nft.revoke(s)  # what the runner's rollback does: finds nothing, fails nothing
    assert nft.rules() == []


def test_apply_on_a_missing_interface_leaves_nothing_behind(lab: Lab, host: str) -> None:
    """The public interface is gone (``ip addr show`` fails after the nft commit): no rule is left."""
    nft = NftablesBackend(HOST, public_interface="pub9", namespace=host)
    with pytest.raises(BackendError, match="pub9"):
        nft.apply(spec())
    assert kernel_rules(lab, host) == []


def test_failed_attach_through_the_engine_leaves_the_kernel_clean(lab: Lab, host: str, tmp_path: Path) -> None:
    """Eipflow + the real backend: the attach rolls back to detached, every work item done, no rule, no address."""
    nft = NftablesBackend(HOST, public_interface="pub0", namespace=host, ip=_failing_ip(tmp_path, "add"))
    with Eipflow.open(f"sqlite:///{tmp_path / 'e.db'}", nft) as flow:
        eip = flow.create_eip("2001:DB8:0::100")
        with pytest.raises(AttachFailed):
            flow.attach(eip.uuid, nic="nic-1", guest_ip="2001:db8:1:0::10", vm="vm-1", host=HOST)
        row = flow.get_eip(eip.uuid)
        assert (row.state, row.guest_ip, row.vip) == ("detached", None, "2001:db8::100")
        assert {w.status for w in flow.work_items()} == {"done"}
    assert kernel_rules(lab, host) == []
    assert "2001:db8::100" not in addresses(lab, host)


def test_revoke_matches_a_rule_whatever_spelling_the_caller_uses(lab: Lab, host: str, nft: NftablesBackend) -> None:
    """Revoke canonicalises (zone dropped, as nft drops it) so a legacy or oddly spelled spec still matches."""
    s = spec(vip="2001:db8::100", guest="fe80::10")  # link-local guests are refused for apply ...
    lab.run(host, "ip", "link", "set", "pub0", "up")
    commands = nft._skeleton() + nft._add_rules(s)  # ... but may exist from before the rule: write it directly
    nft._nft_apply(commands)
    assert len(kernel_rules(lab, host)) == 2
    nft.revoke(spec(s.eip_uuid, vip="2001:DB8::0100", guest="FE80:0::10%pub0"))
    assert kernel_rules(lab, host) == []


@pytest.mark.parametrize(("over", "why"), [
    ({"vip": "203.0.113.11"}, "vip 203.0.113.11: it is an address of this host"),
    ({"vip": "203.0.113.1"}, "vip 203.0.113.1: it is this host's gateway"),
    ({"guest": "203.0.113.11"}, "guest_ip 203.0.113.11: it is an address of this host"),
    ({"vip": "2001:db8::11", "guest": "fd00::5"}, "vip 2001:db8::11: it is an address of this host"),
    ({"vip": "2001:db8::1", "guest": "fd00::5"}, "vip 2001:db8::1: it is this host's gateway"),
])
def test_the_hosts_own_and_gateway_addresses_are_refused_and_change_nothing(
    lab: Lab, host: str, nft: NftablesBackend, over: dict[str, str], why: str
) -> None:
    """DNAT or announcing the host's own address, or its gateway's, would hijack the host: refused first."""
    lab.address(host, "pub0", "203.0.113.11/24")
    lab.run(host, "ip", "link", "set", "pub0", "up")
    lab.run(host, "ip", "route", "replace", "default", "via", "203.0.113.1")
    lab.address(host, "pub0", "2001:db8::11/64")
    lab.run(host, "ip", "-6", "route", "replace", "default", "via", "2001:db8::1", "dev", "pub0")
    before = (lab.ruleset(host), addresses(lab, host))
    with pytest.raises(AddressNotAllowed, match=why) as info:
        nft.apply(spec(**over))
    assert info.value.retryable is False
    assert (lab.ruleset(host), addresses(lab, host)) == before
    mine = spec()
    nft.apply(mine)  # an ordinary VIP still works, and re-applying it (its address now on pub0) too
    nft.apply(mine)
    assert nft.rules() == [mine]


def test_a_vip_whose_rules_were_lost_but_whose_address_stayed_is_re_applied(lab: Lab, host: str,
                                                                           nft: NftablesBackend) -> None:
    """The announce address (a /32 on pub0) left behind by a flushed table is eipflow's, not the host's own."""
    s = spec()
    nft.apply(s)
    lab.run(host, "nft", "flush", "table", "inet", "eipflow")
    assert nft.rules() == [] and "203.0.113.100" in addresses(lab, host)
    nft.apply(s)
    assert nft.rules() == [s]

"""NftablesBackend against a real ``nft`` in a throwaway namespace: the kernel's ruleset is the oracle."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from eipflow import AddressNotAllowed, AttachFailed, BackendError, Eipflow, StaleGeneration
from eipflow.agent import parse_hosts
from eipflow.agent.app import create_app
from eipflow.agent.lab import Lab
from eipflow.backends.batch import Change, run_changes
from eipflow.backends.http import HttpAgentBackend
from eipflow.backends.nftables import NftablesBackend, parse_rules
from eipflow.values import EipSpec
from tests._support import serving

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


# -- batches -----------------------------------------------------------------------------------
class Spawns:
    """Wraps a backend's command runner: every command it started, in order (``before_commit`` runs
    once, just before the first ``nft -f``: a deterministic "meanwhile")."""

    def __init__(self, backend: NftablesBackend, before_commit: Callable[[], object] | None = None) -> None:
        self.argvs: list[list[str]] = []
        self._before = before_commit
        real = backend._run

        def run(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
            self.argvs.append(list(argv))
            if "-f" in argv and self._before is not None:
                hook, self._before = self._before, None
                hook()
            return real(argv, stdin)

        backend._run = run  # type: ignore[method-assign]

    def transactions(self) -> int:
        return sum(Path(a[0]).name == "nft" and "-f" in a for a in self.argvs)

    def nft(self) -> int:
        return sum(Path(a[0]).name == "nft" for a in self.argvs)

    def clear(self) -> None:
        self.argvs.clear()


def _poisoned_nft(tmp_path: Path, marker: str) -> str:
    """An ``nft`` that rejects any transaction mentioning ``marker`` (as nft rejects a rule it cannot take),
    and runs everything else."""
    real = shutil.which("nft")
    assert real is not None
    script = tmp_path / "nft"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$2" = -f ]; then\n'
        '  doc=$(cat)\n'
        f'  case "$doc" in *"{marker}"*) echo "Error: Could not process rule: Invalid argument" >&2; exit 1;; esac\n'
        f'  printf "%s" "$doc" | exec {real} "$@"\n'
        'fi\n'
        f'exec {real} "$@"\n'
    )
    script.chmod(0o755)
    return str(script)


def many(n: int, first: int = 100) -> list[EipSpec]:
    return [spec(vip=f"203.0.113.{first + i}", guest=f"192.0.2.{first + i}", nic=f"nic-{i}") for i in range(n)]


def test_a_batch_of_applies_is_one_nft_transaction(lab: Lab, host: str, nft: NftablesBackend) -> None:
    """N applies through the batch port: N rule pairs and N VIPs, one ``nft -f``, a fixed number of commands."""
    specs = many(40)
    spawns = Spawns(nft)
    results = run_changes(nft, HOST, [Change("apply", s) for s in specs])
    # one rule listing and one transaction; ip: the host's addresses and gateways, pub0's addresses, one batch
    assert (spawns.transactions(), spawns.nft(), len(spawns.argvs)) == (1, 2, 7)
    assert [r.status for r in results] == ["done"] * 40
    rules = kernel_rules(lab, host)
    assert len(rules) == 80 and sum(" dnat ip to " in r for r in rules) == 40
    assert sorted(nft.rules(), key=lambda s: s.eip_uuid) == sorted(specs, key=lambda s: s.eip_uuid)
    assert {s.vip for s in specs} <= addresses(lab, host)
    spawns.clear()
    results = run_changes(nft, HOST, [Change("revoke", dataclasses.replace(s, generation=2)) for s in specs])
    assert (spawns.transactions(), spawns.nft()) == (1, 2)
    assert [r.status for r in results] == ["done"] * 40
    assert kernel_rules(lab, host) == [] and not {s.vip for s in specs} & addresses(lab, host)


def test_a_batch_judges_each_change_and_a_rejected_transaction_falls_back(lab: Lab, host: str,
                                                                          tmp_path: Path) -> None:
    """Refused (older generation) and failed (nft rejects its rule) changes end alone; the others are realized.

    nft rejects the batch's transaction as a whole, so the accepted changes go again one at a time: the
    poisoned one fails alone. Record files change only for what took effect."""
    state = tmp_path / "state"
    nft = NftablesBackend(HOST, public_interface="pub0", namespace=host, state_dir=state,
                          nft=_poisoned_nft(tmp_path, "203.0.113.66"))
    held = spec(gen=5)
    gone, a, b = many(3, first=101)
    nft.apply(held)
    nft.apply(gone)
    poisoned = spec(vip="203.0.113.66", guest="192.0.2.66")
    spawns = Spawns(nft)
    with capture_logs() as logs:
        results = nft.apply_changes(HOST, [
            Change("apply", spec(held.eip_uuid, guest="192.0.2.99", gen=3)),
            Change("apply", poisoned),
            Change("apply", a),
            Change("revoke", dataclasses.replace(gone, generation=2)),
            Change("apply", b),
        ])
    assert [r.status for r in results] == ["refused", "failed", "done", "done", "done"]
    stale = results[0].error
    assert isinstance(stale, StaleGeneration)
    assert (stale.reason, stale.requested, stale.current) == ("older", 3, 5)
    assert results[1].error is not None and "nft transaction failed" in str(results[1].error)
    assert spawns.transactions() == 1 + 4  # the rejected batch, then each accepted change alone
    assert sorted(nft.rules(), key=lambda s: s.eip_uuid) == sorted([held, a, b], key=lambda s: s.eip_uuid)
    assert "203.0.113.66" not in addresses(lab, host)
    assert not (state / f"{poisoned.eip_uuid}.json").exists()
    records = {p.stem: json.loads(p.read_text()) for p in state.glob("*.json")}
    assert (records[held.eip_uuid]["generation"], records[held.eip_uuid]["guest_ip"]) == (5, "192.0.2.10")
    assert (records[gone.eip_uuid]["generation"], records[gone.eip_uuid]["revoked"]) == (2, True)
    batch_logs = [e for e in logs if e["event"] == "nft.batch"]
    assert [(e["fallback"], e["done"], e["refused"], e["failed"]) for e in batch_logs] == [(True, 3, 1, 1)]


def test_a_batch_rejected_for_a_rule_that_vanished_meanwhile_is_redone_one_at_a_time(
    lab: Lab, host: str, nft: NftablesBackend
) -> None:
    """Real nft rejects the batch (a rule it deletes by handle is gone); each change, re-read alone, succeeds."""
    old = many(2)
    for s in old:
        nft.apply(s)
    moved = [dataclasses.replace(s, guest_ip=f"192.0.2.{50 + i}", generation=2) for i, s in enumerate(old)]
    spawns = Spawns(nft, before_commit=lambda: lab.run(host, "nft", "flush", "chain", "inet", "eipflow", "postrouting"))
    results = nft.apply_changes(HOST, [Change("apply", s) for s in moved])
    assert [r.status for r in results] == ["done", "done"]
    assert spawns.transactions() == 1 + 2
    assert sorted(nft.rules(), key=lambda s: s.eip_uuid) == sorted(moved, key=lambda s: s.eip_uuid)
    assert len(kernel_rules(lab, host)) == 4


def test_a_batch_refuses_invalid_repeated_and_host_address_changes_alone(lab: Lab, host: str,
                                                                        nft: NftablesBackend) -> None:
    """Validation, one-change-per-EIP and the host-address rule judge each change; the rest is one transaction."""
    lab.address(host, "pub0", "203.0.113.11/24")
    ok, own = spec(), spec(vip="203.0.113.11", guest="192.0.2.11")
    spawns = Spawns(nft)
    results = nft.apply_changes(HOST, [
        Change("apply", spec(guest="127.0.0.1")),
        Change("apply", ok),
        Change("revoke", ok),
        Change("apply", own),
        Change("revoke", spec(vip="203.0.113.77")),  # nothing there: fine, and no transaction of its own
    ])
    assert [r.status for r in results] == ["failed_permanent", "done", "failed_permanent", "failed_permanent", "done"]
    assert "loopback" in str(results[0].error) and "more than one change" in str(results[2].error)
    assert isinstance(results[3].error, AddressNotAllowed)
    assert nft.rules() == [ok] and spawns.transactions() == 1
    assert nft.apply_changes("host-2", [Change("apply", ok)])[0].status == "failed_permanent"


def test_a_batch_through_the_agent_ends_as_the_backend_itself(lab: Lab, host: str, tmp_path: Path) -> None:
    """The same batch, sent to an agent over HTTP and given to an nftables backend directly: the same
    results, the same rules and addresses in both kernels, the same nft transactions; one HTTP request."""
    other = lab.netns("h2")
    lab.veth(other, "pub0", other, "pub0p")
    poison = _poisoned_nft(tmp_path, "203.0.113.66")
    backends = {}
    for ns in (host, other):
        lab.address(ns, "pub0", "203.0.113.11/24")
        backends[ns] = NftablesBackend(HOST, public_interface="pub0", namespace=ns, nft=poison,
                                       state_dir=tmp_path / ns)
    held = spec(gen=5)
    a, b = many(2, first=101)
    changes = [Change("apply", spec(held.eip_uuid, guest="192.0.2.99", gen=3)), Change("apply", a),
               Change("apply", spec(vip="203.0.113.66", guest="192.0.2.66")),
               Change("apply", spec(vip="203.0.113.11", guest="192.0.2.12")), Change("apply", b),
               Change("revoke", spec(vip="203.0.113.88"))]
    token = "batch-token-0123456789abcdef"
    sock_dir = tempfile.mkdtemp(prefix="eipb-", dir="/tmp")  # Unix socket paths are short
    try:
        app = create_app(backends[host], host_uuid=HOST, token=token)
        with serving(app, f"{sock_dir}/agent.sock", token) as client:
            paths: list[str] = []
            client.event_hooks["request"].append(lambda request: paths.append(request.url.path))
            hosts = parse_hosts({"hosts": {HOST: {"url": f"unix://{sock_dir}/agent.sock", "token": token,
                                                  "public_interface": "pub0"}}})
            remote = HttpAgentBackend(hosts, clients={HOST: client})
            remote.apply(held)
            backends[other].apply(held)
            paths.clear()
            spawns = {ns: Spawns(backends[ns]) for ns in (host, other)}
            over_http = remote.apply_changes(HOST, changes)
            direct = backends[other].apply_changes(HOST, changes)
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)
    assert paths == ["/v1/batch"]
    assert [r.status for r in over_http] == [r.status for r in direct] == [
        "refused", "done", "failed", "failed_permanent", "done", "done"]
    assert [type(r.error) for r in over_http] == [type(r.error) for r in direct]
    stale_http, stale_direct = over_http[0].error, direct[0].error
    assert isinstance(stale_http, StaleGeneration) and isinstance(stale_direct, StaleGeneration)
    assert (stale_http.reason, stale_http.requested, stale_http.current) == (
        stale_direct.reason, stale_direct.requested, stale_direct.current) == ("older", 3, 5)
    assert [r.error.retryable for r in over_http if r.error] == [r.error.retryable for r in direct if r.error]
    assert kernel_rules(lab, host) == kernel_rules(lab, other) and len(kernel_rules(lab, host)) == 6
    def vips(ns: str) -> set[str]:
        return {a for a in addresses(lab, ns) if not a.startswith("fe80:")}  # link-local ones differ by MAC

    assert vips(host) == vips(other) == {"203.0.113.11", held.vip, a.vip, b.vip}
    assert spawns[host].transactions() == spawns[other].transactions() == 1 + 3  # rejected, then alone

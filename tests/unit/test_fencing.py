"""The generation rule (eipflow.backends.fencing), row by row of its table; no database, no threads."""

from __future__ import annotations

import pytest

from eipflow import StaleGeneration
from eipflow.backends.fencing import Decision, HostRecord, decide, record_after
from eipflow.values import EipSpec

EIP = "00000000-0000-4000-8000-000000000001"


def spec(gen: int, guest: str = "10.0.0.1", nic: str = "nic-1") -> EipSpec:
    return EipSpec(EIP, "203.0.113.1", nic, guest, "h1", gen)


def applied(gen: int, guest: str = "10.0.0.1") -> HostRecord:
    return HostRecord(gen, spec(gen, guest))


def revoked(gen: int) -> HostRecord:
    return HostRecord(gen, None)


@pytest.mark.parametrize(("record", "call", "decision"), [
    (None, spec(3), Decision("apply", same=False)),
    (applied(3), spec(4, guest="10.0.0.2"), Decision("apply", same=False)),
    (revoked(5), spec(6), Decision("apply", same=False)),
    (applied(3), spec(3), Decision("apply", same=True)),
])
def test_accepted_applies(record: HostRecord | None, call: EipSpec, decision: Decision) -> None:
    assert decide(record, "apply", call) == decision
    assert record_after(record, decision, call) == HostRecord(call.generation, call)


@pytest.mark.parametrize(("record", "call", "reason"), [
    (applied(5), spec(4), "older"),
    (revoked(5), spec(4), "older"),
    (revoked(5), spec(5), "revoked"),
    (applied(5), spec(5, guest="10.0.0.9"), "changed"),
    (applied(5), spec(5, nic="nic-9"), "changed"),
])
def test_refused_applies_name_why_and_are_never_retried(record: HostRecord, call: EipSpec, reason: str) -> None:
    with pytest.raises(StaleGeneration) as info:
        decide(record, "apply", call)
    err = info.value
    assert (err.reason, err.requested, err.current, err.retryable) == (reason, call.generation, 5, False)
    assert (err.eip_uuid, err.host_uuid) == (EIP, "h1")
    assert f"generation {call.generation}" in str(err) and "host has 5" in str(err)


@pytest.mark.parametrize(("record", "gen", "same"), [
    (None, 3, False),  # nothing held: the revoke still leaves a tombstone
    (applied(3), 3, False),
    (applied(3), 7, False),  # a revoke newer than the rule removes it
    (revoked(7), 7, True),  # a repeat of the same revoke
    (revoked(3), 7, False),
])
def test_accepted_revokes_leave_a_tombstone_never_lower(record: HostRecord | None, gen: int, same: bool) -> None:
    decision = decide(record, "revoke", spec(gen))
    assert decision == Decision("revoke", same=same)
    after = record_after(record, decision, spec(gen))
    assert after.revoked and after.generation == max(gen, record.generation if record else 0)


@pytest.mark.parametrize(("record", "reason"), [(applied(9), "newer_rule"), (revoked(9), "older")])
def test_a_revoke_never_removes_a_newer_rule_and_a_replayed_old_revoke_is_refused(
    record: HostRecord, reason: str
) -> None:
    with pytest.raises(StaleGeneration) as info:
        decide(record, "revoke", spec(4))
    assert (info.value.reason, info.value.current) == (reason, 9)


def test_a_tombstone_refuses_the_late_apply_it_was_left_for() -> None:
    """Revoke gen 9 lands first; the zombie's apply of gen 7 arrives afterwards: refused."""
    after = record_after(None, decide(None, "revoke", spec(9)), spec(9))
    with pytest.raises(StaleGeneration):
        decide(after, "apply", spec(7))


def test_unknown_action_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="apply' or 'revoke"):
        decide(None, "flush", spec(1))

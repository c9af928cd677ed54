"""The reconciler: re-driving stuck in-flight rows and repairing drift both ways (S14, S18)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
import structlog
from freezegun import freeze_time

from eipflow import Eipflow, EipSpec, InMemoryDataplane
from eipflow.cli import main
from eipflow.invariants import check
from eipflow.reconcile import Reconciler, reconcile

VIP, VIP2 = "192.0.2.10", "192.0.2.11"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # main() configures structlog to print to the sys.stderr of that moment (pytest's capture,
    # closed after the test); put the test configuration back so later tests can log.
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def _attached(flow: Eipflow, vip: str = VIP, *, n: int = 1, host: str = "h1") -> str:
    eip = flow.create_eip(vip)
    flow.attach(eip.uuid, nic=f"nic-{n}", guest_ip=f"10.2.0.{n}", vm=f"vm-{n}", host=host)
    return eip.uuid


def _rules(backend: InMemoryDataplane) -> set[tuple[str, str, str]]:
    return {(r.host_uuid, r.eip_uuid, r.guest_ip) for r in backend.rules()}


def _events(flow: Eipflow, uuid: str) -> list[tuple[str, str, str]]:
    return [(r.event, r.from_state, r.to_state) for r in flow.history(uuid)]


def test_nothing_to_repair(flow: Eipflow, backend: InMemoryDataplane) -> None:
    _attached(flow)
    report = reconcile(flow)
    assert report.clean and report.drift_checked and report.outcomes == []


def test_missing_rule_is_reapplied_with_history(flow: Eipflow, backend: InMemoryDataplane) -> None:
    """S18: a rule lost on host reboot is re-applied through the normal apply path, recorded in history."""
    uuid = _attached(flow)
    backend.drop_rule("h1", uuid)
    assert check(flow.store, backend)  # the drift is visible
    report = reconcile(flow)
    assert [(r.kind, r.eip_uuid, r.host_uuid) for r in report.planned] == [("reapply_missing", uuid, "h1")]
    assert [o for _, o in report.outcomes] == ["done"]
    assert _rules(backend) == {("h1", uuid, "10.2.0.1")}
    assert _events(flow, uuid)[-2:] == [
        ("drift_detected", "attached", "applying"), ("apply_ok", "applying", "attached"),
    ]
    record = flow.history(uuid)[-2]
    assert record.actor == "reconciler"
    assert record.details["reason"] == "attached on h1 but the host has no rule for it"
    assert check(flow.store, backend) == []
    assert reconcile(flow).clean


def test_stray_rules_are_revoked(flow: Eipflow, backend: InMemoryDataplane) -> None:
    """S18: rules the database does not hold as attached are revoked; existing EIPs get a history entry."""
    keep = _attached(flow)
    detached = flow.create_eip(VIP2).uuid
    backend.inject_rule(EipSpec("no-such-eip", "192.0.2.99", "nic-x", "10.2.9.9", "h3"))
    backend.inject_rule(EipSpec(detached, VIP2, "nic-y", "10.2.8.8", "h1"))
    backend.inject_rule(EipSpec(keep, VIP, "nic-1", "10.2.0.1", "h2"))  # attached on h1, not on h2
    report = reconcile(flow)
    assert sorted((r.kind, r.eip_uuid, r.host_uuid) for r in report.planned) == sorted([
        ("revoke_stray", "no-such-eip", "h3"), ("revoke_stray", detached, "h1"), ("revoke_stray", keep, "h2"),
    ])
    assert all(o == "done" for _, o in report.outcomes)
    assert _rules(backend) == {("h1", keep, "10.2.0.1")}
    assert _events(flow, detached)[-1] == ("stray_detected", "detached", "detached")
    assert flow.history(detached)[-1].details["reason"] == "rule on h1 but the EIP is detached"
    assert _events(flow, keep)[-1] == ("stray_detected", "attached", "attached")
    assert flow.history(keep)[-1].details["reason"] == "rule on h2 but the EIP is attached on h1"
    cleanups = [w for w in flow.work_items() if w.cleanup]
    assert sorted((w.eip_uuid, w.status) for w in cleanups) == sorted(
        [("no-such-eip", "done"), (detached, "done"), (keep, "done")]
    )
    assert check(flow.store, backend) == []


def test_mismatched_rule_is_replaced(flow: Eipflow, backend: InMemoryDataplane) -> None:
    """A rule on the right host that maps to another guest IP is revoked, then the right one applied."""
    uuid = _attached(flow)
    backend.drop_rule("h1", uuid)
    backend.inject_rule(EipSpec(uuid, VIP, "nic-old", "10.2.0.200", "h1"))
    report = reconcile(flow)
    assert [r.kind for r in report.planned] == ["revoke_stray", "reapply_missing"]
    assert [o for _, o in report.outcomes] == ["done", "done"]
    assert _rules(backend) == {("h1", uuid, "10.2.0.1")}
    assert [e for e, _, _ in _events(flow, uuid)[-3:]] == ["stray_detected", "drift_detected", "apply_ok"]
    assert check(flow.store, backend) == []


def test_dry_run_changes_nothing(flow: Eipflow, backend: InMemoryDataplane) -> None:
    uuid = _attached(flow)
    backend.drop_rule("h1", uuid)
    backend.inject_rule(EipSpec("ghost", "192.0.2.98", "nic-g", "10.2.7.7", "h2"))
    version = flow.get_eip(uuid).version
    report = reconcile(flow, dry_run=True)
    assert report.dry_run and report.outcomes == []
    assert sorted(r.kind for r in report.planned) == ["reapply_missing", "revoke_stray"]
    assert flow.get_eip(uuid).version == version
    assert _rules(backend) == {("h2", "ghost", "10.2.7.7")}
    assert flow.work_items(statuses=["pending"]) == []


def test_host_filter(flow: Eipflow, backend: InMemoryDataplane) -> None:
    """--host repairs only that host's rules and EIPs."""
    a = _attached(flow, VIP, n=1, host="h1")
    b = _attached(flow, VIP2, n=2, host="h2")
    backend.drop_rule("h1", a)
    backend.drop_rule("h2", b)
    report = reconcile(flow, "h2")
    assert [(r.kind, r.eip_uuid) for r in report.planned] == [("reapply_missing", b)]
    assert _rules(backend) == {("h2", b, "10.2.0.2")}
    reconcile(flow, "h1")
    assert check(flow.store, backend) == []


def test_rows_that_move_during_the_scan_are_left_for_the_next_pass(flow: Eipflow, backend: InMemoryDataplane,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A row that changes while the rules are read is not judged on a stale picture."""
    uuid = _attached(flow)
    backend.drop_rule("h1", uuid)
    real_rules = backend.rules

    def rules_while_detaching(host_uuid: str | None = None) -> list[EipSpec]:
        seen = real_rules(host_uuid)
        flow.detach(uuid)  # lands between the reconciler's two reads of the rows
        return seen

    monkeypatch.setattr(backend, "rules", rules_while_detaching)
    report = reconcile(flow)
    assert report.planned == []
    monkeypatch.undo()
    assert flow.get_eip(uuid).state == "detached"
    assert "drift_detected" not in [e for e, _, _ in _events(flow, uuid)]
    assert check(flow.store, backend) == []


def test_expired_lease_is_redriven_only_after_expiry(db_url: str) -> None:
    """Reconcile timing: an in-flight row leased by a dead worker is left alone until its lease expires."""
    backend = InMemoryDataplane()
    with freeze_time("2026-04-01 08:00:00", tick=False), \
            Eipflow.open(db_url, backend, owner="api", lease_seconds=20) as flow:
        eip = flow.create_eip(VIP)
        flow.attach(eip.uuid, nic="nic-1", guest_ip="10.2.0.1", vm="vm-1", host="h1", wait=False)
        work_id = flow.get_eip(eip.uuid).work_id
        assert work_id is not None
        assert flow.store.claim(work_id, "dead-worker", 20) is not None
        assert reconcile(flow).planned == []  # a live lease: its worker may still be running
        flow.store.lease_clock.advance(21)  # leases expire on the shared (database) clock, not this process's
        report = reconcile(flow)
        assert [(r.kind, r.work_id, r.state) for r in report.planned] == [("redrive", work_id, "binding")]
        assert "dead-worker" in report.planned[0].reason
        assert [o for _, o in report.outcomes] == ["done"]
        assert flow.get_eip(eip.uuid).state == "attached"
        assert check(flow.store, backend) == []


def test_backoff_and_parked_items_are_not_forced(db_url: str) -> None:
    """A retry waiting for its backoff is left alone until due; a parked one is only reported."""
    from eipflow import RetryPolicy

    backend = InMemoryDataplane()
    with freeze_time("2026-04-01 08:00:00", tick=False) as frozen, \
            Eipflow.open(db_url, backend, retry=RetryPolicy(max_attempts=2, jitter=0.0)) as flow:
        uuid = _attached(flow)
        backend.faults.fail("revoke", times=None)
        flow.detach(uuid)
        assert flow.get_eip(uuid).state == "detaching"
        assert reconcile(flow).planned == []  # due in 1 s
        frozen.tick(timedelta(seconds=1))
        report = reconcile(flow)
        assert [r.kind for r in report.planned] == ["redrive"]
        (item,) = flow.work_items(eip_uuid=uuid, statuses=["parked"])
        report = reconcile(flow)
        assert [(r.kind, r.work_id) for r in report.planned] == [("parked", item.id)]
        assert [o for _, o in report.outcomes] == ["reported"]
        assert flow.work_items(eip_uuid=uuid, statuses=["parked"]) == [item]


def test_lost_work_item_is_relinked(flow: Eipflow, backend: InMemoryDataplane) -> None:
    """An in-flight row whose work item is gone gets a fresh one and is driven to its goal."""
    eip = flow.create_eip(VIP)
    flow.attach(eip.uuid, nic="nic-1", guest_ip="10.2.0.1", vm="vm-1", host="h1", wait=False)
    lost = flow.get_eip(eip.uuid).work_id
    assert lost is not None
    flow.store.set_work_status(lost, None, "cancelled", error="lost by an operator")
    report = reconcile(flow)
    assert [(r.kind, r.eip_uuid) for r in report.planned] == [("relink", eip.uuid)]
    row = flow.get_eip(eip.uuid)
    assert (row.state, row.applied_host) == ("attached", "h1")
    assert check(flow.store, backend) == []


def test_backend_without_rules_still_redrives(db_url: str) -> None:
    class Blind:
        def __init__(self) -> None:
            self.inner = InMemoryDataplane()

        def apply(self, spec: EipSpec) -> None:
            self.inner.apply(spec)

        def revoke(self, spec: EipSpec) -> None:
            self.inner.revoke(spec)

    with Eipflow.open(db_url, Blind()) as flow:
        eip = flow.create_eip(VIP)
        flow.attach(eip.uuid, nic="nic-1", guest_ip="10.2.0.1", vm="vm-1", host="h1", wait=False)
        report = Reconciler(flow).run()
        assert not report.drift_checked
        assert [r.kind for r in report.planned] == ["redrive"]
        assert flow.get_eip(eip.uuid).state == "attached"


def test_cli_reconcile(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`eipflow reconcile --dry-run` prints the plan; without it the drift is repaired."""
    with Eipflow.open(sqlite_url) as flow:
        uuid = _attached(flow)
        flow.backend.drop_rule("h1", uuid)  # type: ignore[attr-defined]
    assert main(["--db", sqlite_url, "--json", "reconcile", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["dry_run"] is True
    assert [(r["kind"], r["eip_uuid"]) for r in plan["planned"]] == [("reapply_missing", uuid)]
    assert main(["--db", sqlite_url, "reconcile", "--dry-run", "--host", "h1"]) == 0
    text = capsys.readouterr().out
    assert "reapply_missing" in text and "dry run: 1 repair(s) planned" in text
    assert main(["--db", sqlite_url, "reconcile"]) == 0
    assert "done" in capsys.readouterr().out
    assert main(["--db", sqlite_url, "reconcile"]) == 0
    assert capsys.readouterr().out.strip() == "nothing to repair"
    with Eipflow.open(sqlite_url) as flow:
        assert check(flow.store, flow.backend) == []

"""Retention: prune removes finished work and old history in batches, never what is still needed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from eipflow import Eipflow, InMemoryDataplane, ManualClock, RetryPolicy
from eipflow.cli import main
from eipflow.cli.prune import PrunePolicy, Pruner
from eipflow.store.store import WORK

DAY = 86400.0
START = datetime(2020, 1, 1, tzinfo=UTC)  # far enough back to be old on the real clock too


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def aged(db_url: str, clock: ManualClock) -> Iterator[Eipflow]:
    """Day 0: a kept EIP attached, one deleted, one failing re-apply parked. Day 40: one more attach. Now: day 40."""
    backend = InMemoryDataplane()
    with Eipflow.open(db_url, backend, clock=clock, retry=RetryPolicy(max_attempts=1)) as flow:
        kept = flow.create_eip("203.0.113.10", name="kept")
        flow.attach(kept.uuid, nic="nic-1", guest_ip="10.0.0.1", vm="vm-1", host="h1")
        gone = flow.create_eip("203.0.113.11", name="gone")
        flow.attach(gone.uuid, nic="nic-2", guest_ip="10.0.0.2", vm="vm-2", host="h1")
        flow.delete_eip(gone.uuid)
        stuck = flow.create_eip("203.0.113.12", name="stuck")
        flow.attach(stuck.uuid, nic="nic-3", guest_ip="10.0.0.3", vm="vm-3", host="h1")
        flow.vm_stopped("vm-3")
        backend.faults.fail("apply")
        flow.vm_started("vm-3", "h2")  # the re-apply fails once and is parked (max_attempts=1)
        backend.faults.clear()
        clock.advance(40 * DAY)
        fresh = flow.create_eip("203.0.113.13", name="fresh")
        flow.attach(fresh.uuid, nic="nic-4", guest_ip="10.0.0.4", vm="vm-4", host="h1")
        yield flow


def _history(flow: Eipflow) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in flow.store.all_history():
        out.setdefault(r.eip_uuid, []).append(r.version)
    return out


def _names(flow: Eipflow) -> dict[str, str]:
    return {e.name or "": e.uuid for e in flow.list_eips()}


def test_prune_keeps_the_latest_row_of_live_eips_and_unfinished_work(aged: Eipflow) -> None:
    """History older than the cutoff goes except each live EIP's latest row; a deleted EIP's goes entirely;
    done/cancelled work older than the cutoff goes; parked, pending and recent work stays."""
    flow = aged
    names = _names(flow)
    before = _history(flow)
    work_before = {w.id: w.status for w in flow.work_items()}
    parked = [w.id for w in flow.work_items(statuses=["parked"])]
    assert len(parked) == 1
    policy = PrunePolicy(history=timedelta(days=30), work=timedelta(days=7), batch_size=2)
    dry = policy.run(flow.store, dry_run=True)
    assert _history(flow) == before  # nothing changed
    result = policy.run(flow.store)
    assert (result["history_deleted"], result["work_deleted"]) == (dry["history_deleted"], dry["work_deleted"])
    after = _history(flow)
    assert after[names["kept"]] == [before[names["kept"]][-1]]
    assert after[names["stuck"]] == [before[names["stuck"]][-1]]
    assert after[names["fresh"]] == before[names["fresh"]]  # recent: all kept
    assert len(after) == 3  # the deleted EIP's history is gone
    assert result["history_deleted"] == sum(map(len, before.values())) - sum(map(len, after.values()))
    left = {w.id: w.status for w in flow.work_items()}
    old_finished = [i for i, s in work_before.items() if s in ("done", "cancelled") and i not in left]
    assert result["work_deleted"] == len(old_finished) > 0
    assert parked[0] in left and left[parked[0]] == "parked"
    fresh_items = [w for w in flow.work_items(eip_uuid=names["fresh"])]
    assert fresh_items and all(w.status == "done" for w in fresh_items)  # finished, but recent
    # Every EIP still answers for its history, and pruning again finds nothing.
    for uuid in (names["kept"], names["stuck"], names["fresh"]):
        assert flow.history(uuid)
    assert policy.run(flow.store) | {"history_before": None, "work_before": None} == {
        "dry_run": False, "history_deleted": 0, "work_deleted": 0, "history_before": None, "work_before": None}


def test_prune_leaves_a_linked_work_item(db_url: str, clock: ManualClock) -> None:
    """An item an EIP still links to is never deleted, whatever its status says."""
    backend = InMemoryDataplane()
    with Eipflow.open(db_url, backend, clock=clock) as flow:
        eip = flow.create_eip("203.0.113.20")
        flow.attach(eip.uuid, nic="n", guest_ip="10.0.0.9", vm="vm", host="h1", wait=False)
        work_id = flow.get_eip(eip.uuid).work_id
        assert work_id is not None
        with flow.store.engine.begin() as conn:  # a finished-looking item that the row still points at
            conn.execute(WORK.update().where(WORK.c.id == work_id).values(status="done"))
        clock.advance(30 * DAY)
        counts = flow.store.prune(work_before=clock.now(), history_before=clock.now())
        assert counts["work"] == 0 and flow.store.work_item(work_id) is not None
        assert [r.version for r in flow.history(eip.uuid)] == [2]  # only the latest row is kept


def test_prune_command_and_dry_run(capsys: pytest.CaptureFixture[str], aged: Eipflow, db_url: str) -> None:
    """`eipflow prune --dry-run` counts, `eipflow prune` deletes, and both need an age; bad ages are exit 2."""
    # The CLI prunes on the real clock: every row, written on the injected one (2020), is old on it.
    total = len(aged.store.all_history())
    code = main(["--db", db_url, "--json", "prune", "--history-older-than", "30d", "--work-older-than", "7d",
                 "--dry-run"])
    dry = json.loads(capsys.readouterr().out)
    assert code == 0 and dry["dry_run"] is True and dry["history_deleted"] > 0 and dry["work_deleted"] > 0
    assert len(aged.store.all_history()) == total
    code = main(["--db", db_url, "prune", "--history-older-than", "30d", "--work-older-than", "7d"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith(f"deleted {dry['history_deleted']} history row(s)")
    assert len(aged.store.all_history()) == total - dry["history_deleted"] == 3  # one per live EIP
    assert main(["--db", db_url, "prune"]) == 2
    assert "--history-older-than" in capsys.readouterr().err
    assert main(["--db", db_url, "prune", "--work-older-than", "soon"]) == 2
    assert "not a positive duration" in capsys.readouterr().err


def test_worker_prunes_periodically(aged: Eipflow) -> None:
    """The pruner runs at once and then every period until stopped (what `worker --prune-every` starts)."""
    pruner = Pruner(aged.store, PrunePolicy(history=timedelta(days=30), work=timedelta(days=7)),
                    timedelta(hours=1)).start()
    try:
        assert pruner.ran.wait(60)
    finally:
        pruner.stop()
    assert pruner.runs == 1
    assert sorted(len(v) for v in _history(aged).values()) == [1, 1, 4]


def test_worker_prune_options_are_checked(capsys: pytest.CaptureFixture[str], sqlite_url: str) -> None:
    """`--prune-every` without an age (or an age without it) is a usage error."""
    assert main(["--db", sqlite_url, "worker", "--once", "--prune-every", "1h"]) == 2
    assert main(["--db", sqlite_url, "worker", "--once", "--work-older-than", "7d"]) == 2
    assert main(["--db", sqlite_url, "--json", "worker", "--once", "--prune-every", "1h", "--work-older-than",
                 "7d"]) == 0


def test_retry_policy_from_the_command_line(capsys: pytest.CaptureFixture[str], sqlite_url: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`--retry-attempts 1` parks a failing re-apply after its first attempt; the default keeps retrying."""
    def cli(*args: str) -> object:
        code = main(["--db", sqlite_url, "--json", *args])
        out = capsys.readouterr().out
        assert code == 0, out
        return json.loads(out)

    eips = [cli("eip", "create", "--vip", f"203.0.113.{n}") for n in (30, 31)]
    for n, eip in enumerate(eips):
        assert isinstance(eip, dict)
        cli("attach", eip["uuid"], "--nic", f"n{n}", "--guest-ip", f"10.0.1.{n}", "--vm", f"vm{n}", "--host", "h1")
        cli("vm", "stop", f"vm{n}")
    monkeypatch.setenv("EIPFLOW_SIM_FAIL", "apply")
    cli("--retry-attempts", "1", "vm", "start", "vm0", "--host", "h2")
    cli("--retry-attempts", "3", "--retry-backoff", "60", "vm", "start", "vm1", "--host", "h2")
    statuses = {w["eip_uuid"]: (w["status"], w["attempts"]) for w in cli("work", "list", "--status", "parked",  # type: ignore[union-attr]
                                                                         "--status", "pending")}
    assert statuses == {eips[0]["uuid"]: ("parked", 1), eips[1]["uuid"]: ("pending", 1)}  # type: ignore[index]
    assert main(["--db", sqlite_url, "--retry-attempts", "0", "eip", "list"]) == 2


def test_prune_sql_deletes_by_id_batches(db_url: str, clock: ManualClock) -> None:
    """Batches smaller than the backlog still delete all of it (each batch its own transaction)."""
    with Eipflow.open(db_url, InMemoryDataplane(), clock=clock) as flow:
        eip = flow.create_eip("203.0.113.40")
        for _ in range(3):
            flow.attach(eip.uuid, nic="n", guest_ip="10.0.0.40", vm="vm", host="h1")
            flow.detach(eip.uuid)
        clock.advance(DAY)
        versions = [r.version for r in flow.history(eip.uuid)]
        counts = flow.store.prune(history_before=clock.now(), work_before=clock.now(), batch_size=2)
        assert counts["history"] == len(versions) - 1
        assert [r.version for r in flow.history(eip.uuid)] == [versions[-1]]
        with flow.store.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(WORK)).scalar() == 0

"""Workers: draining, SKIP LOCKED / CAS claims, leases and heartbeats, backoff and parking, graceful stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import structlog
from freezegun import freeze_time

from eipflow import Eipflow, InMemoryDataplane, ManualClock, RetryPolicy
from eipflow.cli import main
from eipflow.invariants import check
from eipflow.worker import Worker

VIPS = [f"203.0.113.{n}" for n in range(30, 40)]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # main() configures structlog to print to the sys.stderr of that moment (pytest's capture,
    # closed after the test); put the test configuration back so later tests can log.
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def _attach(flow: Eipflow, uuid: str, n: int, *, wait: bool = False, host: str = "h1") -> None:
    flow.attach(uuid, nic=f"nic-{n}", guest_ip=f"10.0.0.{n}", vm=f"vm-{n}", host=host, wait=wait)


def test_run_once_drains_chains(flow: Eipflow, backend: InMemoryDataplane) -> None:
    """--once runs everything due now, including items that running items make due (release → apply)."""
    a, b, c = (flow.create_eip(v) for v in VIPS[:3])
    _attach(flow, a.uuid, 1)
    _attach(flow, b.uuid, 2)
    _attach(flow, c.uuid, 3, wait=True)
    flow.vm_migrated("vm-3", "h2", wait=False)  # attached → releasing: revoke h1, then apply h2
    worker = Worker(flow, heartbeat_interval=None)
    assert worker.run_once() == 4  # a's apply, b's apply, c's revoke, then c's new apply
    assert {e.uuid: (e.state, e.applied_host) for e in flow.list_eips()} == {
        a.uuid: ("attached", "h1"), b.uuid: ("attached", "h1"), c.uuid: ("attached", "h2"),
    }
    assert worker.run_once() == 0
    assert check(flow.store, backend) == []


def test_claims_are_exclusive_between_workers(flow: Eipflow, backend: InMemoryDataplane) -> None:
    """Two workers claiming at once never get the same item (SKIP LOCKED on PG/MariaDB, CAS on SQLite)."""
    eips = [flow.create_eip(v) for v in VIPS[:8]]
    for n, e in enumerate(eips, start=1):
        _attach(flow, e.uuid, n)
    workers = [Worker(flow, heartbeat_interval=None, owner=f"w{i}") for i in range(2)]
    expected_skip_locked = flow.store.engine.dialect.name != "sqlite"
    assert all(w.skip_locked is expected_skip_locked for w in workers)
    barrier = threading.Barrier(2)
    claimed: dict[str, list[int]] = {"w0": [], "w1": []}

    def grab(worker: Worker) -> None:
        barrier.wait()
        while (item := worker.claim_next()) is not None:
            claimed[worker.owner].append(item.id)

    threads = [threading.Thread(target=grab, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    ids = claimed["w0"] + claimed["w1"]
    assert sorted(ids) == sorted(e.work_id for e in flow.list_eips() if e.work_id is not None)
    assert len(ids) == len(set(ids)) == 8
    owners = {w.id: w.lease_owner for w in flow.work_items(statuses=["running"])}
    assert all(owners[i] == "w0" for i in claimed["w0"]) and all(owners[i] == "w1" for i in claimed["w1"])


def test_expired_lease_is_reclaimed(db_url: str) -> None:
    """A dead worker's lease blocks the item until it expires; then the next worker re-runs it."""
    backend = InMemoryDataplane()
    with freeze_time("2026-03-01 12:00:00", tick=False) as frozen, \
            Eipflow.open(db_url, backend, owner="api", lease_seconds=30) as flow:
        eip = flow.create_eip(VIPS[0])
        _attach(flow, eip.uuid, 1)
        assert flow.store.claim(flow.get_eip(eip.uuid).work_id or 0, "dead-worker", 30) is not None
        worker = Worker(flow, heartbeat_interval=None, owner="w1")
        assert worker.run_once() == 0
        flow.store.lease_clock.advance(28)  # leases are judged on the shared clock, never this process's
        frozen.tick(timedelta(seconds=60))
        assert worker.run_once() == 0  # a process clock past the lease changes nothing: still held
        flow.store.lease_clock.advance(3)
        assert worker.run_once() == 1
        row = flow.get_eip(eip.uuid)
        assert (row.state, row.applied_host) == ("attached", "h1")
        (item,) = flow.work_items(eip_uuid=eip.uuid)
        assert (item.status, item.attempts) == ("done", 2)
        assert [r.actor for r in flow.history(eip.uuid)][-2:] == ["w1", "w1"]
        assert check(flow.store, backend) == []


def test_backoff_schedule_then_park_then_retry(db_url: str) -> None:
    """Failed revokes back off exponentially (within jitter), park after max attempts, and `retry` re-queues."""
    backend = InMemoryDataplane()
    policy = RetryPolicy(max_attempts=4, base_delay_s=2.0, factor=2.0, max_delay_s=300.0, jitter=0.25)
    with freeze_time("2026-03-01 12:00:00", tick=False) as frozen, \
            Eipflow.open(db_url, backend, owner="api", retry=policy) as flow:
        eip = flow.create_eip(VIPS[0])
        _attach(flow, eip.uuid, 1, wait=True)
        backend.faults.fail("revoke", times=None)
        worker = Worker(flow, heartbeat_interval=None)
        flow.detach(eip.uuid, wait=False)
        delays = []
        for attempt in range(1, 5):
            assert worker.run_once() == 1
            (item,) = flow.work_items(statuses=["pending", "parked"], eip_uuid=eip.uuid)
            assert item.attempts == attempt
            if attempt < 4:
                assert item.status == "pending"
                delay = (item.due_at - datetime.now(UTC)).total_seconds()
                raw = 2.0 * 2 ** (attempt - 1)
                assert raw * 0.75 <= delay <= raw * 1.25
                delays.append(delay)
                frozen.tick(timedelta(seconds=delay - 0.5))
                assert worker.run_once() == 0  # not due yet
                frozen.tick(timedelta(seconds=0.5))
        assert delays == sorted(delays)
        assert item.status == "parked"
        row = flow.get_eip(eip.uuid)
        assert row.state == "detaching"
        assert row.last_error is not None and row.last_error.startswith("parked after 4 attempts")
        frozen.tick(timedelta(hours=1))
        assert worker.run_once() == 0  # parked items wait for an operator
        backend.faults.clear()
        again = flow.retry_work(item.id)
        assert (again.status, again.attempts) == ("pending", 0)
        assert worker.run_once() == 1
        assert flow.get_eip(eip.uuid).state == "detached"
        assert len(backend.calls_for(eip.uuid, "revoke")) == 5
        assert check(flow.store, backend) == []


def test_heartbeat_renews_a_whole_batch_and_lets_a_taken_item_go(db_url: str) -> None:
    """A batch whose backend call outlives its leases: one renewal statement keeps all of them ours; an item
    another owner took meanwhile is dropped from the renewals (its completion is fenced), the rest go on."""
    backend = InMemoryDataplane()
    clock = ManualClock()
    with Eipflow.open(db_url, backend, clock=clock, owner="api") as flow:
        uuids = [flow.create_eip(VIPS[i]).uuid for i in range(3)]
        for i, uuid in enumerate(uuids):
            _attach(flow, uuid, i + 1)
        gate = backend.faults.block("apply")
        worker = Worker(flow, lease_seconds=5, heartbeat_interval=0.01, owner="slow")
        runner = threading.Thread(target=worker.run_once)
        runner.start()
        try:
            gate.wait_entered()
            taken = flow.work_items(eip_uuid=uuids[2])[0]
            with flow.store.engine.begin() as conn:  # another owner took this lease (it expired for them)
                conn.execute(sa.text("UPDATE eip_work SET lease_owner = 'thief' WHERE id = :i"), {"i": taken.id})
            flow.store.lease_clock.advance(60)
            for _ in range(2):
                worker.heartbeat.clear()
                assert worker.heartbeat.wait(30)
            items = {w.eip_uuid: w for w in flow.work_items()}
            now = flow.store.lease_clock.now()
            assert all(items[u].lease_owner == "slow" and items[u].lease_expires_at > now  # type: ignore[operator]
                       for u in uuids[:2])
            assert items[uuids[2]].lease_owner == "thief"
            assert items[uuids[2]].lease_expires_at < now  # type: ignore[operator]  # never renewed for another owner
        finally:
            gate.release()
            runner.join(timeout=60)
        assert [flow.get_eip(u).state for u in uuids] == ["attached"] * 3
        # The taken item's completion was fenced; its lease then expired (the "thief" never renewed it) and the
        # worker's next claim ran it again: a second attempt, an idempotent second apply.
        (again,) = flow.work_items(eip_uuid=uuids[2])
        assert again.attempts == 2
        assert [c.outcome for c in backend.calls_for(uuids[2], "apply")] == ["ok", "ok"]
        assert [w.attempts for u in uuids[:2] for w in flow.work_items(eip_uuid=u)] == [1, 1]


def test_heartbeat_keeps_a_slow_call_leased(db_url: str) -> None:
    """While the backend call outlives the lease, the heartbeat renews it: nobody else can claim it."""
    backend = InMemoryDataplane()
    clock = ManualClock()
    with Eipflow.open(db_url, backend, clock=clock, owner="api") as flow:
        eip = flow.create_eip(VIPS[0])
        _attach(flow, eip.uuid, 1)
        gate = backend.faults.block("apply", eip_uuid=eip.uuid)
        worker = Worker(flow, lease_seconds=5, heartbeat_interval=0.01, owner="slow")
        other = Worker(flow, lease_seconds=5, heartbeat_interval=None, owner="other")
        runner = threading.Thread(target=worker.run_once)
        runner.start()
        try:
            gate.wait_entered()
            flow.store.lease_clock.advance(60)  # far beyond the first lease, for every process
            for _ in range(2):  # the second beat surely read the clock after the advance
                worker.heartbeat.clear()
                assert worker.heartbeat.wait(30)
            assert other.claim_next() is None
            (item,) = flow.work_items(eip_uuid=eip.uuid)
            assert item.lease_owner == "slow"
            assert item.lease_expires_at is not None and item.lease_expires_at > flow.store.lease_clock.now()
        finally:
            gate.release()
            runner.join(timeout=60)
        assert flow.get_eip(eip.uuid).state == "attached"
        assert [w.cleanup for w in flow.work_items()] == [False]
        assert check(flow.store, backend) == []


def test_stop_finishes_the_current_item(flow: Eipflow, backend: InMemoryDataplane) -> None:
    """stop() during a backend call lets that item complete, then run_forever returns without taking more."""
    a, b = flow.create_eip(VIPS[0]), flow.create_eip(VIPS[1])
    _attach(flow, a.uuid, 1)
    gate = backend.faults.block("apply", eip_uuid=a.uuid)
    worker = Worker(flow, heartbeat_interval=None, poll_interval=0.01)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(worker.run_forever()))
    thread.start()
    gate.wait_entered()
    _attach(flow, b.uuid, 2)  # due now, but the worker is asked to stop first
    worker.stop()
    gate.release()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert result == [1]
    assert flow.get_eip(a.uuid).state == "attached"
    assert flow.get_eip(b.uuid).state == "binding"
    assert [w.status for w in flow.work_items(eip_uuid=b.uuid)] == ["pending"]


def test_stop_between_claim_and_run_releases_the_lease(flow: Eipflow, backend: InMemoryDataplane) -> None:
    """An item claimed after stop() was requested goes back to pending, due at once."""
    eip = flow.create_eip(VIPS[0])
    _attach(flow, eip.uuid, 1)
    worker = Worker(flow, heartbeat_interval=None)
    worker.stop()
    assert worker.run_one() is None
    (item,) = flow.work_items(eip_uuid=eip.uuid)
    assert (item.status, item.lease_owner, item.attempts) == ("pending", None, 1)
    assert Worker(flow, heartbeat_interval=None).run_once() == 1
    assert flow.get_eip(eip.uuid).state == "attached"


# -- CLI --------------------------------------------------------------------------------------------
def _cli(url: str, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["--db", url, *args])
    return code, capsys.readouterr().out


def test_cli_work_list_retry_and_worker_once(sqlite_url: str, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`work list` shows attempts and last error, `work retry` re-queues, `worker --once` drains."""
    with Eipflow.open(sqlite_url) as flow:
        eip = flow.create_eip(VIPS[0])
        _attach(flow, eip.uuid, 1, wait=True)
    monkeypatch.setenv("EIPFLOW_SIM_FAIL", "revoke")
    code, out = _cli(sqlite_url, "detach", eip.uuid, capsys=capsys)
    assert code == 0
    code, out = _cli(sqlite_url, "--json", "work", "list", "--status", "parked", "--status", "pending", capsys=capsys)
    assert code == 0
    items = json.loads(out)
    assert [(i["action"], i["attempts"]) for i in items] == [("revoke", 1)]
    assert "EIPFLOW_SIM_FAIL" in items[0]["last_error"]
    item_id = items[0]["id"]
    code, text = _cli(sqlite_url, "work", "list", capsys=capsys)
    assert "LAST ERROR" in text and "simulated revoke failure" in text
    monkeypatch.delenv("EIPFLOW_SIM_FAIL")
    assert items[0]["status"] == "pending"  # backing off: due in about a second
    code, out = _cli(sqlite_url, "--json", "work", "retry", str(item_id), capsys=capsys)
    assert code == 0 and (json.loads(out)["status"], json.loads(out)["attempts"]) == ("pending", 0)
    code, out = _cli(sqlite_url, "--json", "worker", "--once", "--lease-seconds", "5", capsys=capsys)
    assert code == 0
    assert json.loads(out)["remaining"] == 0
    code, out = _cli(sqlite_url, "--json", "eip", "show", eip.uuid, capsys=capsys)
    assert json.loads(out)["state"] == "detached"
    assert _cli(sqlite_url, "work", "retry", "9999", capsys=capsys)[0] == 3  # not found


def test_cli_retry_of_a_done_item_is_a_conflict(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with Eipflow.open(sqlite_url) as flow:
        eip = flow.create_eip(VIPS[0])
        _attach(flow, eip.uuid, 1, wait=True)
        (item,) = flow.work_items()
    assert _cli(sqlite_url, "work", "retry", str(item.id), capsys=capsys)[0] == 4


# -- a real worker process and signals -------------------------------------------------------------
CLI = [sys.executable, "-c", "import sys; from eipflow.cli import main; sys.exit(main(sys.argv[1:]))"]


def _wait_for(path: Path, proc: subprocess.Popen[bytes], deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while not path.exists():  # a separate process: a file is the only signal it can give us
        assert proc.poll() is None, "worker exited early"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


@pytest.fixture
def gate_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "gate"
    d.mkdir()
    yield d
    (d / "release").touch()


def _signal_two_item_worker(sqlite_url: str, gate_dir: Path, sig: signal.Signals, *args: str) -> None:
    """Two attaches queued; an `eipflow worker` process is signalled while its first apply waits at the gate,
    then the gate opens; it must exit 0."""
    with Eipflow.open(sqlite_url) as flow:
        a, b = flow.create_eip(VIPS[0]), flow.create_eip(VIPS[1])
        _attach(flow, a.uuid, 1)
        _attach(flow, b.uuid, 2)
    env = {**os.environ, "EIPFLOW_DB": sqlite_url, "EIPFLOW_SIM_GATE": str(gate_dir)}
    proc = subprocess.Popen([*CLI, "worker", "--poll-interval", "0.05", *args], env=env, stderr=subprocess.PIPE)
    try:
        _wait_for(gate_dir / "entered", proc)
        proc.send_signal(sig)
        (gate_dir / "release").touch()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_worker_process_stops_gracefully(sqlite_url: str, gate_dir: Path, sig: signal.Signals) -> None:
    """`eipflow worker --batch-size 1` finishes its current item on SIGTERM/SIGINT and exits 0, leaving later
    work queued."""
    _signal_two_item_worker(sqlite_url, gate_dir, sig, "--batch-size", "1")
    with Eipflow.open(sqlite_url) as flow:
        states = sorted(e.state for e in flow.list_eips())
        assert states == ["attached", "binding"]
        assert [w.status for w in flow.work_items()].count("pending") == 1
        assert Worker(flow, heartbeat_interval=None).run_once() == 1
        assert check(flow.store, flow.backend) == []


def test_due_items_come_expired_leases_first_then_in_due_order(db_url: str) -> None:
    """The claim order every worker uses (CAS pick and SKIP LOCKED pick alike), on every database."""
    clock = ManualClock(datetime(2026, 3, 1, tzinfo=UTC))
    flow = Eipflow.open(db_url, InMemoryDataplane(), clock=clock, owner="w")
    try:
        eips = [flow.create_eip(v) for v in VIPS[:3]]
        for n, e in enumerate(eips, start=1):
            _attach(flow, e.uuid, n)  # one pending apply each, due one second apart
            clock.advance(1)
        first, second, third = (flow.store.get(e.uuid).work_id for e in eips)  # type: ignore[union-attr]
        assert flow.store.claim(second, "gone-worker", lease_seconds=5) is not None  # its lease will expire
        clock.advance(10)
        flow.store.lease_clock.advance(10)

        assert flow.store.due_work(clock.now()) == [second, first, third]
        assert flow.store.due_work(clock.now(), limit=2) == [second, first]
        worker = Worker(flow, heartbeat_interval=None)
        picked = worker.claim_next()
        assert picked is not None and picked.id == second and picked.lease_owner == worker.owner
        assert picked.attempts == 2  # the expired lease's attempt counts
    finally:
        flow.close()


def test_picking_due_work_never_sorts_the_backlog(sqlite_url: str) -> None:
    """Both picks are in-order range scans of (status, due_at): a backlog of N items costs O(log N) a claim."""
    import sqlalchemy as sa

    from eipflow.store.statements import due_conditions
    from eipflow.store.store import WORK

    with Eipflow.open(sqlite_url, InMemoryDataplane()) as flow:
        with flow.store.engine.connect() as conn:
            for cond in due_conditions(sa.literal_column("'2026-01-01 00:00:00.000000'")):
                stmt = sa.select(WORK.c.id).where(cond).order_by(WORK.c.due_at, WORK.c.id).limit(20)
                sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
                plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
                assert "ix_eip_work_due" in plan and "TEMP B-TREE" not in plan, plan


@pytest.mark.slow
def test_worker_process_stop_finishes_the_batch_in_flight(sqlite_url: str, gate_dir: Path) -> None:
    """With batches, SIGTERM finishes the whole batch whose backend call is in flight (both EIPs, one call),
    and nothing is left leased."""
    _signal_two_item_worker(sqlite_url, gate_dir, signal.SIGTERM)
    with Eipflow.open(sqlite_url) as flow:
        assert sorted(e.state for e in flow.list_eips()) == ["attached", "attached"]
        assert {w.status for w in flow.work_items()} == {"done"}

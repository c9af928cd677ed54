"""The store's contract, run against every database (and on servers at READ COMMITTED and REPEATABLE READ).

What every adapter must guarantee: a compare-and-swap has exactly one winner, history has one row per
version, the database itself refuses a second EIP on one guest IP, and a work item is leased to one
worker at a time. Concurrent cases start their threads on a Barrier.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

from eipflow.clock import ManualClock
from eipflow.errors import GuestIpInUse
from eipflow.store import NewWork, PlannedTransition, Store, create_db_engine, ensure_schema
from eipflow.store.schema import TransitionRow
from eipflow.values import Eip

T = TypeVar("T")
THREADS = 8
HISTORY = TransitionRow.__table__  # type: ignore[attr-defined]


@dataclass
class Ctx:
    store: Store
    clock: ManualClock
    isolation: str


@pytest.fixture(params=["default", "REPEATABLE READ"])
def ctx(request: pytest.FixtureRequest, db_url: str) -> Iterator[Ctx]:
    """A store on a fresh database; on servers also at REPEATABLE READ (SQLite has one writer, nothing to vary)."""
    isolation = request.param
    kwargs: dict[str, Any] = {}
    if isolation != "default":
        if db_url.startswith("sqlite"):
            pytest.skip("SQLite serializes writers; isolation levels do not apply")
        kwargs["isolation_level"] = isolation
    engine = create_db_engine(db_url, **kwargs)
    ensure_schema(engine)
    clock = ManualClock()
    try:
        yield Ctx(Store(engine, clock), clock, isolation)
    finally:
        engine.dispose()


def _race(n: int, fn: Callable[[int], T]) -> list[T | BaseException]:
    """Run ``fn(i)`` in ``n`` threads released together; results (or exceptions) by index."""
    barrier = threading.Barrier(n)
    out: list[T | BaseException] = [RuntimeError("not run")] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - returned to the test, which asserts on it
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _bind(eip: Eip, guest_ip: str, n: int = 0) -> PlannedTransition:
    return PlannedTransition(
        eip=eip, event="attach", target="binding",
        changes={"vm_nic_uuid": f"nic-{n}", "guest_ip": guest_ip, "vm_uuid": f"vm-{n}", "desired": "attached"},
        new_work=NewWork("apply", eip.vip, f"nic-{n}", guest_ip, None),
        actor=f"writer-{n}",
    )


def test_cas_has_exactly_one_winner(ctx: Ctx) -> None:
    """Eight writers commit from the same version: one wins, the others get ``None`` and wrote nothing."""
    eip = ctx.store.create("00000000-0000-4000-8000-000000000001", "203.0.113.1", None, actor="t", op_id=None)
    results = _race(THREADS, lambda i: ctx.store.commit(_bind(eip, f"10.0.0.{i + 1}", i)))

    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    winners = [i for i, r in enumerate(results) if r is not None]
    assert len(winners) == 1, results
    row = ctx.store.require(eip.uuid)
    assert (row.state, row.version, row.guest_ip) == ("binding", 2, f"10.0.0.{winners[0] + 1}")
    history = ctx.store.history(eip.uuid)
    assert [(h.version, h.to_state, h.actor) for h in history] == [
        (1, "detached", "t"), (2, "binding", f"writer-{winners[0]}")
    ]
    # The losers' work items were rolled back with their transaction: one item, the winner's.
    items = ctx.store.list_work(eip_uuid=eip.uuid)
    assert [(w.id, w.spec) for w in items] == [(row.work_id, None)]


def test_stale_writer_and_false_predicate_lose(ctx: Ctx) -> None:
    """A plan built from an old version, or whose extra predicate no longer holds, changes nothing."""
    eip = ctx.store.create("00000000-0000-4000-8000-000000000002", "203.0.113.2", None, actor="t", op_id=None)
    bound = ctx.store.commit(_bind(eip, "10.0.0.1"))
    assert bound is not None and bound.version == 2
    assert ctx.store.commit(_bind(eip, "10.0.0.2")) is None  # stale: built from version 1
    mismatched = PlannedTransition(
        eip=bound, event="rollback", target="detached", changes={"guest_ip": None, "vm_nic_uuid": None},
        predicates={"guest_ip": "10.0.0.99"},  # the conditional rollback: not our binding any more
    )
    assert ctx.store.commit(mismatched) is None
    row = ctx.store.require(eip.uuid)
    assert (row.version, row.guest_ip) == (2, "10.0.0.1")
    assert [h.version for h in ctx.store.history(eip.uuid)] == [1, 2]


def test_history_has_one_row_per_version(ctx: Ctx) -> None:
    """Successive commits chain versions 1..n, and the database refuses a second row for a version."""
    eip = ctx.store.create("00000000-0000-4000-8000-000000000003", "203.0.113.3", None, actor="t", op_id=None)
    row: Eip | None = eip
    for name in ("a", "b", "c"):
        assert row is not None
        row = ctx.store.commit(PlannedTransition(eip=row, event="rename", target="detached", changes={"name": name}))
    assert row is not None and (row.version, row.name) == (4, "c")
    history = ctx.store.history(eip.uuid)
    assert [(h.version, h.from_state, h.to_state) for h in history] == [
        (1, "", "detached"), (2, "detached", "detached"), (3, "detached", "detached"), (4, "detached", "detached")
    ]
    with pytest.raises(sa.exc.IntegrityError), ctx.store.engine.begin() as conn:
        conn.execute(HISTORY.insert().values(
            eip_uuid=eip.uuid, event="x", from_state="detached", to_state="detached", version=3,
            at=ctx.clock.now(),
        ))


def test_database_enforces_one_eip_per_guest_ip(ctx: Ctx) -> None:
    """Two EIPs race to bind one guest IP: the unique constraint lets one in, the other gets GuestIpInUse."""
    eips = [
        ctx.store.create(f"00000000-0000-4000-8000-00000000001{i}", f"203.0.113.1{i}", None, actor="t", op_id=None)
        for i in range(THREADS)
    ]
    results = _race(THREADS, lambda i: ctx.store.commit(_bind(eips[i], "10.9.9.9", i)))

    won = [i for i, r in enumerate(results) if isinstance(r, Eip)]
    refused = [r for r in results if isinstance(r, GuestIpInUse)]
    assert len(won) == 1 and len(refused) == THREADS - 1, results
    holder = eips[won[0]].uuid
    assert all(r.guest_ip == "10.9.9.9" for r in refused)
    assert {r.holder for r in refused} == {holder}
    assert ctx.store.holder_of_guest_ip("10.9.9.9") == holder
    for i, e in enumerate(eips):
        row = ctx.store.require(e.uuid)
        assert (row.version, row.guest_ip) == ((2, "10.9.9.9") if i == won[0] else (1, None))


def test_claim_is_exclusive(ctx: Ctx) -> None:
    """Eight workers claim one due item: one lease; once it expires, exactly one other worker takes it."""
    eip = ctx.store.create("00000000-0000-4000-8000-000000000004", "203.0.113.4", None, actor="t", op_id=None)
    work_id = ctx.store.add_work(eip.uuid, NewWork("revoke", eip.vip, "nic-1", "10.0.0.1", "host-1", cleanup=True))

    first = _race(THREADS, lambda i: ctx.store.claim(work_id, f"w{i}", 30))
    assert not [r for r in first if isinstance(r, BaseException)]
    holders = [r for r in first if r is not None]
    assert len(holders) == 1
    item = holders[0]
    assert not isinstance(item, BaseException)
    assert (item.status, item.attempts) == ("running", 1)

    ctx.store.lease_clock.advance(31)  # the lease expired (on the shared clock): the holder died
    second = _race(THREADS, lambda i: ctx.store.claim(work_id, f"v{i}", 30))
    assert not [r for r in second if isinstance(r, BaseException)]
    took = [r for r in second if r is not None]
    assert len(took) == 1
    again = took[0]
    assert not isinstance(again, BaseException)
    assert again.attempts == 2 and again.lease_owner != item.lease_owner
    # The first holder's lease is gone: it can no longer finish the item.
    assert item.lease_owner is not None
    assert ctx.store.set_work_status(work_id, item.lease_owner, "done") is False
    assert again.lease_owner is not None
    assert ctx.store.set_work_status(work_id, again.lease_owner, "done") is True


def test_leases_are_judged_on_the_databases_clock_for_every_process(ctx: Ctx) -> None:
    """A second store (another process) whose own clock is a day ahead cannot take a live lease; moving the
    shared lease clock expires it for everyone; a renewal is measured from the shared clock too."""
    from datetime import UTC, datetime, timedelta

    eip = ctx.store.create("00000000-0000-4000-8000-000000000005", "203.0.113.5", None, actor="t", op_id=None)
    work_id = ctx.store.add_work(eip.uuid, NewWork("revoke", eip.vip, "nic-1", "10.0.0.1", "host-1", cleanup=True,
                                                   generation=2))
    ahead = Store(ctx.store.engine, ManualClock(datetime.now(UTC) + timedelta(days=1)))
    held = ctx.store.claim(work_id, "holder", 30)
    assert held is not None and held.spec is not None and held.spec.generation == 2
    shared = ctx.store.lease_clock
    assert held.lease_expires_at is not None
    assert timedelta(seconds=29) < held.lease_expires_at - shared.now() <= timedelta(seconds=30)
    assert ahead.claim(work_id, "thief", 30) is None  # its own clock says the lease is long over: irrelevant
    assert ahead.due_work(ahead.clock.now()) == []

    shared.advance(31)
    assert shared.skew() == pytest.approx(31)
    assert ahead.due_work(ahead.clock.now()) == [work_id]
    assert ctx.store.extend_lease(work_id, "holder", 30)  # the holder was only paused: it renews first
    assert ahead.claim(work_id, "thief", 30) is None
    shared.advance(31)
    taken = ahead.claim(work_id, "thief", 30)
    assert taken is not None and (taken.lease_owner, taken.attempts) == ("thief", 2)
    assert not ctx.store.extend_lease(work_id, "holder", 30)  # the old holder's renewal now fails

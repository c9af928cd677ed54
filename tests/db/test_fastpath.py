"""The driver-level fast path: pinned connections and the optimistic row cache, on every database.

Two :class:`Eipflow` instances on one database stand for two processes: each has its own pinned
connections and its own row cache, so one's writes make the other's remembered rows stale.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from eipflow import Eipflow, IllegalTransition, InMemoryDataplane, InvalidInput
from eipflow.invariants import check
from eipflow.store import NewWork

VIP = "203.0.113.10"


@pytest.fixture
def pair(db_url: str) -> Iterator[tuple[Eipflow, Eipflow, InMemoryDataplane]]:
    backend = InMemoryDataplane()
    a = Eipflow.open(db_url, backend, owner="a")
    b = Eipflow.open(db_url, backend, owner="b")
    try:
        yield a, b, backend
    finally:
        a.close()
        b.close()


def _attach(flow: Eipflow, uuid: str, **kw: Any) -> Any:
    return flow.attach(uuid, nic="nic-1", guest_ip="192.0.2.10", vm="vm-1", host="host-1", **kw)


def _fast(flow: Eipflow) -> Any:
    fast = flow.store._fast
    assert fast is not None, "the fast path is on for every supported driver"
    return fast


def _is_closed(conn: Any) -> bool:
    if hasattr(conn, "closed"):  # psycopg
        return bool(conn.closed)
    if hasattr(conn, "open"):  # PyMySQL
        return not conn.open
    try:  # sqlite3
        conn.execute("SELECT 1")
    except Exception:  # noqa: BLE001 - sqlite3.ProgrammingError: closed
        return True
    return False


def test_a_stale_snapshot_is_read_again_and_the_intent_decided_on_the_fresh_row(pair: Any) -> None:
    a, b, backend = pair
    eip = a.create_eip(VIP)
    attached = _attach(a, eip.uuid)
    assert _fast(a).rows.rows[eip.uuid].version == attached.version  # a remembers what it wrote

    stopped = b.vm_stopped("vm-1")  # another process moves the row: a's snapshot is stale now
    assert [e.state for e in stopped] == ["released"]

    done = a.detach(eip.uuid)  # decided on "attached" first: that plan's compare-and-swap must lose
    assert done.state == "detached"
    events = [(r.event, r.from_state, r.to_state) for r in a.history(eip.uuid)]
    assert events[-1] == ("detach", "released", "detached")  # from the fresh row, not the snapshot
    assert [r.version for r in a.history(eip.uuid)] == list(range(1, done.version + 1))
    assert backend.rules() == []
    assert check(a.store, backend, quiescent=True) == []


def test_a_stale_snapshot_never_leaves_the_losing_plans_work_item_behind(pair: Any) -> None:
    a, b, backend = pair
    eip = a.create_eip(VIP)
    _attach(a, eip.uuid)
    b.detach(eip.uuid)  # a still remembers "attached", where a detach would enqueue a revoke
    items_before = len(a.store.list_work())
    history_before = a.history(eip.uuid)

    with pytest.raises(IllegalTransition) as raised:
        a.detach(eip.uuid)  # on the fresh row (detached) the detach is illegal, as without a cache
    assert raised.value.state == "detached"
    assert len(a.store.list_work()) == items_before  # the revoke inserted before the lost CAS rolled back
    assert a.history(eip.uuid) == history_before
    assert check(a.store, backend, quiescent=True) == []


def test_a_relinked_work_item_is_not_overwritten_by_a_snapshot_of_the_same_version(pair: Any) -> None:
    a, _b, _backend = pair
    eip = a.create_eip(VIP)
    binding = _attach(a, eip.uuid, wait=False)
    assert binding.state == "binding" and binding.work_id is not None
    # The reconciler gives the row a new work item without a new version (no state change, no history).
    new_id = a.store.relink_work(binding, NewWork("apply", VIP, "nic-1", "192.0.2.10", None))
    assert new_id is not None and new_id != binding.work_id

    recorded = a.runner.fire(eip.uuid, "detach", {"desired": "detached"})  # remembered: old work_id

    assert recorded.state == "binding" and recorded.desired == "detached"
    assert recorded.work_id == new_id  # the work_id guard made the snapshot's CAS lose
    row = a.store.get(eip.uuid)
    assert row is not None and row.work_id == new_id and row.version == recorded.version


def test_a_remembered_row_saves_the_read(sqlite_url: str) -> None:
    """After a write, the next intent on that EIP sends no SELECT: BEGIN, work INSERT, CAS UPDATE, history, COMMIT."""
    with Eipflow.open(sqlite_url, InMemoryDataplane()) as flow:
        eip = flow.create_eip(VIP)
        _attach(flow, eip.uuid)
        seen: list[str] = []
        pin = _fast(flow)._pin()
        pin.conn.set_trace_callback(seen.append)
        try:
            detaching = flow.runner.fire(eip.uuid, "detach", {"desired": "detached"})
        finally:
            pin.conn.set_trace_callback(None)
        assert detaching.state == "detaching" and detaching.work_id is not None
    verbs = [s.split()[0].upper() for s in seen]
    assert verbs == ["BEGIN", "INSERT", "UPDATE", "INSERT", "COMMIT"], seen


def test_a_broken_pinned_connection_is_replaced_and_the_call_still_lands(flow: Eipflow) -> None:
    eip = flow.create_eip(VIP)
    fast = _fast(flow)
    first = fast._pin()
    first.conn.close()  # the server dropped it, say

    recorded = flow.runner.fire(eip.uuid, "delete")

    assert recorded.state == "deleted"
    assert flow.store.get(eip.uuid) is None
    assert [r.event for r in flow.history(eip.uuid)] == ["create", "delete"]
    assert first.fairy is None and fast._pin() is not first


def test_pins_are_closed_when_their_thread_ends_and_on_close(db_url: str) -> None:
    flow = Eipflow.open(db_url, InMemoryDataplane())
    eip = flow.create_eip(VIP)
    conns: list[Any] = []

    def work() -> None:
        flow.store.get(eip.uuid)
        conns.append(_fast(flow)._local.pin.conn)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    gc.collect()
    assert _is_closed(conns[0])  # the thread's pin went with the thread

    flow.store.get(eip.uuid)
    main_conn = _fast(flow)._local.pin.conn
    assert not _is_closed(main_conn)
    flow.close()
    assert _is_closed(main_conn)


def test_the_row_cache_is_bounded_and_can_be_turned_off(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EIPFLOW_ROW_CACHE", "2")
    with Eipflow.open(sqlite_url, InMemoryDataplane()) as flow:
        eips = [flow.create_eip(f"203.0.113.{i}") for i in range(1, 6)]
        for e in eips:
            assert flow.store.get(e.uuid) is not None
        assert 0 < len(_fast(flow).rows.rows) <= 2
        assert [flow.runner.fire(e.uuid, "delete").state for e in eips] == ["deleted"] * 5  # cached or not
        assert _fast(flow).rows.rows == {}  # deleted rows are forgotten
    monkeypatch.setenv("EIPFLOW_ROW_CACHE", "0")
    with Eipflow.open(sqlite_url, InMemoryDataplane()) as flow:
        e = flow.create_eip("203.0.113.9")
        assert flow.store.get(e.uuid) is not None
        assert flow.delete_eip(e.uuid).state == "deleted"
        assert _fast(flow).rows.rows == {}


def test_a_bad_row_cache_setting_is_a_typed_error_naming_it(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EIPFLOW_ROW_CACHE", "lots")
    with pytest.raises(InvalidInput, match="EIPFLOW_ROW_CACHE: 'lots'"):
        Eipflow.open(sqlite_url, InMemoryDataplane())


def test_a_forked_child_never_uses_or_closes_the_parents_pin(flow: Eipflow) -> None:
    """Prefork servers (Celery, gunicorn) fork after the parent has used eipflow: the socket stays the parent's."""
    eip = flow.create_eip(VIP)
    parent_pin = _fast(flow)._pin()
    pid = os.fork()
    if pid == 0:  # the child: its own pin, the parent's left alone
        code = 1
        try:
            row = flow.store.get(eip.uuid)
            code = 0 if row is not None and _fast(flow)._pin() is not parent_pin else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _fast(flow)._pin() is parent_pin and not _is_closed(parent_pin.conn)
    assert flow.delete_eip(eip.uuid).state == "deleted"  # the parent's connection still works


def test_settings_are_parameters_validated_at_the_edge(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """fast path, row cache and SQLite durability are parameters of Eipflow.open / Store; the environment only
    supplies open()'s documented defaults, and a bad value (which would otherwise reach a PRAGMA) is a typed
    error naming the setting, before anything is opened."""
    import sqlalchemy as sa

    from eipflow.store import Store, create_db_engine

    with Eipflow.open(sqlite_url, InMemoryDataplane(), fast_path=False, row_cache=0,
                      sqlite_synchronous="normal") as flow:
        assert flow.store._fast is None
        with flow.store.engine.connect() as conn:
            assert conn.execute(sa.text("PRAGMA synchronous")).scalar() == 1  # NORMAL
    monkeypatch.setenv("EIPFLOW_SQLITE_SYNCHRONOUS", "FULL; PRAGMA journal_mode=DELETE")
    with pytest.raises(InvalidInput, match="EIPFLOW_SQLITE_SYNCHRONOUS"):
        Eipflow.open(sqlite_url, InMemoryDataplane())
    monkeypatch.setenv("EIPFLOW_SQLITE_SYNCHRONOUS", "EXTRA")
    monkeypatch.setenv("EIPFLOW_FASTPATH", "maybe")
    with pytest.raises(InvalidInput, match="EIPFLOW_FASTPATH"):
        Eipflow.open(sqlite_url, InMemoryDataplane())
    with pytest.raises(InvalidInput, match="sqlite_synchronous"):
        create_db_engine(sqlite_url, sqlite_synchronous="FAST")
    engine = create_db_engine(sqlite_url)
    try:
        with pytest.raises(InvalidInput, match="row_cache"):
            Store(engine, row_cache=-1)
        assert Store(engine, fast_path=False)._fast is None and Store(engine)._fast is not None
    finally:
        engine.dispose()

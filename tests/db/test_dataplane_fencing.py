"""Every simulated dataplane applies the generation rule the same way (in memory, and in each database)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from eipflow import InMemoryDataplane, SimulatedDataplane, StaleGeneration
from eipflow.backends.fencing import HostRecord
from eipflow.store import create_db_engine, ensure_schema
from eipflow.values import EipSpec

EIP = "00000000-0000-4000-8000-0000000000aa"


def spec(gen: int, guest: str = "10.0.0.1", nic: str = "nic-1", host: str = "h1") -> EipSpec:
    return EipSpec(EIP, "203.0.113.1", nic, guest, host, gen)


@pytest.fixture(params=["memory", "database"])
def plane(request: pytest.FixtureRequest, db_url: str) -> Iterator[InMemoryDataplane | SimulatedDataplane]:
    if request.param == "memory":
        yield InMemoryDataplane()
        return
    engine = create_db_engine(db_url)
    ensure_schema(engine)
    try:
        yield SimulatedDataplane(engine)
    finally:
        engine.dispose()


def test_an_older_apply_is_refused_and_the_newer_rule_stays(plane: InMemoryDataplane | SimulatedDataplane) -> None:
    plane.apply(spec(7, guest="10.0.0.7"))
    with pytest.raises(StaleGeneration) as info:
        plane.apply(spec(5, guest="10.0.0.5"))  # the zombie's apply of an older binding
    assert (info.value.reason, info.value.current) == ("older", 7)
    assert plane.rules() == [spec(7, guest="10.0.0.7")]
    assert [c.outcome for c in plane.calls] == ["ok", "refused"]


def test_same_generation_is_idempotent_only_with_the_same_content(
    plane: InMemoryDataplane | SimulatedDataplane,
) -> None:
    plane.apply(spec(4))
    plane.apply(spec(4))  # a retried call
    with pytest.raises(StaleGeneration) as info:
        plane.apply(spec(4, guest="10.0.0.9"))
    assert info.value.reason == "changed"
    assert plane.rules() == [spec(4)]


def test_a_revoke_leaves_a_tombstone_that_refuses_late_applies_and_replays(
    plane: InMemoryDataplane | SimulatedDataplane,
) -> None:
    plane.apply(spec(3))
    plane.revoke(spec(5))
    assert plane.rules() == []
    assert plane.record("h1", EIP) == HostRecord(5, None)
    for late in (spec(3), spec(5)):  # the old apply again; an apply of the revoked generation itself
        with pytest.raises(StaleGeneration):
            plane.apply(late)
    plane.revoke(spec(5))  # the same revoke again: a no-op
    with pytest.raises(StaleGeneration):
        plane.revoke(spec(4))  # a replayed older revoke
    assert plane.rules() == [] and plane.record("h1", EIP) == HostRecord(5, None)
    plane.apply(spec(8, guest="10.0.0.8"))  # a newer attach is accepted
    assert plane.rules() == [spec(8, guest="10.0.0.8")]


def test_a_late_revoke_never_removes_a_newer_rule_of_the_same_binding(
    plane: InMemoryDataplane | SimulatedDataplane,
) -> None:
    """The same NIC, guest IP and host re-attached at a newer generation: content alone cannot tell them apart."""
    plane.apply(spec(3))
    plane.revoke(spec(5))
    plane.apply(spec(9))
    with pytest.raises(StaleGeneration) as info:
        plane.revoke(spec(3))  # an orphaned apply's cleanup, decided before the re-attach
    assert info.value.reason == "newer_rule"
    assert plane.rules() == [spec(9)]


def test_hosts_are_fenced_independently(plane: InMemoryDataplane | SimulatedDataplane) -> None:
    plane.apply(spec(9, host="h2"))
    plane.apply(spec(4, host="h1"))  # h1 never saw 9
    assert {(r.host_uuid, r.generation) for r in plane.rules()} == {("h1", 4), ("h2", 9)}


def test_the_database_dataplane_remembers_generations_across_restarts(db_url: str) -> None:
    engine = create_db_engine(db_url)
    ensure_schema(engine)
    try:
        SimulatedDataplane(engine).revoke(spec(6))
        restarted = SimulatedDataplane(engine)  # another process, or the same host after a restart
        with pytest.raises(StaleGeneration):
            restarted.apply(spec(5))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT generation, revoked FROM sim_rule")).all() == [(6, True)]
    finally:
        engine.dispose()

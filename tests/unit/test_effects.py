"""One home for what entering a state does: machine.EFFECTS. The runner's plan, the diagrams' "work enqueued"
column and the invariants all follow it — checked here for every edge of the machine and every combination of
facts, so a new state or event that one of them forgets fails this test."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest

from eipflow.diagrams.spec import work_enqueued
from eipflow.errors import IllegalTransition
from eipflow.machine import ACTIONS, BOUND, CONTINUES, EFFECTS, IN_FLIGHT, EipMachine
from eipflow.runner import Runner
from eipflow.store import LeasedWork
from eipflow.table import TRANSITIONS
from eipflow.values import Eip, EipSpec, WorkItem

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _row(state: str, desired: str, host: str | None, applied: str | None, confirmed: bool) -> Eip:
    bound = state in BOUND
    return Eip(
        uuid="00000000-0000-4000-8000-0000000000ef", name=None, vip="203.0.113.7", state=state, version=5,
        desired=desired, vm_nic_uuid="nic-1" if bound else None, guest_ip="10.0.0.7" if bound else None,
        vm_uuid="vm-1" if bound else None, host_uuid=host, applied_host=applied, attach_confirmed=confirmed,
        work_id=9 if state in IN_FLIGHT else None, last_error="x", created_at=T0, updated_at=T0,
    )


def _item(state: str, row: Eip) -> WorkItem | None:
    if state not in IN_FLIGHT:
        return None
    spec = None if state == "binding" else EipSpec(row.uuid, row.vip, "nic-1", "10.0.0.7", row.applied_host or "h1", 4)
    return WorkItem(9, row.uuid, ACTIONS[state], spec, "running", 1, T0, "me", T0, None, False, T0, T0)


def _plans() -> list[tuple[str, str, Any]]:
    runner = Runner(None, None, owner="me", heartbeat_interval=None)  # type: ignore[arg-type]  # plans only
    out = []
    for (state, event), _options in sorted(TRANSITIONS.items()):
        for desired, host, applied, confirmed in itertools.product(
            ("attached", "detached", "deleted"), (None, "h1", "h2"), (None, "h1"), (False, True)
        ):
            row = _row(state, desired, host, applied, confirmed)
            try:
                plan = runner._plan(row, event, {}, item=_item(state, row))
            except (IllegalTransition, AssertionError):
                continue  # no guard holds for these facts, or a fact combination the store never holds
            out.append((state, event, plan))
    return out


PLANS = _plans()


def test_every_state_has_exactly_one_declaration() -> None:
    assert set(EFFECTS) == {s.value for s in EipMachine.states}
    assert {s for s, e in EFFECTS.items() if e.work} == IN_FLIGHT
    assert all(EFFECTS[s].work_host in (None, "placed", "applied") for s in EFFECTS)


def test_every_edge_is_planned_for_some_facts() -> None:
    planned = {(s, e, p.target) for s, e, p in PLANS}
    declared = {(src, ev, tgt) for (src, ev), options in TRANSITIONS.items() for tgt, _ in options}
    assert declared <= planned


@pytest.mark.parametrize(("source", "event", "plan"), PLANS, ids=[f"{s}-{e}-{p.target}" for s, e, p in PLANS])
def test_the_plan_applies_the_targets_declared_effects(source: str, event: str, plan: Any) -> None:
    target = plan.target
    effects = EFFECTS[target]
    if source == target:
        assert plan.new_work is None and plan.finish_work is None  # a recorded intent only
        assert work_enqueued(source, target) == ""
        return
    for key, value in effects.sets.items():
        assert plan.changes[key] == value, key
    if effects.records_applied_host:
        assert plan.changes["applied_host"] == plan.eip.host_uuid
    if effects.work is None:
        assert plan.new_work is None and plan.update_work is None
        assert target == "deleted" or plan.changes["work_id"] is None
        assert work_enqueued(source, target) == ""
    elif (source, target) in CONTINUES:
        assert plan.new_work is None and plan.finish_work is None
        assert plan.update_work.values == {"host_uuid": plan.eip.host_uuid, "generation": plan.eip.version + 1}
        assert work_enqueued(source, target) == f"continue {effects.work}"
    else:
        work = plan.new_work
        assert work is not None and work.action == effects.work
        where = {"placed": plan.eip.host_uuid, "applied": plan.eip.applied_host, None: None}[effects.work_host]
        assert work.host_uuid == where
        assert work.generation == (plan.eip.version + 1 if where is not None else None)
        assert work_enqueued(source, target) == f"enqueue {effects.work}"
    if source in IN_FLIGHT and (source, target) not in CONTINUES:
        assert plan.finish_work == LeasedWork(9, "me")  # leaving an in-flight state finishes its item

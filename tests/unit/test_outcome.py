"""How an attach ended, read from history once for every face (eipflow.outcome) — every ending and what each
face then raises, from synthetic histories."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from eipflow import AttachFailed, AttachSuperseded, EipNotFound, StepPending, attach_outcome
from eipflow.values import Eip, TransitionRecord

T0 = datetime(2026, 1, 1, tzinfo=UTC)
U = "00000000-0000-4000-8000-0000000000aa"
BINDING = {"nic": "nic-1", "guest_ip": "10.0.0.7", "vm": "vm-1", "host": "h1"}


def _h(version: int, event: str, to: str, op_id: str | None = None, **details: Any) -> TransitionRecord:
    return TransitionRecord(version, U, event, "", to, version, "t", op_id, T0, details)


def _row(state: str, version: int, nic: str | None = "nic-1", ip: str | None = "10.0.0.7",
         work_id: int | None = None) -> Eip:
    return Eip(U, None, "203.0.113.7", state, version, "attached", nic, ip, "vm-1" if nic else None, "h1", "h1",
               False, work_id, None, T0, T0)


ATTACH = [_h(1, "create", "detached"), _h(2, "attach", "binding", "op-1", **BINDING), _h(3, "proceed", "applying")]


@pytest.mark.parametrize(("history", "row", "ended"), [
    ([*ATTACH, _h(4, "apply_ok", "attached")], _row("attached", 4), "attached"),
    ([*ATTACH[:2], _h(3, "proceed", "released")], _row("released", 3), "released"),
    (ATTACH, _row("applying", 3, work_id=5), "pending"),
    ([*ATTACH, _h(4, "apply_failed", "rolling_back", error="boom")], _row("rolling_back", 4, work_id=6), "pending"),
    ([*ATTACH, _h(4, "apply_failed", "rolling_back", error="boom"), _h(5, "revoke_ok", "detached")],
     _row("detached", 5, None, None), "rolled_back"),
    ([*ATTACH, _h(4, "detach", "applying", "op-d"), _h(5, "apply_ok", "detaching"), _h(6, "revoke_ok", "detached")],
     _row("detached", 6, None, None), "superseded"),
    ([*ATTACH, _h(4, "delete", "applying"), _h(5, "apply_ok", "detaching")], None, "superseded"),
])
def test_every_ending(history: list[TransitionRecord], row: Eip | None, ended: str) -> None:
    assert attach_outcome(history, row, U, op_id="op-1").ended == ended


def test_each_ending_raises_what_the_faces_report() -> None:
    done = attach_outcome([*ATTACH, _h(4, "apply_ok", "attached")], _row("attached", 4), U)
    assert done.result().state == "attached"
    failed = [*ATTACH, _h(4, "apply_failed", "rolling_back", error="boom"), _h(5, "revoke_ok", "detached")]
    with pytest.raises(AttachFailed, match="boom"):
        attach_outcome(failed, _row("detached", 5, None, None), U).result()
    overtaken = [*ATTACH, _h(4, "detach", "applying", "op-d")]
    with pytest.raises(AttachSuperseded) as info:
        attach_outcome([*overtaken, _h(5, "revoke_ok", "detached")], _row("detached", 5, None, None), U).result()
    assert (info.value.by_event, info.value.by_op_id, info.value.state) == ("detach", "op-d", "detached")
    with pytest.raises(StepPending):
        attach_outcome(ATTACH, _row("applying", 3, work_id=5), U).result()


def test_a_later_attach_supersedes_an_earlier_one_even_with_the_same_binding() -> None:
    again = [*ATTACH, _h(4, "apply_ok", "attached"), _h(5, "detach", "detaching"), _h(6, "revoke_ok", "detached"),
                      _h(7, "attach", "binding", "op-2", **BINDING), _h(8, "proceed", "applying"),
                      _h(9, "apply_ok", "attached")]
    first = attach_outcome(again, _row("attached", 9), U, op_id="op-1")
    assert first.ended == "superseded" and first.by is not None and first.by.op_id == "op-2"
    assert attach_outcome(again, _row("attached", 9), U, op_id="op-2").ended == "attached"
    assert attach_outcome(again, _row("attached", 9), U, version=7).ended == "attached"


def test_no_such_attach() -> None:
    with pytest.raises(EipNotFound):
        attach_outcome([], None, U)
    with pytest.raises(AttachFailed, match="no such attach"):
        attach_outcome(ATTACH, _row("applying", 3), U, op_id="op-unknown")

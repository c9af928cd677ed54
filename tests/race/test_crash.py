"""Crash recovery (S14, S15): real processes killed with SIGKILL at named points, then restarted.

Each test runs ``eipflow`` commands as subprocesses against one database with the DB-backed simulated
dataplane (so every process sees the same rules). One command runs with ``EIPFLOW_CRASH_AT=<point>``
and a short lease and dies there (exit status -9 proves the point was reached). Other processes may
record intents meanwhile (VM stop, migrate). Then, once the dead process's lease has expired,
``eipflow worker --once`` runs until nothing is in flight, and every invariant must hold: the
dataplane equals the attached EIPs, no in-flight rows or live work, history chains intact, and the
final state is the one the intents ask for.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from eipflow import Eipflow
from eipflow.invariants import check

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-c", "import sys; from eipflow.cli import main; sys.exit(main(sys.argv[1:]))"]
VIP = "198.51.100.7"
ATTACH = ["--nic", "nic-1", "--guest-ip", "10.1.0.7", "--vm", "vm-1", "--host", "h1"]
CRASH_LEASE_S = "0.5"
DEADLINE_S = 60.0


@dataclass
class Env:
    url: str

    def run(
        self, *args: str, crash: str | None = None, extra: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EIPFLOW_")}
        env["EIPFLOW_DB"] = self.url
        if crash is not None:
            env["EIPFLOW_CRASH_AT"] = crash
            env["EIPFLOW_LEASE_SECONDS"] = CRASH_LEASE_S
        env.update(extra or {})
        return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=DEADLINE_S)

    def ok(self, *args: str, **kw: object) -> str:
        done = self.run(*args, **kw)  # type: ignore[arg-type]
        assert done.returncode == 0, f"{args}: rc={done.returncode}\n{done.stderr}"
        return done.stdout

    def crash(self, *args: str, point: str, extra: dict[str, str] | None = None) -> None:
        done = self.run(*args, crash=point, extra=extra)
        assert done.returncode == -signal.SIGKILL, f"{args} did not die at {point}: rc={done.returncode}\n{done.stderr}"

    def recover(self) -> int:
        """Restart workers until nothing is in flight; returns how many ``worker --once`` runs it took."""
        deadline = time.monotonic() + DEADLINE_S
        runs = 0
        with Eipflow.open(self.url) as flow:
            while True:
                busy = [e for e in flow.list_eips() if e.work_id is not None]
                live = flow.work_items(statuses=["pending", "running"])
                if not busy and not live:
                    return runs
                assert time.monotonic() < deadline, f"not quiescent: {busy} {live}"
                now = flow.store.clock.now()
                if not flow.store.due_work(now):
                    # The dead process's lease has not expired yet: nothing is claimable for a moment.
                    time.sleep(0.05)
                    continue
                self.ok("worker", "--once", "--lease-seconds", "30")
                runs += 1

    def flow(self) -> Eipflow:
        return Eipflow.open(self.url)


@pytest.fixture
def env(db_url: str) -> Iterator[Env]:
    yield Env(db_url)


def _new_eip(env: Env, *, attached: bool = False) -> str:
    # Set-up runs in this (separate, surviving) process: only the crashing command needs the CLI.
    with env.flow() as flow:
        uuid = flow.create_eip(VIP).uuid
        if attached:
            flow.attach(uuid, nic="nic-1", guest_ip="10.1.0.7", vm="vm-1", host="h1")
    return uuid


def _final(env: Env, uuid: str) -> tuple[str, str | None, set[tuple[str, str]]]:
    with env.flow() as flow:
        assert check(flow.store, flow.backend) == []
        rules = {(r.host_uuid, r.guest_ip) for r in flow.dataplane()}
        row = flow.store.get(uuid)
        if row is None:
            assert flow.history(uuid)[-1].to_state == "deleted"
            return "deleted", None, rules
        return row.state, row.applied_host, rules


def _in_flight(env: Env, uuid: str) -> str:
    with env.flow() as flow:
        return flow.get_eip(uuid).state


ATTACH_POINTS = ["after_claim", "before_complete:proceed", "before_apply", "after_apply", "before_complete:apply_ok"]


@pytest.mark.parametrize("point", ATTACH_POINTS)
def test_attach_caller_dies(env: Env, point: str) -> None:
    """The inline attach dies anywhere between its intent and its completion: a worker finishes it."""
    uuid = _new_eip(env)
    env.crash("attach", uuid, *ATTACH, point=point)
    assert _in_flight(env, uuid) in ("binding", "applying")
    assert env.recover() >= 1
    assert _final(env, uuid) == ("attached", "h1", {("h1", "10.1.0.7")})


@pytest.mark.parametrize("point", ["after_claim", "before_apply", "after_apply", "before_complete:apply_ok"])
def test_worker_dies(env: Env, point: str) -> None:
    """A worker dies mid-item; after its lease expires the next worker re-runs the item (idempotent apply)."""
    uuid = _new_eip(env)
    env.ok("attach", uuid, *ATTACH, "--no-wait")
    env.crash("worker", "--once", point=point)
    env.recover()
    assert _final(env, uuid) == ("attached", "h1", {("h1", "10.1.0.7")})
    with env.flow() as flow:
        (item,) = flow.work_items(eip_uuid=uuid)
        assert (item.status, item.attempts) == ("done", 2)


@pytest.mark.parametrize("point", ["after_claim", "before_revoke", "after_revoke", "before_complete:revoke_ok"])
def test_detach_dies(env: Env, point: str) -> None:
    """S15: a crash during detach leaves the row detaching until a revoke is confirmed, then it is cleared."""
    uuid = _new_eip(env, attached=True)
    env.crash("detach", uuid, point=point)
    assert _in_flight(env, uuid) == "detaching"
    env.recover()
    assert _final(env, uuid) == ("detached", None, set())


def test_rollback_dies(env: Env) -> None:
    """The attach's apply fails and the rollback's revoke is cut short: the restart clears the binding."""
    uuid = _new_eip(env)
    env.crash("attach", uuid, *ATTACH, point="before_revoke", extra={"EIPFLOW_SIM_FAIL": "apply"})
    assert _in_flight(env, uuid) == "rolling_back"
    env.recover()
    assert _final(env, uuid) == ("detached", None, set())
    with env.flow() as flow:
        assert flow.get_eip(uuid).guest_ip is None


def test_vm_stops_while_the_crashed_apply_is_in_flight(env: Env) -> None:
    """S14 + S3: apply done, caller dead, then the VM stops: the restart re-applies, sees the stop, revokes."""
    uuid = _new_eip(env)
    env.crash("attach", uuid, *ATTACH, point="after_apply")
    out = json.loads(env.ok("--json", "vm", "stop", "vm-1", "--no-wait"))
    assert [e["state"] for e in out] == ["applying"]  # recorded; the dead caller's lease holds the work
    env.recover()
    assert _final(env, uuid) == ("released", None, set())


def test_vm_migrates_while_the_crashed_apply_is_in_flight(env: Env) -> None:
    """S14 + S6: the rule ends on the new host only."""
    uuid = _new_eip(env)
    env.crash("attach", uuid, *ATTACH, point="after_apply")
    env.ok("vm", "migrate", "vm-1", "--to", "h2", "--no-wait")
    env.recover()
    assert _final(env, uuid) == ("attached", "h2", {("h2", "10.1.0.7")})


def test_detach_while_the_crashed_apply_is_in_flight(env: Env) -> None:
    """S14 + S8: the detach recorded meanwhile wins; the applied rule is revoked."""
    uuid = _new_eip(env)
    env.crash("attach", uuid, *ATTACH, point="after_apply")
    env.ok("detach", uuid, "--no-wait")
    env.recover()
    assert _final(env, uuid) == ("detached", None, set())


def test_delete_dies_after_revoke(env: Env) -> None:
    """Delete's revoke happened but its completion was lost: the restart deletes the row."""
    uuid = _new_eip(env, attached=True)
    env.crash("eip", "delete", uuid, point="after_revoke")
    env.recover()
    assert _final(env, uuid) == ("deleted", None, set())


def test_vm_start_reapply_dies(env: Env) -> None:
    """A confirmed binding re-applied on VM start survives a crash after the apply."""
    uuid = _new_eip(env, attached=True)
    with env.flow() as flow:
        flow.vm_stopped("vm-1")
    env.crash("vm", "start", "vm-1", "--host", "h2", point="after_apply")
    env.recover()
    assert _final(env, uuid) == ("attached", "h2", {("h2", "10.1.0.7")})


def test_reconcile_after_recovery_finds_nothing(env: Env) -> None:
    """After a crash and recovery the dataplane needs no repair."""
    uuid = _new_eip(env)
    env.crash("attach", uuid, *ATTACH, point="after_apply")
    env.recover()
    report = json.loads(env.ok("--json", "reconcile"))
    assert report["planned"] == [] and report["drift_checked"] is True

"""The CLI: ``main(argv)`` in-process, and the race scenarios across real processes on one SQLite file.

Cross-process gates are named pipes (EIPFLOW_SIM_GATE): the blocked ``eipflow attach`` writes to one and
blocks reading the other, so the test waits on I/O, never on a timer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eipflow.cli import main

VIP = "203.0.113.10"


def run(capsys: pytest.CaptureFixture[str], db: str, *args: str) -> tuple[int, str, str]:
    code = main(["--db", db, *args])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], db: str, *args: str) -> Any:
    code, out, err = run(capsys, db, "--json", *args)
    assert code == 0, err
    return json.loads(out)  # exactly one JSON document on stdout


def test_create_show_list_history_delete(capsys: pytest.CaptureFixture[str], sqlite_url: str) -> None:
    code, out, _ = run(capsys, sqlite_url, "eip", "create", "--vip", VIP, "--name", "web")
    assert code == 0
    uuid = out.strip()
    shown = run_json(capsys, sqlite_url, "eip", "show", uuid)
    assert {k: shown[k] for k in ("uuid", "vip", "state", "version", "name")} == {
        "uuid": uuid, "vip": VIP, "state": "detached", "version": 1, "name": "web"}
    for key in ("vm_nic_uuid", "guest_ip", "vm_uuid", "host_uuid", "last_error"):
        assert shown[key] is None
    assert [e["uuid"] for e in run_json(capsys, sqlite_url, "eip", "list")] == [uuid]
    code, out, _ = run(capsys, sqlite_url, "eip", "show", uuid)
    assert "state" in out and "detached" in out
    attached = run_json(capsys, sqlite_url, "attach", uuid, "--nic", "nic-1", "--guest-ip", "10.0.0.5",
                        "--vm", "vm-1", "--host", "h1")
    assert (attached["state"], attached["host_uuid"], attached["guest_ip"]) == ("attached", "h1", "10.0.0.5")
    rules = run_json(capsys, sqlite_url, "dataplane", "list")
    assert [(r["host_uuid"], r["eip_uuid"], r["guest_ip"]) for r in rules] == [("h1", uuid, "10.0.0.5")]
    history = run_json(capsys, sqlite_url, "eip", "history", uuid)
    assert [(h["event"], h["to_state"], h["version"]) for h in history] == [
        ("create", "detached", 1), ("attach", "binding", 2), ("proceed", "applying", 3), ("apply_ok", "attached", 4)]
    code, out, _ = run(capsys, sqlite_url, "eip", "history", uuid)
    assert "binding → applying" in out
    assert run_json(capsys, sqlite_url, "eip", "delete", uuid)["state"] == "deleted"
    assert run_json(capsys, sqlite_url, "dataplane", "list") == []
    code, _, err = run(capsys, sqlite_url, "eip", "show", uuid)
    assert code == 3 and err.startswith("error: ") and "not found" in err and err.count("\n") == 1


def test_vm_commands_move_the_eip(capsys: pytest.CaptureFixture[str], sqlite_url: str) -> None:
    uuid = run(capsys, sqlite_url, "eip", "create", "--vip", VIP)[1].strip()
    run_json(capsys, sqlite_url, "attach", uuid, "--nic", "n", "--guest-ip", "10.0.0.5", "--vm", "vm-1", "--host", "h1")
    assert [e["state"] for e in run_json(capsys, sqlite_url, "vm", "stop", "vm-1")] == ["released"]
    assert run_json(capsys, sqlite_url, "dataplane", "list") == []
    [started] = run_json(capsys, sqlite_url, "vm", "start", "vm-1", "--host", "h2")
    assert (started["state"], started["applied_host"]) == ("attached", "h2")
    [moved] = run_json(capsys, sqlite_url, "vm", "migrate", "vm-1", "--to", "h3")
    assert (moved["state"], moved["applied_host"]) == ("attached", "h3")
    assert [r["host_uuid"] for r in run_json(capsys, sqlite_url, "dataplane", "list")] == ["h3"]
    detached = run_json(capsys, sqlite_url, "detach", uuid)
    assert (detached["state"], detached["vm_nic_uuid"]) == ("detached", None)
    # A VM eipflow never saw: the fact is recorded, nothing to release.
    assert run_json(capsys, sqlite_url, "vm", "stop", "vm-unknown") == []


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["eip", "create", "--vip", "not-an-ip"], 2, "vip"),
        (["eip", "show", "nope"], 2, "not a UUID"),
        (["eip", "show", "6f1c0d1e-8a52-4c3e-9d0b-1f2e3a4b5c6d"], 3, "not found"),
        (["attach", "6f1c0d1e-8a52-4c3e-9d0b-1f2e3a4b5c6d", "--nic", "n", "--guest-ip", "999.1.1.1", "--vm", "v",
          "--host", "h"], 2, "guest_ip"),
        (["attach", "6f1c0d1e-8a52-4c3e-9d0b-1f2e3a4b5c6d", "--nic", "", "--guest-ip", "10.0.0.1", "--vm", "v",
          "--host", "h"], 2, "nic"),
        (["--backend", "no.such.module:factory", "dataplane", "list"], 2, "backend"),  # eip list never loads it
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    capsys: pytest.CaptureFixture[str], sqlite_url: str, args: list[str], code: int, needle: str
) -> None:
    got, out, err = run(capsys, sqlite_url, *args)
    assert got == code
    assert out == ""
    assert err.startswith("error: ") and needle in err and err.count("\n") == 1
    if "--backend" not in args:
        assert run_json(capsys, sqlite_url, "eip", "list") == []


def test_attach_rolled_back_exits_5(capsys: pytest.CaptureFixture[str], sqlite_url: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    uuid = run(capsys, sqlite_url, "eip", "create", "--vip", VIP)[1].strip()
    monkeypatch.setenv("EIPFLOW_SIM_FAIL", "apply")
    code, out, err = run(capsys, sqlite_url, "attach", uuid, "--nic", "n", "--guest-ip", "10.0.0.5",
                         "--vm", "vm-1", "--host", "h1")
    assert code == 5 and "rolled back" in err and out == ""
    monkeypatch.delenv("EIPFLOW_SIM_FAIL")
    shown = run_json(capsys, sqlite_url, "eip", "show", uuid)
    assert (shown["state"], shown["guest_ip"]) == ("detached", None)
    assert "simulated apply failure" in shown["last_error"]


def test_demo_replays_the_seed_race(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = run_json(capsys, f"sqlite:///{tmp_path / 'unused.db'}", "demo")
    states = sorted(e["state"] for e in data["eips"])
    assert states == ["detached", "released"]
    assert data["dataplane"] == []
    raced = next(e for e in data["eips"] if e["state"] == "released")
    events = [(h["event"], h["to_state"]) for h in data["history"][raced["uuid"]]]
    assert ("vm_stopped", "applying") in events and events[-1] == ("revoke_ok", "released")


# -- separate processes on one database (every configured kind) ------------------------------------


def cli(db: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eipflow", "--db", db, "--json", *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120, check=False,
    )


def cli_start(db: str, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "eipflow", "--db", db, "--json", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
    )


class PipeGate:
    """A cross-process gate made of two named pipes (see eipflow.backends.faults)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        os.mkfifo(root / "entered")
        os.mkfifo(root / "release")
        self.env = {"EIPFLOW_SIM_GATE": str(root)}

    def wait_entered(self) -> None:
        with (self.root / "entered").open() as pipe:
            assert pipe.readline().strip().isdigit()

    def release(self) -> None:
        with (self.root / "release").open("w") as pipe:
            pipe.write("go\n")


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[PipeGate]:
    root = tmp_path / "gate"
    root.mkdir()
    yield PipeGate(root)


def _json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _created(db: str) -> str:
    return str(_json(cli(db, "eip", "create", "--vip", VIP))["uuid"])


ATTACH = ("--nic", "nic-1", "--guest-ip", "10.0.0.5", "--vm", "vm-1", "--host", "h1")


@pytest.mark.slow
def test_processes_vm_stop_during_blocked_attach(db_url: str, gate: PipeGate) -> None:
    uuid = _created(db_url)
    attach = cli_start(db_url, "attach", uuid, *ATTACH, env=gate.env)
    gate.wait_entered()
    mid = _json(cli(db_url, "eip", "show", uuid))
    assert (mid["state"], mid["vm_nic_uuid"], mid["guest_ip"]) == ("applying", "nic-1", "10.0.0.5")
    stopped = _json(cli(db_url, "vm", "stop", "vm-1"))  # returns while the apply is still blocked
    assert [(e["state"], e["host_uuid"]) for e in stopped] == [("applying", None)]
    gate.release()
    out, err = attach.communicate(timeout=120)
    assert attach.returncode == 0, err
    assert json.loads(out)["state"] == "released"
    final = _json(cli(db_url, "eip", "show", uuid))
    assert (final["state"], final["vm_nic_uuid"], final["guest_ip"]) == ("released", "nic-1", "10.0.0.5")
    assert _json(cli(db_url, "dataplane", "list")) == []


@pytest.mark.slow
def test_processes_two_attaches_one_wins(db_url: str, gate: PipeGate) -> None:
    uuid = _created(db_url)
    first = cli_start(db_url, "attach", uuid, *ATTACH, env=gate.env)
    gate.wait_entered()
    second = cli(db_url, "attach", uuid, "--nic", "nic-2", "--guest-ip", "10.0.0.6", "--vm", "vm-2", "--host", "h2")
    assert second.returncode == 4
    error = json.loads(second.stdout)["error"]  # --json: the error is the one document on stdout
    assert (error["type"], error["exit_code"]) == ("IllegalTransition", 4) and "cannot attach" in error["message"]
    gate.release()
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    rules = _json(cli(db_url, "dataplane", "list"))
    assert [(r["host_uuid"], r["guest_ip"]) for r in rules] == [("h1", "10.0.0.5")]
    history = _json(cli(db_url, "eip", "history", uuid))
    assert [h["event"] for h in history].count("attach") == 1


@pytest.mark.slow
def test_processes_migrate_and_detach_during_blocked_attach(db_url: str, gate: PipeGate, tmp_path: Path) -> None:
    uuid = _created(db_url)
    attach = cli_start(db_url, "attach", uuid, *ATTACH, env=gate.env)
    gate.wait_entered()
    _json(cli(db_url, "vm", "migrate", "vm-1", "--to", "h2"))
    gate.release()
    gate.wait_entered()  # the same process now applies on h2 (after revoking h1): let it through too
    gate.release()
    out, err = attach.communicate(timeout=120)
    assert attach.returncode == 0, err
    assert (json.loads(out)["state"], json.loads(out)["applied_host"]) == ("attached", "h2")
    assert [r["host_uuid"] for r in _json(cli(db_url, "dataplane", "list"))] == ["h2"]

    # Detach while a re-apply (VM start) is blocked: ends detached with no rule anywhere.
    _json(cli(db_url, "vm", "stop", "vm-1"))
    (tmp_path / "gate2").mkdir()
    gate2 = PipeGate(tmp_path / "gate2")
    start = cli_start(db_url, "vm", "start", "vm-1", "--host", "h3", env=gate2.env)
    gate2.wait_entered()
    recorded = _json(cli(db_url, "detach", uuid))
    assert (recorded["state"], recorded["desired"]) == ("applying", "detached")
    gate2.release()
    _, err = start.communicate(timeout=120)
    assert start.returncode == 0, err
    final = _json(cli(db_url, "eip", "show", uuid))
    assert (final["state"], final["vm_nic_uuid"]) == ("detached", None)
    assert _json(cli(db_url, "dataplane", "list")) == []


@pytest.mark.slow
def test_processes_failed_attach_rolls_back(db_url: str) -> None:
    uuid = _created(db_url)
    failed = cli(db_url, "attach", uuid, *ATTACH, env={"EIPFLOW_SIM_FAIL": "apply"})
    assert failed.returncode == 5 and json.loads(failed.stdout)["error"]["type"] == "AttachFailed"
    shown = _json(cli(db_url, "eip", "show", uuid))
    assert (shown["state"], shown["guest_ip"]) == ("detached", None)
    assert _json(cli(db_url, "dataplane", "list")) == []

"""The CLI behaves like its peers: --json anywhere (errors too), paging, strict options, read commands that
never migrate, lazy imports, shell completion, a quiet library, a demo that cleans up, a shipped LICENSE."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from eipflow.cli import main
from eipflow.store.migrations import HEAD

ROOT = Path(__file__).resolve().parent.parent
MISSING = "6f1c0d1e-8a52-4c3e-9d0b-1f2e3a4b5c6d"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def created(capsys: pytest.CaptureFixture[str], db: str, n: int) -> list[str]:
    uuids = []
    for i in range(n):
        code, out, err = run(capsys, "--db", db, "eip", "create", "--vip", f"203.0.113.{10 + i}")
        assert code == 0, err
        uuids.append(out.strip())
    return uuids


def test_json_is_accepted_after_the_subcommand(capsys: pytest.CaptureFixture[str], sqlite_url: str) -> None:
    """`eipflow eip list --json` and `eipflow eip show UUID --json` print one JSON document, like `--json eip …`."""
    [uuid] = created(capsys, sqlite_url, 1)
    code, out, _ = run(capsys, "--db", sqlite_url, "eip", "list", "--json")
    assert code == 0 and [e["uuid"] for e in json.loads(out)] == [uuid]
    code, out, _ = run(capsys, "--db", sqlite_url, "eip", "show", uuid, "--json")
    assert code == 0 and json.loads(out)["state"] == "detached"
    code, out, _ = run(capsys, "--db", sqlite_url, "eip", "create", "--vip", "203.0.113.99", "--json")
    assert code == 0 and json.loads(out)["vip"] == "203.0.113.99"


@pytest.mark.parametrize(
    ("args", "kind", "code"),
    [
        (["eip", "show", MISSING, "--json"], "EipNotFound", 3),
        (["--json", "eip", "show", "not-a-uuid"], "InvalidIdentifier", 2),
        (["eip", "list", "--state", "bogus", "--json"], "BadParameter", 2),
        (["--json", "eip", "list", "--no-such-option"], "NoSuchOption", 2),
        (["--json", "attach", MISSING, "--nic", "n", "--guest-ip", "10.0.0.1", "--vm", "v", "--host", "h"],
         "EipNotFound", 3),
    ],
)
def test_json_errors_are_one_document_on_stdout(
    capsys: pytest.CaptureFixture[str], sqlite_url: str, args: list[str], kind: str, code: int
) -> None:
    """Under --json an error is `{"error": {"type", "message", "exit_code"}}` on stdout, with the usual exit code."""
    got, out, err = run(capsys, "--db", sqlite_url, *args)
    assert got == code
    assert err == ""
    doc: dict[str, Any] = json.loads(out)
    assert doc["error"]["type"] == kind and doc["error"]["exit_code"] == code and doc["error"]["message"]


def test_eip_list_pages_with_limit_and_after(capsys: pytest.CaptureFixture[str], sqlite_url: str) -> None:
    """--limit N then --after LAST_UUID walks the list in order; the last page is short; a deleted cursor works."""
    uuids = created(capsys, sqlite_url, 5)

    def page(*extra: str) -> list[str]:
        code, out, err = run(capsys, "--db", sqlite_url, "--json", "eip", "list", "--limit", "2", *extra)
        assert code == 0, err
        return [e["uuid"] for e in json.loads(out)]

    first = page()
    second = page("--after", first[-1])
    third = page("--after", second[-1])
    assert first + second + third == uuids and len(third) == 1
    assert page("--after", third[-1]) == []
    # The cursor's EIP is deleted between pages: its place in the order comes from its history.
    assert run(capsys, "--db", sqlite_url, "eip", "delete", second[-1])[0] == 0
    assert page("--after", second[-1]) == third
    code, _, err = run(capsys, "--db", sqlite_url, "eip", "list", "--after", MISSING)
    assert code == 2 and "--after" in err
    code, _, err = run(capsys, "--db", sqlite_url, "eip", "list", "--limit", "0")
    assert code == 2 and "--limit" in err


def test_eip_history_pages_by_version(capsys: pytest.CaptureFixture[str], sqlite_url: str) -> None:
    """history --limit/--after VERSION returns the versions after the cursor; a page past the end is empty."""
    [uuid] = created(capsys, sqlite_url, 1)
    code, _, err = run(capsys, "--db", sqlite_url, "attach", uuid, "--nic", "n", "--guest-ip", "10.0.0.5", "--vm", "vm",
                       "--host", "h1")
    assert code == 0, err

    def versions(*extra: str) -> list[int]:
        code, out, err = run(capsys, "--db", sqlite_url, "--json", "eip", "history", uuid, *extra)
        assert code == 0, err
        return [r["version"] for r in json.loads(out)]

    assert versions() == [1, 2, 3, 4]
    assert versions("--limit", "2") == [1, 2]
    assert versions("--limit", "2", "--after", "2") == [3, 4]
    assert versions("--after", "4") == []
    code, _, _ = run(capsys, "--db", sqlite_url, "eip", "history", MISSING, "--after", "1")
    assert code == 3


def test_list_with_an_unknown_state_is_a_usage_error(capsys: pytest.CaptureFixture[str], sqlite_url: str) -> None:
    """`eip list --state bogus` exits 2 naming the states, instead of printing "no EIPs"."""
    code, out, err = run(capsys, "--db", sqlite_url, "eip", "list", "--state", "bogus")
    assert code == 2 and out == ""
    assert "bogus" in err and "attached" in err and "released" in err
    code, out, _ = run(capsys, "--db", sqlite_url, "eip", "list", "--state", "attached")
    assert (code, out.strip()) == (0, "no EIPs")


def test_history_refuses_an_unknown_diagram_format_before_printing(
    capsys: pytest.CaptureFixture[str], sqlite_url: str, tmp_path: Path
) -> None:
    """`eip history UUID --diagram x.txt` exits 2 with nothing on stdout and no file written."""
    [uuid] = created(capsys, sqlite_url, 1)
    target = tmp_path / "x.txt"
    code, out, err = run(capsys, "--db", sqlite_url, "eip", "history", uuid, "--diagram", str(target))
    assert code == 2 and out == "" and ".txt" in err and ".mmd" in err
    assert not target.exists()
    code, out, _ = run(capsys, "--db", sqlite_url, "eip", "history", uuid, "--diagram", str(tmp_path / "x.mmd"))
    assert code == 0 and "create" in out and (tmp_path / "x.mmd").read_text().startswith("---")


def test_an_empty_db_url_is_an_error(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`--db ''` (or an empty $EIPFLOW_DB) exits 2 instead of silently using ./eipflow.db."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "--db", "", "eip", "list")
    assert code == 2 and out == "" and "--db" in err and "empty" in err
    monkeypatch.setenv("EIPFLOW_DB", "  ")
    code, out, err = run(capsys, "eip", "list")
    assert code == 2 and "EIPFLOW_DB" in err
    assert list(tmp_path.iterdir()) == []  # no eipflow.db was created


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _set_revision(url: str, revision: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    finally:
        engine.dispose()


@pytest.mark.parametrize("command", [["eip", "list"], ["eip", "show", MISSING], ["work", "list"],
                                     ["dataplane", "list"], ["eip", "history", MISSING]])
def test_read_commands_never_migrate(capsys: pytest.CaptureFixture[str], db_url: str, command: list[str]) -> None:
    """A server database without the schema, or behind, is reported (naming `eipflow db upgrade`) and left as it is."""
    if db_url.startswith("sqlite"):
        _ = run(capsys, "--db", db_url, "db", "upgrade")
    else:
        code, out, err = run(capsys, "--db", db_url, *command)
        assert code == 1 and out == "" and "eipflow db upgrade" in err and "no eipflow schema" in err
        assert _tables(db_url) == set()
        assert run(capsys, "--db", db_url, "db", "upgrade")[0] == 0
    _set_revision(db_url, "0000")
    code, out, err = run(capsys, "--db", db_url, *command)
    assert code == 1 and out == ""
    assert f"revision 0000, this eipflow expects {HEAD}" in err and "eipflow db upgrade" in err
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0000"
    finally:
        engine.dispose()


def test_a_fresh_sqlite_file_gets_its_schema_on_first_use(capsys: pytest.CaptureFixture[str], sqlite_url: str) -> None:
    """The embedded default: a read on a new SQLite file creates the schema (nothing else to migrate from)."""
    code, out, _ = run(capsys, "--db", sqlite_url, "eip", "list")
    assert (code, out.strip()) == (0, "no EIPs")
    assert {"eip", "eip_transition", "eip_work", "alembic_version"} <= _tables(sqlite_url)


def _py(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120, check=False)


def test_read_commands_import_only_what_they_use(sqlite_url: str) -> None:
    """`eip list` on an up-to-date database loads no Alembic, rich, structlog, diagrams, asyncio face, integrations."""
    assert main(["--db", sqlite_url, "db", "upgrade"]) == 0
    proc = _py(f"""
        import json, sys
        from eipflow.cli import main
        assert main(["--db", {sqlite_url!r}, "eip", "list"]) == 0
        print(json.dumps(sorted(sys.modules)))
    """)
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout.splitlines()[-1]))
    forbidden = {"alembic", "rich", "structlog", "pydot", "statemachine", "eipflow.aio", "eipflow.api",
                 "eipflow.runner", "eipflow.worker", "eipflow.diagrams", "eipflow.integrations", "celery", "taskflow",
                 "starlette", "httpx"}
    assert loaded & forbidden == set()


def test_shell_completion_uses_clicks_variable() -> None:
    """`_EIPFLOW_COMPLETE=bash_complete` completes subcommands (and `bash_source` prints the script)."""
    env = {"_EIPFLOW_COMPLETE": "bash_complete", "COMP_WORDS": "eipflow eip l", "COMP_CWORD": "2"}
    proc = subprocess.run([sys.executable, "-m", "eipflow"], capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    assert "plain,list" in proc.stdout.splitlines()
    source = subprocess.run([sys.executable, "-m", "eipflow"], capture_output=True, text=True, timeout=60,
                            check=False, env={**os.environ, "_EIPFLOW_COMPLETE": "bash_source"})
    assert "_EIPFLOW_COMPLETE=bash_complete" in source.stdout


def test_demo_removes_its_temporary_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`eipflow demo` on its default temporary database leaves nothing behind."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    code, out, err = run(capsys, "--json", "demo")
    assert code == 0, err
    assert json.loads(out)["dataplane"] == []
    assert list(tmp_path.iterdir()) == []


def test_embedded_library_writes_nothing_without_logging_configured(tmp_path: Path) -> None:
    """Without structlog configured, eipflow logs through the standard library: silent unless the app asks."""
    proc = _py(f"""
        from eipflow import AttachFailed, Eipflow, InMemoryDataplane
        backend = InMemoryDataplane()
        with Eipflow.open("sqlite:///{tmp_path / 'e.db'}", backend) as flow:
            eip = flow.create_eip("203.0.113.10")
            flow.attach(eip.uuid, nic="n", guest_ip="10.0.0.5", vm="vm", host="h1")
            flow.vm_stopped("vm")
            backend.faults.fail("apply")
            try:
                flow.vm_started("vm", "h2")
            except AttachFailed:
                pass
    """)
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout, proc.stderr) == ("", "")
    proc = _py(f"""
        import logging, sys
        logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(name)s %(levelname)s %(message)s")
        from eipflow import Eipflow, InMemoryDataplane
        with Eipflow.open("sqlite:///{tmp_path / 'f.db'}", InMemoryDataplane()) as flow:
            eip = flow.create_eip("203.0.113.10")
            flow.attach(eip.uuid, nic="n", guest_ip="10.0.0.5", vm="vm", host="h1")
    """)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("eipflow.runner INFO transition.applied ") and "state_to=attached" in line
               for line in lines)
    assert any(line.startswith("eipflow.runner INFO backend.apply_ok ") for line in lines)


def test_cli_logs_to_stderr_as_json_lines(tmp_path: Path) -> None:
    """The CLI renders the library's events as JSON lines on stderr (not a TTY); stdout keeps the one document."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    proc = subprocess.run([sys.executable, "-m", "eipflow", "--db", url, "-v", "--json", "eip", "create", "--vip",
                           "203.0.113.10"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    uuid = json.loads(proc.stdout)["uuid"]
    proc = subprocess.run([sys.executable, "-m", "eipflow", "--db", url, "-v", "attach", uuid, "--nic", "n",
                           "--guest-ip", "10.0.0.5", "--vm", "vm", "--host", "h1", "--json"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["state"] == "attached"
    events = [json.loads(line) for line in proc.stderr.splitlines()]
    applied = [e for e in events if e["event"] == "transition.applied"]
    assert [e["state_to"] for e in applied] == ["binding", "applying", "attached"]
    assert all(e["log_level"] == "info" and e["timestamp"].endswith("Z") for e in applied)


def test_license_is_apache_and_declared() -> None:
    """LICENSE holds the Apache-2.0 text that pyproject declares (and names as the wheel's license file)."""
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]


def test_every_lazy_command_resolves_with_a_summary() -> None:
    """The lazy root group lists every command with its one-line help, and each one imports and accepts --json."""
    import click

    from eipflow.cli import COMMANDS, SUMMARIES, cli

    assert set(SUMMARIES) == set(COMMANDS)
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
        leaves = list(command.commands.values()) if isinstance(command, click.Group) else [command]
        for leaf in leaves:
            assert any("--json" in getattr(p, "opts", ()) for p in leaf.params), f"{name} {leaf.name}"

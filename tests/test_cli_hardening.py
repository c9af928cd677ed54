"""The CLI as a hostile or careless user drives it: every row of docs/errors.md that the CLI can show.

Each refusal is one ``error:`` line on stderr, a documented exit code, nothing on stdout, and no
change to rows, history or work items.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from eipflow import Eipflow, InMemoryDataplane
from eipflow.cli import main

VIP = "203.0.113.10"


def run(capsys: pytest.CaptureFixture[str], db: str, *args: str) -> tuple[int, str, str]:
    code = main(["--db", db, *args])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(db: str) -> tuple[Any, ...]:
    with Eipflow.open(db, InMemoryDataplane()) as flow:
        return ([e.to_dict() for e in flow.list_eips()], [r.to_dict() for r in flow.store.all_history()],
                [w.to_dict() for w in flow.work_items()])


@pytest.fixture
def seeded(capsys: pytest.CaptureFixture[str], sqlite_url: str) -> tuple[str, str, str]:
    """Two EIPs: A attached to 192.0.2.10, B detached."""
    a = run(capsys, sqlite_url, "eip", "create", "--vip", VIP)[1].strip()
    b = run(capsys, sqlite_url, "eip", "create", "--vip", "203.0.113.11")[1].strip()
    code, _, err = run(capsys, sqlite_url, "attach", a, "--nic", "nic-1", "--guest-ip", "192.0.2.10", "--vm", "vm-1",
                       "--host", "h1")
    assert code == 0, err
    return sqlite_url, a, b


def _attach(uuid: str, guest: str) -> list[str]:
    return ["attach", uuid, "--nic", "nic-2", "--guest-ip", guest, "--vm", "vm-2", "--host", "h1"]


# (id, argv builder, exit code, needle): the ids are the rows of docs/errors.md
CASES: list[tuple[str, Any, int, str]] = [
    ("vip-zone-id", lambda a, b: ["eip", "create", "--vip", "2001:db8::a%x"], 2, "zone ID"),
    ("vip-zone-injection", lambda a, b: ["eip", "create", "--vip", "fe80::1%x;flush ruleset"], 2, "zone ID"),
    ("vip-loopback", lambda a, b: ["eip", "create", "--vip", "127.0.0.1"], 2, "loopback"),
    ("vip-broadcast", lambda a, b: ["eip", "create", "--vip", "255.255.255.255"], 2, "broadcast"),
    ("vip-multicast", lambda a, b: ["eip", "create", "--vip", "224.0.0.1"], 2, "multicast"),
    ("vip-unspecified", lambda a, b: ["eip", "create", "--vip", "::"], 2, "unspecified"),
    ("vip-link-local", lambda a, b: ["eip", "create", "--vip", "169.254.1.1"], 2, "link-local"),
    ("vip-ipv4-mapped", lambda a, b: ["eip", "create", "--vip", "::ffff:203.0.113.9"], 2, "IPv4-mapped"),
    ("vip-this-network", lambda a, b: ["eip", "create", "--vip", "0.1.2.3"], 2, "this network"),
    ("vip-reserved", lambda a, b: ["eip", "create", "--vip", "240.0.0.1"], 2, "reserved"),
    ("vip-not-an-address", lambda a, b: ["eip", "create", "--vip", "example.com"], 2, "not a valid"),
    ("vip-in-use", lambda a, b: ["eip", "create", "--vip", "203.0.113.11"], 4, "already"),
    ("vip-in-use-other-spelling", lambda a, b: ["eip", "create", "--vip", "2001:DB8::A"], 4, "already"),
    ("vip-is-a-guest-ip", lambda a, b: ["eip", "create", "--vip", "192.0.2.10"], 4, "is the guest IP of EIP"),
    ("guest-zone-id", lambda a, b: _attach(b, "fd00::5%a"), 2, "zone ID"),
    ("guest-loopback", lambda a, b: _attach(b, "127.0.0.1"), 2, "loopback"),
    ("guest-other-version", lambda a, b: _attach(b, "fd00::5"), 2, "IPv6 address but the EIP's VIP"),
    ("guest-own-vip", lambda a, b: _attach(b, "203.0.113.11"), 2, "own VIP"),
    ("guest-other-eips-vip", lambda a, b: _attach(b, VIP), 4, "is the VIP of EIP"),
    ("guest-in-use", lambda a, b: _attach(b, "192.0.2.10"), 4, "already has an EIP"),
    ("name-ansi", lambda a, b: ["eip", "create", "--vip", "203.0.113.50", "--name", "\x1b[31mred"], 2, "ESCAPE"),
    ("name-bidi", lambda a, b: ["eip", "create", "--vip", "203.0.113.50", "--name", "a\u202egnp.exe"], 2,
     "RIGHT-TO-LEFT OVERRIDE"),
    ("name-newline", lambda a, b: ["eip", "create", "--vip", "203.0.113.50", "--name", "a\nb"], 2, "U+000A"),
    ("name-too-long", lambda a, b: ["eip", "create", "--vip", "203.0.113.50", "--name", "n" * 10_000], 2,
     "10000 characters"),
]


@pytest.mark.parametrize(("case", "argv", "code", "needle"), CASES, ids=[c[0] for c in CASES])
def test_refused_input_is_one_safe_line_and_changes_nothing(
    capsys: pytest.CaptureFixture[str], seeded: tuple[str, str, str], case: str, argv: Any, code: int, needle: str
) -> None:
    db, a, b = seeded
    if case == "vip-in-use-other-spelling":
        assert run(capsys, db, "eip", "create", "--vip", "2001:db8::a")[0] == 0
    before = snapshot(db)
    got, out, err = run(capsys, db, *argv(a, b))
    assert (got, out) == (code, ""), err
    assert err.startswith("error: ") and needle in err and err.count("\n") == 1
    assert len(err) < 400  # a 10,000-character value is not echoed whole
    assert "\x1b" not in err and "\u202e" not in err
    assert snapshot(db) == before


def test_stored_control_characters_never_reach_the_terminal_raw(capsys: pytest.CaptureFixture[str],
                                                                sqlite_url: str) -> None:
    """A row written before names were checked: show, list and history print it escaped; JSON escapes it too."""
    with Eipflow.open(sqlite_url, InMemoryDataplane()) as flow:
        eip = flow.store.create("6f1c0d1e-8a52-4c3e-9d0b-1f2e3a4b5c6d", VIP, "\x1b]0;owned\x07\x1b[2J\u202eevil",
                                actor="legacy", op_id=None)
    for args in (("eip", "show", eip.uuid), ("eip", "list"), ("eip", "history", eip.uuid)):
        code, out, err = run(capsys, sqlite_url, *args)
        assert code == 0, err
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out, args
        if args[1] != "list":
            assert "\\x1b]0;owned\\x07\\x1b[2J\\u202eevil" in out
        code, out, _ = run(capsys, sqlite_url, "--json", *args)
        assert "\x1b" not in out and "\u202e" not in out and code == 0
    assert json.loads(run(capsys, sqlite_url, "--json", "eip", "show", eip.uuid)[1])["name"].startswith("\x1b]0;")


@pytest.mark.parametrize("url", [
    "postgresql+psycopg://eip:hunter2@127.0.0.1:1/x",
    "postgresql+psycopg://eip@127.0.0.1:1/x?password=hunter2&sslmode=disable",
    "postgresql+psycopg://eip:hunter2@127.0.0.1:notaport/x",
    "postgresql+psycopg://eip:hun@ter2@127.0.0.1:1/x",
    "mysql+pymysql://eip@127.0.0.1:1/x?password=hunter2",
    "postgresql+psycopg://eip@127.0.0.1:1/x?sslpassword=hunter2",
    "not a url hunter2",
    "://eip:hunter2@",
])
def test_no_secret_of_a_database_url_is_ever_printed(capsys: pytest.CaptureFixture[str], url: str) -> None:
    """Password in the userinfo or the query string, an unparseable URL: exit 1, and no 'hunter2' or 'ter2'."""
    for args in (("eip", "list"), ("db", "current"), ("--json", "eip", "list")):
        code, out, err = run(capsys, url, *args)
        assert code == 1, (args, err)
        assert "ter2" not in out + err
        if "--json" in args:  # the error is one JSON document on stdout
            error = json.loads(out)["error"]
            assert (error["type"], error["exit_code"]) == ("DatabaseError", 1)
            assert error["message"].startswith("database ")
        else:
            assert err.startswith("error: database "), err


def test_a_file_that_is_not_sqlite_is_a_database_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a database, just notes\n" * 100)
    for args in (("eip", "list"), ("db", "current"), ("db", "upgrade")):
        code, out, err = run(capsys, f"sqlite:///{path}", *args)
        assert (code, out) == (1, ""), err
        assert err == f"error: database sqlite:///{path}: the file is not an SQLite database (file is not a database)\n"
    assert path.read_text() == "not a database, just notes\n" * 100


def test_db_current_on_a_newer_schema_does_not_suggest_upgrade(capsys: pytest.CaptureFixture[str],
                                                               sqlite_url: str) -> None:
    assert run(capsys, sqlite_url, "db", "upgrade")[0] == 0
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0999'")
    code, out, err = run(capsys, sqlite_url, "db", "current")
    assert code == 0, err
    assert "0999 is newer than this eipflow knows" in out and "db upgrade" not in out
    code, out, _ = run(capsys, sqlite_url, "--json", "db", "current")
    assert {k: json.loads(out)[k] for k in ("current", "known", "up_to_date")} == {
        "current": "0999", "known": False, "up_to_date": False}


def test_console_logs_escape_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    """On a terminal, logs use the console renderer: stored or remote text in them is escaped too."""
    import structlog

    from eipflow.cli._context import setup_logging

    setup_logging(0, "console")
    structlog.get_logger("t").warning("agent.refused", reason="\x1b]0;owned\x07\u202eevil")
    err = capsys.readouterr().err
    assert "owned" in err and "evil" in err
    assert "\x1b]0;" not in err and "\x07" not in err and "\u202e" not in err  # (the renderer's own colours remain)

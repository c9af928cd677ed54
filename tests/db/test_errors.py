"""Database errors: connection problems name the URL without its password; deadlocks and
serialization failures are retried, everything else surfaces at once."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from eipflow import Eipflow
from eipflow.cli import main
from eipflow.errors import DatabaseError
from eipflow.store import create_db_engine, database
from eipflow.store.database import retry_transient, transient_retries, translate_errors

PASSWORD = "s3cr3t-pw"
MARIADB_ENV = "EIPFLOW_TEST_MARIADB_URL"


def _assert_clean(exc: BaseException, where: str) -> None:
    text = str(exc)
    assert PASSWORD not in text
    assert where in text, text


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(f"postgresql+psycopg://eipflow:{PASSWORD}@127.0.0.1:1/test", id="postgres"),
        pytest.param(f"mysql+pymysql://eipflow:{PASSWORD}@127.0.0.1:1/test", id="mariadb"),
    ],
)
def test_unreachable_server_is_a_database_error_without_the_password(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A port nobody listens on: DatabaseError naming the redacted URL (API and CLI alike)."""
    with pytest.raises(DatabaseError) as info:
        Eipflow.open(url)
    _assert_clean(info.value, "eipflow:***@127.0.0.1:1/test")
    assert info.value.retryable

    assert main(["--db", url, "eip", "list"]) == 1
    err = capsys.readouterr().err
    assert PASSWORD not in err and "eipflow:***@127.0.0.1:1/test" in err


def test_wrong_password_on_mariadb_is_a_database_error_without_it() -> None:
    """The server refuses the login: the reason is the server's, the password is nowhere in the message."""
    base = os.environ.get(MARIADB_ENV)
    if not base:
        pytest.skip(f"needs {MARIADB_ENV}")
    url = sa.engine.make_url(base).set(password=PASSWORD).render_as_string(hide_password=False)
    with pytest.raises(DatabaseError) as info:
        Eipflow.open(url)
    _assert_clean(info.value, "Access denied")
    assert "***@" in str(info.value)


def test_unopenable_sqlite_file_is_a_database_error(tmp_path: object) -> None:
    with pytest.raises(DatabaseError, match="unable to open database file"):
        Eipflow.open("sqlite:////nonexistent-eipflow-dir/sub/x.db")


# -- retries -----------------------------------------------------------------------------------


@pytest.fixture
def server(db_url: str) -> Iterator[sa.Engine]:
    """An engine on a fresh PostgreSQL/MariaDB database with a two-row table to lock."""
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite has one writer: no deadlocks, no serialization failures")
    engine = create_db_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t_lock (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        conn.exec_driver_sql("INSERT INTO t_lock (id, n) VALUES (1, 0), (2, 0)")
    try:
        yield engine
    finally:
        engine.dispose()


def test_a_real_deadlock_is_retried(server: sa.Engine) -> None:
    """Two transactions lock rows 1,2 and 2,1: the server kills one (40P01 / 1213), it runs again and commits."""
    barrier = threading.Barrier(2)
    calls = {1: 0, 2: 0}
    errors: list[BaseException] = []
    bump = sa.text("UPDATE t_lock SET n = n + 1 WHERE id = :id")
    before = transient_retries()

    @retry_transient
    def crossed(first: int, second: int) -> None:
        calls[first] += 1
        with translate_errors(server), server.begin() as conn:
            conn.execute(bump, {"id": first})
            if calls[first] == 1:
                barrier.wait()  # both hold their first row: the second updates close the cycle
            conn.execute(bump, {"id": second})

    def run(first: int, second: int) -> None:
        try:
            crossed(first, second)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=a) for a in ((1, 2), (2, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert sorted(calls.values()) == [1, 2]  # exactly one victim, run twice
    assert transient_retries() - before == 1
    with server.connect() as conn:
        # Each transaction's two increments landed exactly once: the victim's first try left nothing.
        assert conn.execute(sa.text("SELECT n FROM t_lock ORDER BY id")).scalars().all() == [2, 2]


def test_a_serialization_failure_is_retried_at_repeatable_read(db_url: str, server: sa.Engine) -> None:
    """PostgreSQL REPEATABLE READ: a concurrent committed update makes ours fail with 40001; the retry
    reads the new snapshot and writes on top of it (no lost update)."""
    if server.dialect.name != "postgresql":
        pytest.skip("MySQL/MariaDB REPEATABLE READ updates the latest row version instead of failing")
    rr = create_db_engine(db_url, isolation_level="REPEATABLE READ")
    calls = 0

    @retry_transient
    def increment() -> int:
        nonlocal calls
        calls += 1
        with translate_errors(rr), rr.begin() as conn:
            seen = int(conn.execute(sa.text("SELECT n FROM t_lock WHERE id = 1")).scalar_one())
            if calls == 1:
                with server.begin() as other:
                    other.execute(sa.text("UPDATE t_lock SET n = n + 10 WHERE id = 1"))
            conn.execute(sa.text("UPDATE t_lock SET n = :n WHERE id = 1"), {"n": seen + 1})
            return seen

    try:
        assert increment() == 10
    finally:
        rr.dispose()
    assert calls == 2
    with server.connect() as conn:
        assert conn.execute(sa.text("SELECT n FROM t_lock WHERE id = 1")).scalar_one() == 11


def test_other_errors_are_not_retried() -> None:
    """A refused login or a constraint violation surfaces on the first call."""
    calls = 0

    @retry_transient
    def refused() -> None:
        nonlocal calls
        calls += 1
        raise DatabaseError("postgresql://u:***@h/db", "password authentication failed")

    with pytest.raises(DatabaseError, match="password authentication failed"):
        refused()
    assert calls == 1


def test_retries_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A transaction that deadlocks every time gives up after TRANSIENT_ATTEMPTS with a retryable error."""
    monkeypatch.setattr(database, "TRANSIENT_ATTEMPTS", 3)
    calls = 0

    @retry_transient
    def always() -> None:
        nonlocal calls
        calls += 1
        err = DatabaseError("mysql+pymysql://root@h/db", "(1213, 'Deadlock found when trying to get lock')")
        err.transient = True  # type: ignore[attr-defined]
        raise err

    with pytest.raises(DatabaseError, match="Deadlock") as info:
        always()
    assert calls == 3 and info.value.retryable

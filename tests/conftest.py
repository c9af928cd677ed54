"""Shared fixtures: one database per test on every configured server, no leaked threads.

Databases: SQLite always; PostgreSQL when ``EIPFLOW_TEST_POSTGRES_URL`` is set; MariaDB/MySQL when
``EIPFLOW_TEST_MARIADB_URL`` is set (``.ci/run`` sets both). Each test gets a fresh schema (PostgreSQL)
or database (MariaDB) that is dropped afterwards, so runs never see each other's rows.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from eipflow import Eipflow, InMemoryDataplane
from tests._support import fresh_database, skip_reason


def _drop(_logger: object, _name: str, _event: object) -> object:
    raise structlog.DropEvent


def pytest_configure(config: pytest.Config) -> None:
    # Quiet by default; tests that assert log events use structlog.testing.capture_logs(), which swaps
    # the processors for a capturing one, so every level still reaches it.
    structlog.configure(processors=[_drop])


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """``main(argv)`` configures structlog for the process (as a CLI should); undo it after each test."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    for t in leaked:
        t.join(timeout=10)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"test leaked threads: {still}"


def _db_params() -> list[object]:
    return [
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
    ]


@pytest.fixture(params=_db_params())
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL on each configured database kind."""
    reason = skip_reason(request.param)
    if reason:
        pytest.skip(reason)
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'eipflow.db'}"


@pytest.fixture
def backend() -> InMemoryDataplane:
    return InMemoryDataplane()


@pytest.fixture
def flow(db_url: str, backend: InMemoryDataplane) -> Iterator[Eipflow]:
    """An Eipflow on a fresh database of each kind, with an in-memory dataplane."""
    f = Eipflow.open(db_url, backend, owner="test")
    try:
        yield f
    finally:
        backend.faults.clear()
        f.close()

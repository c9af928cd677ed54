"""Shared fixtures: one database per test on every configured server, no leaked threads.

Databases: SQLite always; PostgreSQL when ``EIPFLOW_TEST_POSTGRES_URL`` is set; MariaDB/MySQL when
``EIPFLOW_TEST_MARIADB_URL`` is set (``.ci/run`` sets both). Each test gets a fresh schema (PostgreSQL)
or database (MariaDB) that is dropped afterwards, so runs never see each other's rows.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import structlog

from eipflow import Eipflow, InMemoryDataplane

PG_ENV = "EIPFLOW_TEST_POSTGRES_URL"
MARIADB_ENV = "EIPFLOW_TEST_MARIADB_URL"


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


def _fresh_postgres(base: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
    url = sa.engine.make_url(base).update_query_dict({"options": f"-csearch_path={name}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        admin.dispose()


def _fresh_mariadb(base: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE `{name}`")
    url = sa.engine.make_url(base).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        admin.dispose()


def _db_params() -> list[object]:
    return [
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
    ]


@pytest.fixture(params=_db_params())
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL on each configured database kind."""
    kind = request.param
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'eipflow.db'}"
    elif kind == "postgres":
        base = os.environ.get(PG_ENV)
        if not base:
            pytest.skip(f"PostgreSQL tests need {PG_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
        yield from _fresh_postgres(base)
    else:
        base = os.environ.get(MARIADB_ENV)
        if not base:
            pytest.skip(f"MariaDB tests need {MARIADB_ENV} (e.g. mysql+pymysql://root@127.0.0.1:3306/test)")
        yield from _fresh_mariadb(base)


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

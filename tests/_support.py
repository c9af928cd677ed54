"""Helpers shared by the test suites."""

from __future__ import annotations

import os
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydot
import sqlalchemy as sa

PG_ENV = "EIPFLOW_TEST_POSTGRES_URL"
MARIADB_ENV = "EIPFLOW_TEST_MARIADB_URL"


class Call(threading.Thread):
    """Run a call in a thread and keep its outcome (result or exception)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def outcome(self) -> Any:
        """The call's result, re-raising its exception; fails the test if it never finished."""
        self.join(timeout=60)
        assert not self.is_alive(), "call did not finish"
        if self.error is not None:
            raise self.error
        return self.result


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


def skip_reason(kind: str) -> str | None:
    """Why a database kind cannot be tested here (its URL variable is unset), or ``None``."""
    if kind == "postgres" and not os.environ.get(PG_ENV):
        return f"PostgreSQL tests need {PG_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)"
    if kind == "mariadb" and not os.environ.get(MARIADB_ENV):
        return f"MariaDB tests need {MARIADB_ENV} (e.g. mysql+pymysql://root@127.0.0.1:3306/test)"
    return None


@contextmanager
def fresh_database(kind: str, tmp_dir: Path) -> Iterator[str]:
    """A fresh, empty database of ``kind`` (sqlite, postgres, mariadb), dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_dir / f'eipflow-{uuid.uuid4().hex[:8]}.db'}"
    elif kind == "postgres":
        yield from _fresh_postgres(os.environ[PG_ENV])
    else:
        yield from _fresh_mariadb(os.environ[MARIADB_ENV])


def parse_dot(src: str) -> pydot.Dot:
    """Parse Graphviz DOT text (what the diagram tests read back)."""
    with warnings.catch_warnings():
        # pydot 4.0.1's parser still calls pyparsing's camelCase API, deprecated in pyparsing 3.3
        warnings.simplefilter("ignore", DeprecationWarning)
        graphs = pydot.graph_from_dot_data(src)
    assert graphs, "DOT did not parse"
    return graphs[0]


@contextmanager
def serving(app: Any, socket_path: str, token: str) -> Iterator[Any]:
    """A real uvicorn serving the ASGI ``app`` on a Unix socket, in a thread stopped on leaving.

    Yields an :class:`httpx.Client` for it that sends ``token`` (the agent extra must be installed).
    """
    import httpx
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, uds=socket_path, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, name="agent-under-test")
    thread.start()
    try:
        transport = httpx.HTTPTransport(uds=socket_path)
        with httpx.Client(base_url="http://agent", transport=transport,
                          headers={"Authorization": f"Bearer {token}"}) as client:
            deadline = time.monotonic() + 10
            while not server.started and thread.is_alive() and time.monotonic() < deadline:
                time.sleep(0.02)  # bounded wait for the server to come up (not a race wait)
            assert server.started, "agent did not start"
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=10)

"""(7, part 4) The DBOS Transact peer of ``bench_flows.py``: durable workflows vs eipflow's attach, same database.

Two DBOS workflows, each run synchronously by the calling thread (one caller, 16 callers):

- **3 no-op steps** — ``@DBOS.step`` functions that return their argument: what DBOS's durability costs on
  its own (the workflow's status row, a checkpoint per step, the final status).
- **the attach protocol** — the floor's T1 and T2 (``_floor.py``: the same rows, the same version checks) as
  DBOS *datasource transactions* (``SQLAlchemyDatasource.transaction``: the step's writes and its checkpoint
  commit together, DBOS's way of making a database step exactly-once), the no-op backend call a step in
  between. The datasource is eipflow's database; eipflow's own attach is measured on the same database in
  the same run, rounds interleaved.

DBOS keeps its system tables in SQLite or PostgreSQL only (MariaDB is skipped). On SQLite the system
database is a file of its own beside eipflow's (as ``eipflow.integrations.dbos`` recommends, so the two
do not contend for one file lock), opened with the same settings eipflow uses (WAL, the target's
``synchronous``, ``BEGIN IMMEDIATE``, a 30 s busy timeout); on PostgreSQL both live in one database, DBOS's
tables in a schema of their own (``shared_config``'s layout). DBOS runs with its own defaults otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import uuid as uuidlib
from collections import deque
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from _common import NoopBackend, Target, fresh, open_flow, vip
from _floor import HIST_COLS, LEASE_SQL, WORK_COLS, Floor
from _flows import (
    ATTACH_VM,
    HOST,
    Pool,
    Results,
    attach_rates,
    eip_uuid,
    eipflow_variant,
    guest_ip,
    popping,
    seed_vms,
)

from eipflow.values import EipSpec


def _sqlite_engine(path: str, synchronous: str | None, pool_size: int = 20) -> sa.Engine:
    """An SQLite engine with eipflow's settings and DBOS's transaction mode (pysqlite's ``IMMEDIATE``)."""
    engine = sa.create_engine(f"sqlite:///{path}", pool_size=pool_size, max_overflow=10,
                              connect_args={"check_same_thread": False, "timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = "IMMEDIATE"
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute(f"PRAGMA synchronous={synchronous or 'FULL'}")
        dbapi_conn.execute("PRAGMA busy_timeout=30000")
        dbapi_conn.execute("PRAGMA foreign_keys=ON")

    return engine


class _Protocol:
    """The floor's T1 and T2 as SQLAlchemy ``text()`` statements for a datasource session (named parameters)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        cols = ", ".join(WORK_COLS)
        marks = ", ".join(f":{c}" for c in WORK_COLS)
        self.work = sa.text(f"INSERT INTO eip_work ({cols}, lease_expires_at) VALUES ({marks}, {LEASE_SQL[kind]}) "
                            f"RETURNING id")
        self.t1 = sa.text("UPDATE eip SET desired = 'attached', vm_nic_uuid = :nic, guest_ip = :gip, vm_uuid = :vm, "
                          "host_uuid = :host, applied_host = :host, attach_confirmed = :no, last_error = NULL, "
                          "work_id = :w, state = 'applying', version = :to, updated_at = :now "
                          "WHERE uuid = :u AND version = :v")
        self.hist = sa.text(f"INSERT INTO eip_transition ({', '.join(HIST_COLS)}) "
                            f"VALUES ({', '.join(f':{c}' for c in HIST_COLS)})")
        self.done = sa.text("UPDATE eip_work SET status = 'done', lease_owner = NULL, lease_expires_at = NULL, "
                            "updated_at = :now WHERE id = :w AND lease_owner = :owner AND status = 'running'")
        self.t2 = sa.text("UPDATE eip SET state = 'attached', attach_confirmed = :yes, last_error = NULL, "
                          "work_id = NULL, version = :to, updated_at = :now WHERE uuid = :u AND version = :v")

    def now(self) -> Any:
        from datetime import UTC, datetime

        naive = datetime.now(UTC).replace(tzinfo=None)
        return naive.isoformat(" ", "microseconds") if self.kind == "sqlite" else naive

    def history(self, u: str, event: str, src: str, dst: str, version: int, now: Any, details: dict[str, Any]
                ) -> dict[str, Any]:
        return {"eip_uuid": u, "event": event, "from_state": src, "to_state": dst, "version": version,
                "actor": "dbos", "op_id": None, "at": now, "details": json.dumps(details, sort_keys=True)}


def part_dbos(t: Target, args: argparse.Namespace, res: Results) -> None:
    try:
        from dbos import DBOS, SQLAlchemyDatasource
    except ImportError:
        res.notes.append("DBOS Transact is not installed (pip install dbos into the benchmark venv): DBOS peer skipped")
        return
    if t.kind == "mariadb":
        res.notes.append("DBOS keeps its system database in SQLite or PostgreSQL only: no DBOS figures on MariaDB")
        return
    schema = f"dbos_bench_{uuidlib.uuid4().hex[:8]}"
    engines: list[sa.Engine] = []
    sys_path: str | None = None
    with fresh(t) as db:
        flow = open_flow(db)
        try:
            seed_vms(flow.store.engine, [ATTACH_VM], HOST)
            pool = Pool(flow.store.engine)
            if db.kind == "sqlite":
                assert db.path is not None
                sys_path = os.path.join(os.path.dirname(db.path), f"dbos-sys-{uuidlib.uuid4().hex[:6]}.db")
                sys_engine = _sqlite_engine(sys_path, db.synchronous)
                ds_engine = _sqlite_engine(db.path, db.synchronous)
                config: dict[str, Any] = {"system_database_url": f"sqlite:///{sys_path}",
                                          "system_database_engine": sys_engine}
                isolation = "SERIALIZABLE"  # what SQLite is; pysqlite knows no READ COMMITTED
                engines += [sys_engine, ds_engine]
            else:
                ds_engine = sa.create_engine(db.url, pool_size=20, max_overflow=10)
                config = {"system_database_url": db.url, "dbos_system_schema": schema, "sys_db_pool_size": 24}
                isolation = "READ COMMITTED"  # eipflow's level on the servers
                engines.append(ds_engine)
            DBOS(config={"name": "eipflow-bench-flows", "log_level": "WARNING", **config})  # type: ignore[typeddict-item]
            try:
                ds = SQLAlchemyDatasource.create(db.url, engine=ds_engine, schema=schema)
                variants = _register(DBOS, ds, _Protocol(db.kind), isolation)
                DBOS.launch()
                variants["eipflow"] = eipflow_variant(flow)
                guess = {"dbos3": 600.0, "dbos_protocol": 300.0, "eipflow": 800.0}
                rates = attach_rates(t.label, pool, variants, args.workers, args.seconds, args.rounds, guess)
            finally:
                DBOS.destroy(destroy_registry=True)
        finally:
            flow.close()
            for engine in engines:
                engine.dispose()
            for suffix in ("", "-wal", "-shm", "-journal"):
                if sys_path is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(f"{sys_path}{suffix}")
            if db.kind == "postgres":
                admin = sa.create_engine(t.url, isolation_level="AUTOCOMMIT")
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                admin.dispose()
    out = {}
    for w in args.workers:
        d3, dp, ef = rates[("dbos3", w)], rates[("dbos_protocol", w)], rates[("eipflow", w)]
        out[w] = {"dbos3": d3, "dbos_protocol": dp, "eipflow": ef, "ratio3": ef / d3, "ratio_protocol": ef / dp}
    res.put(t.label, "dbos", out)


def _register(dbos: Any, ds: Any, sql: _Protocol, isolation: str) -> dict[str, Any]:
    """The two workflows (registered before ``DBOS.launch()``) as ``bench_flows`` variants."""
    backend = NoopBackend()

    @dbos.step(name="bench.noop")
    def noop(j: int) -> int:
        return j

    @dbos.workflow(name="bench.three_steps")
    def three_steps(j: int) -> int:
        noop(j)
        noop(j)
        noop(j)
        return j

    @ds.transaction(name="bench.t1", isolation_level=isolation)
    def t1(j: int, owner: str) -> int:
        session = ds.sql_session()
        u, now = eip_uuid(j), sql.now()
        nic, gip = f"nic-{j}", guest_ip(j)
        row = dict(zip(WORK_COLS, (u, "apply", vip(j), nic, gip, HOST, "running", 1, now, owner, None, False, now, now,
                                   3, None), strict=True))
        work_id = int(session.execute(sql.work, row).scalar_one())
        moved = session.execute(sql.t1, {"nic": nic, "gip": gip, "vm": ATTACH_VM, "host": HOST, "no": False,
                                         "w": work_id, "to": 3, "now": now, "u": u, "v": 1}).rowcount
        if moved != 1:
            raise RuntimeError(f"DBOS attach T1 lost on {u}")
        session.execute(sql.hist, [
            sql.history(u, "attach", "detached", "binding", 2, now,
                        {"guest_ip": gip, "host": HOST, "nic": nic, "vm": ATTACH_VM}),
            sql.history(u, "proceed", "binding", "applying", 3, now, {"attempt": 1, "work_id": work_id}),
        ])
        return work_id

    @dbos.step(name="bench.apply")
    def apply(j: int) -> None:
        backend.apply(EipSpec(eip_uuid(j), vip(j), f"nic-{j}", guest_ip(j), HOST, 3))

    @ds.transaction(name="bench.t2", isolation_level=isolation)
    def t2(j: int, work_id: int, owner: str) -> None:
        session = ds.sql_session()
        u, now = eip_uuid(j), sql.now()
        if session.execute(sql.done, {"now": now, "w": work_id, "owner": owner}).rowcount != 1:
            raise RuntimeError(f"DBOS attach T2: lease of work {work_id} lost")
        if session.execute(sql.t2, {"yes": True, "to": 4, "now": now, "u": u, "v": 3}).rowcount != 1:
            raise RuntimeError(f"DBOS attach T2 lost on {u}")
        session.execute(sql.hist, sql.history(u, "apply_ok", "applying", "attached", 4, now,
                                              {"attempt": 1, "host_uuid": HOST, "work_id": work_id}))

    @dbos.workflow(name="bench.attach")
    def attach(j: int, owner: str) -> int:
        work_id = t1(j, owner)
        apply(j)
        t2(j, work_id, owner)
        return j

    def variant(run: Callable[[int, int], Any]) -> Any:
        def make(_workers: int, queue: deque[int], _opened: list[Floor]) -> Callable[[int], Callable[[], bool]]:
            return lambda n: popping(queue, lambda j: run(j, n))

        return make

    return {"dbos3": variant(lambda j, _n: three_steps(j)),
            "dbos_protocol": variant(lambda j, n: attach(j, f"dbos-{n}"))}


if __name__ == "__main__":  # pragma: no cover - run through bench_flows.py
    sys.exit("run: python benchmarks/bench_flows.py --parts dbos")

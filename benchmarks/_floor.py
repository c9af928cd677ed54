"""The protocol floor: eipflow's attach, release and worker-drain protocols written by hand on the raw driver.

One :class:`Floor` is one driver connection (sqlite3, psycopg or PyMySQL; SQLAlchemy only opens it, as
``bench_transition.RawConn`` does, so URL options such as PostgreSQL's ``search_path`` are honoured) running
the same protocol eipflow runs against eipflow's own tables, with the fewest statements and transactions the
protocol allows:

- **attach** — the two-transaction floor. T1: insert the work item already leased to the caller (status
  ``running``, generation = the version T1 writes), the version-checked ``UPDATE eip`` to ``applying``
  with the binding, ``applied_host`` and ``work_id`` (version + 2: eipflow passes through ``binding``), and
  both history rows eipflow writes (``attach``, ``proceed``). The backend call (no-op), with no
  transaction open. T2: the fenced completion — ``UPDATE eip_work … done WHERE id AND lease_owner AND
  status = 'running'``, ``UPDATE eip … attached WHERE uuid AND version``, the ``apply_ok`` history row.
  Versions are tracked in memory (the rows are the caller's own), as the raw baseline of
  ``bench_transition.py`` does; the VM's recorded placement is not read.
- **release** (a VM stop, a host evacuation) — the batched floor. T1: the VM fact(s), one ``SELECT`` of the
  EIPs to release (their versions and hosts), K work items leased to the caller (``INSERT … RETURNING id``,
  batched), K version-checked ``UPDATE``s to ``releasing`` (batched), K history rows. K no-op revokes. T2:
  K work items done (``WHERE id IN (…) AND lease_owner AND running``), K version-checked ``UPDATE``s to
  ``released``, K history rows.
- **drain** — the batched worker. Per batch of 500 due items, T1: claim them (``UPDATE … WHERE id IN
  (SELECT … LIMIT 500) RETURNING``; MariaDB, which refuses that form, selects ``FOR UPDATE SKIP LOCKED``
  then updates), read their EIP rows, ``proceed`` them (``binding`` → ``applying``, host and generation on
  the item), history. 500 no-op applies. T2: as the attach's T2, batched.

Batched writes, the fastest way measured on each database: SQLite and MariaDB one statement per chunk of
1,000 rows — a multi-row ``VALUES`` insert, and for updates a join with the chunk as a derived table
(``UPDATE … FROM (VALUES …)`` on SQLite, ``UPDATE … JOIN (SELECT … UNION ALL …)`` on MariaDB, where PyMySQL's
``executemany`` of an ``UPDATE`` is one round trip per row); PostgreSQL one pipelined ``executemany`` of the
per-row statement (psycopg's pipeline mode: 3x faster there than multi-row ``VALUES``). Leases are on the
database's clock, in the statement (as eipflow's; eipflow also adds the shared test skew, a scalar subquery
this floor leaves out).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from _common import NoopBackend, Target

from eipflow.values import EipSpec

CHUNK = 1000  # rows per multi-row statement (16 parameters a work item: under SQLite's 32,766 limit)
LEASE_SECONDS = 60

WORK_COLS = ("eip_uuid", "action", "vip", "vm_nic_uuid", "guest_ip", "host_uuid", "status", "attempts", "due_at",
              "lease_owner", "last_error", "cleanup", "created_at", "updated_at", "generation", "trace_context")
#: a lease's expiry on the database's own clock, per database (in the statement, as eipflow's)
LEASE_SQL = {
    "sqlite": f"(strftime('%Y-%m-%d %H:%M:%f', 'now', '+{LEASE_SECONDS} seconds') || '000')",
    "postgres": f"((clock_timestamp() AT TIME ZONE 'UTC') + interval '{LEASE_SECONDS} seconds')",
    "mariadb": f"(UTC_TIMESTAMP(6) + INTERVAL {LEASE_SECONDS} SECOND)",
}
HIST_COLS = ("eip_uuid", "event", "from_state", "to_state", "version", "actor", "op_id", "at", "details")


class FloorError(RuntimeError):
    """A compare-and-swap or a fence of the floor lost (it never should: every caller owns its rows)."""


class Floor:
    """One raw driver connection running eipflow's protocols by hand (see the module docstring)."""

    def __init__(self, target: Target, owner: str = "floor") -> None:
        self.kind = target.kind
        self.owner = owner
        self.backend = NoopBackend()
        self.calls: Counter[str] = Counter()  # statements sent, by kind (an executemany is one)
        self._fairy: Any = None
        if target.kind == "sqlite":
            assert target.path is not None
            self.conn: Any = sqlite3.connect(target.path, isolation_level=None, check_same_thread=False, timeout=30)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(f"PRAGMA synchronous={target.synchronous}")
            self.conn.execute("PRAGMA busy_timeout=30000")
            self.p = "?"
        else:
            self._engine = sa.create_engine(target.url, poolclass=sa.pool.NullPool, isolation_level="READ COMMITTED")
            self._fairy = self._engine.raw_connection()
            self.conn = self._fairy.driver_connection
            self.conn.autocommit = False
            self.p = "%s"
        self.lease = LEASE_SQL[target.kind]
        self.cur = self.conn.cursor()
        p = self.p
        cols = ", ".join(WORK_COLS)
        self._work_row = f"({', '.join([p] * len(WORK_COLS))}, {self.lease})"  # the lease on the database's clock
        self._insert_work_head = f"INSERT INTO eip_work ({cols}, lease_expires_at) VALUES "
        returning = " RETURNING id" if self.kind == "postgres" else ""  # the others report lastrowid
        self._insert_work = self._insert_work_head + self._work_row + returning
        self._hist_row = f"({', '.join([p] * len(HIST_COLS))})"
        self._insert_hist_head = f"INSERT INTO eip_transition ({', '.join(HIST_COLS)}) VALUES "
        self._insert_hist = self._insert_hist_head + self._hist_row
        self._t1_eip = (f"UPDATE eip SET desired = 'attached', vm_nic_uuid = {p}, guest_ip = {p}, vm_uuid = {p}, "
                        f"host_uuid = {p}, applied_host = {p}, attach_confirmed = {p}, last_error = NULL, "
                        f"work_id = {p}, state = 'applying', version = {p}, updated_at = {p} "
                        f"WHERE uuid = {p} AND version = {p}")
        self._done = (f"UPDATE eip_work SET status = 'done', lease_owner = NULL, lease_expires_at = NULL, "
                      f"updated_at = {p} WHERE id = {p} AND lease_owner = {p} AND status = 'running'")
        self._t2_eip = (f"UPDATE eip SET state = 'attached', attach_confirmed = {p}, last_error = NULL, "
                        f"work_id = NULL, version = {p}, updated_at = {p} WHERE uuid = {p} AND version = {p}")

    # -- plumbing --------------------------------------------------------------------------------------
    def now(self) -> Any:
        """This process's clock, in the form the driver binds (SQLite: SQLAlchemy's DATETIME text)."""
        naive = datetime.now(UTC).replace(tzinfo=None)
        return naive.isoformat(" ", "microseconds") if self.kind == "sqlite" else naive

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Any:
        self.calls[sql.lstrip().split(None, 1)[0].upper()] += 1
        self.cur.execute(sql, params)
        return self.cur

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        self.calls[sql.lstrip().split(None, 1)[0].upper()] += 1
        self.cur.executemany(sql, rows)
        return self.cur

    def begin(self) -> None:
        if self.kind == "sqlite":
            self._exec("BEGIN IMMEDIATE")  # the servers begin implicitly (autocommit off)

    def commit(self) -> None:
        self.calls["COMMIT"] += 1
        self.conn.commit()

    def rollback(self) -> None:
        self.calls["ROLLBACK"] += 1
        self.conn.rollback()

    def close(self) -> None:
        self.cur.close()
        if self._fairy is not None:
            self._fairy.close()
            self._engine.dispose()
        else:
            self.conn.close()

    def _lost(self, what: str) -> FloorError:
        self.rollback()
        return FloorError(what)

    # -- batched statements ----------------------------------------------------------------------------
    def insert_many(self, head: str, row: str, rows: Sequence[Sequence[Any]], returning: str = "") -> list[Any]:
        """Insert ``rows``; with ``returning``, the rows the ``RETURNING`` clause gives (in no promised order).

        PostgreSQL: one ``executemany`` (psycopg pipelines it: ~3x faster here than multi-row ``VALUES``, which
        the server parses and plans per chunk); SQLite and MariaDB: a multi-row ``INSERT`` per chunk.
        """
        tail = f" RETURNING {returning}" if returning else ""
        if self.kind == "postgres":
            self.calls["INSERT"] += 1
            self.cur.executemany(head + row + tail, rows, returning=bool(returning))
            out: list[Any] = []
            while returning:
                out.extend(self.cur.fetchall())
                if not self.cur.nextset():
                    break
            return out
        out = []
        for lo in range(0, len(rows), CHUNK):
            chunk = rows[lo:lo + CHUNK]
            self._exec(head + ", ".join([row] * len(chunk)) + tail, [v for r in chunk for v in r])
            if returning:
                out.extend(self.cur.fetchall())
        return out

    def update_many(self, table: str, cols: Sequence[str], rows: Sequence[Sequence[Any]], sets: str,
                    match: str) -> int:
        """Update ``table`` (``t``) from ``rows`` (tuples of ``cols``, named ``x.<col>`` in ``sets`` and
        ``match``); returns how many rows matched.

        SQLite and MariaDB: one statement per chunk, joined with the chunk as a derived table ``x`` (``UPDATE …
        FROM (VALUES …)``; MariaDB ``UPDATE … JOIN (SELECT … UNION ALL …)``: PyMySQL's ``executemany`` of an
        ``UPDATE`` is one round trip per row). PostgreSQL: the per-row statement in one pipelined
        ``executemany`` (faster here than the join).
        """
        p = self.p
        if self.kind == "postgres":
            per_row = re.sub(r"\bx\.(\w+)\b", r"%(\1)s", f"UPDATE {table} AS t SET {sets} WHERE {match}")
            self.calls["UPDATE"] += 1
            self.cur.executemany(per_row, [dict(zip(cols, r, strict=True)) for r in rows])
            return int(self.cur.rowcount)
        matched = 0
        for lo in range(0, len(rows), CHUNK):
            chunk = rows[lo:lo + CHUNK]
            values = [v for r in chunk for v in r]
            if self.kind == "mariadb":
                first = "SELECT " + ", ".join(f"{p} AS {c}" for c in cols)
                derived = first + (" UNION ALL SELECT " + ", ".join([p] * len(cols))) * (len(chunk) - 1)
                sql = f"UPDATE {table} AS t JOIN ({derived}) AS x ON {match} SET {sets}"
            else:
                names = ", ".join(f"column{i + 1} AS {c}" for i, c in enumerate(cols))
                tuples = ", ".join([f"({', '.join([p] * len(cols))})"] * len(chunk))
                derived = f"SELECT {names} FROM (VALUES {tuples}) AS v"
                sql = f"UPDATE {table} AS t SET {sets} FROM ({derived}) AS x WHERE {match}"
            matched += self._exec(sql, values).rowcount
        return matched

    def _done_many(self, ids: Sequence[int], now: Any) -> int:
        p = self.p
        done = 0
        for lo in range(0, len(ids), CHUNK):
            chunk = ids[lo:lo + CHUNK]
            sql = (f"UPDATE eip_work SET status = 'done', lease_owner = NULL, lease_expires_at = NULL, "
                   f"updated_at = {p} WHERE id IN ({', '.join([p] * len(chunk))}) AND lease_owner = {p} "
                   f"AND status = 'running'")
            done += self._exec(sql, [now, *chunk, self.owner]).rowcount
        return done

    def _work(self, eip_uuid: str, action: str, vip: str, nic: str, guest_ip: str, host: str | None, now: Any,
              generation: int, status: str = "running", attempts: int = 1, owner: str | None = None) -> tuple[Any, ...]:
        return (eip_uuid, action, vip, nic, guest_ip, host, status, attempts, now,
                owner if owner is not None else self.owner, None, False, now, now, generation, None)

    # -- attach: the two-transaction floor -------------------------------------------------------------
    def attach(self, uuid: str, version: int, vip: str, nic: str, guest_ip: str, vm: str, host: str) -> int:
        """Attach a ``detached`` EIP at ``version``; returns the version it ends at (``attached``)."""
        now = self.now()
        applying = version + 2  # eipflow passes through binding (version + 1): the same versions, the same history
        self.begin()
        cur = self._exec(self._insert_work, self._work(uuid, "apply", vip, nic, guest_ip, host, now, applying))
        work_id = cur.fetchone()[0] if self.kind == "postgres" else cur.lastrowid
        if self._exec(self._t1_eip, (nic, guest_ip, vm, host, host, False, work_id, applying, now, uuid,
                                     version)).rowcount != 1:
            raise self._lost(f"attach T1 lost on {uuid} v{version}")
        details = json.dumps({"guest_ip": guest_ip, "host": host, "nic": nic, "vm": vm}, sort_keys=True)
        self._many(self._insert_hist, [
            (uuid, "attach", "detached", "binding", version + 1, self.owner, None, now, details),
            (uuid, "proceed", "binding", "applying", applying, self.owner, None, now,
             json.dumps({"attempt": 1, "work_id": work_id}, sort_keys=True)),
        ])
        self.commit()
        self.backend.apply(EipSpec(uuid, vip, nic, guest_ip, host, applying))
        now = self.now()
        self.begin()
        if self._exec(self._done, (now, work_id, self.owner)).rowcount != 1:
            raise self._lost(f"attach T2: lease of work {work_id} lost")
        if self._exec(self._t2_eip, (True, applying + 1, now, uuid, applying)).rowcount != 1:
            raise self._lost(f"attach T2 lost on {uuid} v{applying}")
        self._exec(self._insert_hist, (uuid, "apply_ok", "applying", "attached", applying + 1, self.owner, None, now,
                                       json.dumps({"attempt": 1, "host_uuid": host, "work_id": work_id},
                                                  sort_keys=True)))
        self.commit()
        return applying + 1

    # -- release: the batched floor (VM stop, host evacuation) -----------------------------------------
    def release(self, *, vm: str | None = None, host: str | None = None) -> int:
        """Release every attached EIP of ``vm`` (or of every VM on ``host``); returns how many."""
        p = self.p
        now = self.now()
        event = "vm_stopped"
        self.begin()
        # The fact first (as eipflow records it before the bindings): the VM(s) stopped.
        where, arg = ("uuid", vm) if vm is not None else ("host_uuid", host)
        self._exec(f"UPDATE eip_vm SET running = {p}, host_uuid = NULL, version = version + 1, updated_at = {p} "
                   f"WHERE {where} = {p}", (False, now, arg))
        pick = "vm_uuid" if vm is not None else "host_uuid"
        rows = self._exec(f"SELECT uuid, version, vip, vm_nic_uuid, guest_ip, applied_host FROM eip "
                          f"WHERE {pick} = {p} AND state = 'attached'", (arg,)).fetchall()
        if not rows:
            self.rollback()
            return 0
        ids = dict(self.insert_many(
            self._insert_work_head, self._work_row,
            [self._work(u, "revoke", vip, nic, gip, applied, now, v + 1) for u, v, vip, nic, gip, applied in rows],
            returning="eip_uuid, id"))
        moved = self.update_many(
            "eip", ("u", "v", "w", "at"), [(u, v, ids[u], now) for u, v, *_ in rows],
            sets="state = 'releasing', host_uuid = NULL, work_id = x.w, version = x.v + 1, updated_at = x.at",
            match="t.uuid = x.u AND t.version = x.v")
        if moved != len(rows):
            raise self._lost(f"release T1: {moved} of {len(rows)} compare-and-swaps matched")
        details = json.dumps({"host": None, "vm": vm}, sort_keys=True)
        self.insert_many(self._insert_hist_head, self._hist_row,
                         [(u, event, "attached", "releasing", v + 1, self.owner, None, now, details)
                          for u, v, *_ in rows])
        self.commit()
        for u, v, vip, nic, gip, applied in rows:
            self.backend.revoke(EipSpec(u, vip, nic, gip, applied, v + 1))
        now = self.now()
        self.begin()
        done = self._done_many(list(ids.values()), now)
        if done != len(rows):
            raise self._lost(f"release T2: {done} of {len(rows)} leases held")
        moved = self.update_many(
            "eip", ("u", "v", "at"), [(u, v + 1, now) for u, v, *_ in rows],
            sets="state = 'released', applied_host = NULL, attach_confirmed = TRUE, last_error = NULL, "
                 "work_id = NULL, version = x.v + 1, updated_at = x.at",
            match="t.uuid = x.u AND t.version = x.v")
        if moved != len(rows):
            raise self._lost(f"release T2: {moved} of {len(rows)} compare-and-swaps matched")
        self.insert_many(self._insert_hist_head, self._hist_row,
                         [(u, "revoke_ok", "releasing", "released", v + 2, self.owner, None, now,
                           json.dumps({"attempt": 1, "host_uuid": applied, "work_id": ids[u]}, sort_keys=True))
                          for u, v, _vip, _nic, _gip, applied in rows])
        self.commit()
        return len(rows)

    # -- drain: the batched worker ---------------------------------------------------------------------
    def drain_batch(self, limit: int = 500) -> int:
        """Claim up to ``limit`` due apply items of ``binding`` EIPs and run them to ``attached``; how many."""
        p = self.p
        now = self.now()
        self.begin()
        claim_sets = (f"status = 'running', lease_owner = {p}, lease_expires_at = {self.lease}, "
                      f"attempts = attempts + 1, updated_at = {p}")
        pick = f"SELECT id FROM eip_work WHERE status = 'pending' AND due_at <= {p} ORDER BY due_at, id LIMIT {p}"
        cols = "id, eip_uuid, vip, vm_nic_uuid, guest_ip"
        if self.kind == "mariadb":
            # MariaDB refuses LIMIT inside IN (…) and a subquery on the table it updates: pick, then claim.
            items = self._exec(f"SELECT {cols} FROM eip_work WHERE status = 'pending' AND due_at <= {p} "
                               f"ORDER BY due_at, id LIMIT {p} FOR UPDATE SKIP LOCKED", (now, limit)).fetchall()
            if items:
                marks = ", ".join([p] * len(items))
                claimed = self._exec(f"UPDATE eip_work SET {claim_sets} WHERE id IN ({marks}) AND status = 'pending'",
                                     (self.owner, now, *(i[0] for i in items))).rowcount
                if claimed != len(items):
                    raise self._lost(f"drain claim: {claimed} of {len(items)}")
        else:
            lock = " FOR UPDATE SKIP LOCKED" if self.kind == "postgres" else ""
            items = self._exec(f"UPDATE eip_work SET {claim_sets} WHERE id IN ({pick}{lock}) RETURNING {cols}",
                               (self.owner, now, now, limit)).fetchall()
        if not items:
            self.rollback()
            return 0
        marks = ", ".join([p] * len(items))
        eips = {u: (v, h) for u, v, h in self._exec(
            f"SELECT uuid, version, host_uuid FROM eip WHERE uuid IN ({marks})", [i[1] for i in items]).fetchall()}
        moved = self.update_many(
            "eip", ("u", "v", "at"), [(i[1], eips[i[1]][0], now) for i in items],
            sets="state = 'applying', applied_host = t.host_uuid, version = x.v + 1, updated_at = x.at",
            match="t.uuid = x.u AND t.version = x.v AND t.state = 'binding'")
        if moved != len(items):
            raise self._lost(f"drain proceed: {moved} of {len(items)} compare-and-swaps matched")
        fixed = self.update_many(
            "eip_work", ("i", "h", "g", "o", "at"),
            [(i[0], eips[i[1]][1], eips[i[1]][0] + 1, self.owner, now) for i in items],
            sets="host_uuid = x.h, generation = x.g, updated_at = x.at",
            match="t.id = x.i AND t.lease_owner = x.o AND t.status = 'running'")
        if fixed != len(items):
            raise self._lost(f"drain proceed: {fixed} of {len(items)} leases held")
        self.insert_many(self._insert_hist_head, self._hist_row,
                         [(i[1], "proceed", "binding", "applying", eips[i[1]][0] + 1, self.owner, None, now,
                           json.dumps({"attempt": 1, "work_id": i[0]}, sort_keys=True)) for i in items])
        self.commit()
        for _work_id, u, vip, nic, gip in items:
            version, host = eips[u]
            self.backend.apply(EipSpec(u, vip, nic, gip, host, version + 1))
        now = self.now()
        self.begin()
        done = self._done_many([i[0] for i in items], now)
        if done != len(items):
            raise self._lost(f"drain T2: {done} of {len(items)} leases held")
        moved = self.update_many(
            "eip", ("u", "v", "at"), [(i[1], eips[i[1]][0] + 1, now) for i in items],
            sets="state = 'attached', attach_confirmed = TRUE, last_error = NULL, work_id = NULL, "
                 "version = x.v + 1, updated_at = x.at",
            match="t.uuid = x.u AND t.version = x.v")
        if moved != len(items):
            raise self._lost(f"drain T2: {moved} of {len(items)} compare-and-swaps matched")
        self.insert_many(self._insert_hist_head, self._hist_row,
                         [(u, "apply_ok", "applying", "attached", eips[u][0] + 2, self.owner, None, now,
                           json.dumps({"attempt": 1, "host_uuid": eips[u][1], "work_id": w}, sort_keys=True))
                          for w, u, *_ in items])
        self.commit()
        return len(items)

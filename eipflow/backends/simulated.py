"""Simulated dataplanes: in memory (unit tests, hypothesis) and in the database (the CLI default).

Both keep one rule per (host, EIP), record every call, watch that calls for one
EIP never overlap, and consult a :class:`~eipflow.backends.faults.Faults` plan.
A revoke removes a rule only when it is the caller's own (same guest IP and
NIC), so a late revoke never removes a newer binding's rule.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

from .._logging import get_logger
from ..clock import utcnow
from ..store.database import retry_transient, translate_errors
from ..store.schema import SimRuleRow
from ..values import EipSpec
from .faults import Faults

__all__ = ["BackendCall", "InMemoryDataplane", "SimulatedDataplane"]

log = get_logger(__name__)
RULE = SimRuleRow.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class BackendCall:
    action: str
    spec: EipSpec
    outcome: str  # "ok" | "failed" | "timeout"


class _Simulated:
    def __init__(self) -> None:
        self.faults = Faults()
        self.calls: list[BackendCall] = []
        self.overlaps: list[str] = []  # EIP uuids that saw two calls in flight at once
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}

    # storage, by subclasses
    def _put(self, spec: EipSpec) -> None:
        raise NotImplementedError

    def _remove(self, spec: EipSpec) -> None:
        raise NotImplementedError

    @contextmanager
    def _tracking(self, spec: EipSpec) -> Iterator[None]:
        with self._lock:
            n = self._in_flight.get(spec.eip_uuid, 0) + 1
            self._in_flight[spec.eip_uuid] = n
            if n > 1:
                self.overlaps.append(spec.eip_uuid)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight[spec.eip_uuid] -= 1

    def _call(self, action: str, spec: EipSpec) -> None:
        with self._tracking(spec):
            failure = self.faults.before(action, spec)
            if failure is not None and not failure.timeout:
                self._log(action, spec, "failed")
                self.faults.raise_for(failure)
            (self._put if action == "apply" else self._remove)(spec)
            if failure is not None:
                self._log(action, spec, "timeout")
                self.faults.raise_for(failure)
            self._log(action, spec, "ok")

    def _log(self, action: str, spec: EipSpec, outcome: str) -> None:
        with self._lock:
            self.calls.append(BackendCall(action, spec, outcome))

    def apply(self, spec: EipSpec) -> None:
        self._call("apply", spec)

    def revoke(self, spec: EipSpec) -> None:
        self._call("revoke", spec)

    def calls_for(self, eip_uuid: str, action: str | None = None) -> list[BackendCall]:
        with self._lock:
            return [c for c in self.calls if c.spec.eip_uuid == eip_uuid and action in (None, c.action)]


class InMemoryDataplane(_Simulated):
    """Rules in a dict: for one process (unit tests, hypothesis, the asyncio example)."""

    def __init__(self) -> None:
        super().__init__()
        self._rules: dict[tuple[str, str], EipSpec] = {}

    def _put(self, spec: EipSpec) -> None:
        with self._lock:
            self._rules[(spec.host_uuid, spec.eip_uuid)] = spec

    def _remove(self, spec: EipSpec) -> None:
        with self._lock:
            held = self._rules.get((spec.host_uuid, spec.eip_uuid))
            if held is not None and (held.guest_ip, held.vm_nic_uuid) == (spec.guest_ip, spec.vm_nic_uuid):
                del self._rules[(spec.host_uuid, spec.eip_uuid)]

    def rules(self, host_uuid: str | None = None) -> list[EipSpec]:
        with self._lock:
            return sorted(
                (s for (h, _), s in self._rules.items() if host_uuid in (None, h)),
                key=lambda s: (s.host_uuid, s.eip_uuid),
            )

    def inject_rule(self, spec: EipSpec) -> None:
        """Put a rule behind eipflow's back (drift tests)."""
        self._put(spec)

    def drop_rule(self, host_uuid: str, eip_uuid: str) -> None:
        """Lose a rule behind eipflow's back (a host reboot, in drift tests)."""
        with self._lock:
            self._rules.pop((host_uuid, eip_uuid), None)


class SimulatedDataplane(_Simulated):
    """Rules in the ``sim_rule`` table of eipflow's own database, so separate processes share one dataplane.

    Created unbound by the ``eipflow.backends.simulated:factory`` import path; the engine binds it
    to its database (``bind``).
    """

    def __init__(self, engine: Engine | None = None) -> None:
        super().__init__()
        self.engine = engine

    def bind(self, engine: Engine) -> None:
        if self.engine is None:
            self.engine = engine

    def _db(self) -> Engine:
        if self.engine is None:
            raise RuntimeError("SimulatedDataplane is not bound to a database (call bind(engine))")
        return self.engine

    @retry_transient
    def _put(self, spec: EipSpec) -> None:
        engine = self._db()
        values = {"vip": spec.vip, "vm_nic_uuid": spec.vm_nic_uuid, "guest_ip": spec.guest_ip, "applied_at": utcnow()}
        row = {"host_uuid": spec.host_uuid, "eip_uuid": spec.eip_uuid, **values}
        # One native upsert per dialect: no read-then-write, no savepoint (MariaDB aborts the whole
        # transaction on a deadlock, taking any savepoint with it).
        dialect = engine.dialect.name
        stmt: Any
        if dialect == "postgresql":
            ins = pg_insert(RULE).values(row)
            stmt = ins.on_conflict_do_update(index_elements=["host_uuid", "eip_uuid"], set_=values)
        elif dialect in ("mysql", "mariadb"):
            stmt = mysql_insert(RULE).values(row).on_duplicate_key_update(**values)
        else:
            ins_lite = sqlite_insert(RULE).values(row)
            stmt = ins_lite.on_conflict_do_update(index_elements=["host_uuid", "eip_uuid"], set_=values)
        with translate_errors(engine), engine.begin() as conn:
            conn.execute(stmt)

    @retry_transient
    def _remove(self, spec: EipSpec) -> None:
        with translate_errors(self._db()), self._db().begin() as conn:
            conn.execute(
                RULE.delete().where(
                    RULE.c.host_uuid == spec.host_uuid,
                    RULE.c.eip_uuid == spec.eip_uuid,
                    RULE.c.guest_ip == spec.guest_ip,
                    RULE.c.vm_nic_uuid == spec.vm_nic_uuid,
                )
            )

    def rules(self, host_uuid: str | None = None) -> list[EipSpec]:
        stmt = sa.select(RULE).order_by(RULE.c.host_uuid, RULE.c.eip_uuid)
        if host_uuid is not None:
            stmt = stmt.where(RULE.c.host_uuid == host_uuid)
        with self._db().connect().execution_options(eipflow_read=True) as conn:
            return [
                EipSpec(r.eip_uuid, r.vip, r.vm_nic_uuid, r.guest_ip, r.host_uuid) for r in conn.execute(stmt)
            ]

    def inject_rule(self, spec: EipSpec) -> None:
        self._put(spec)

    def drop_rule(self, host_uuid: str, eip_uuid: str) -> None:
        with self._db().begin() as conn:
            conn.execute(RULE.delete().where(RULE.c.host_uuid == host_uuid, RULE.c.eip_uuid == eip_uuid))


def factory() -> SimulatedDataplane:
    """``--backend eipflow.backends.simulated:factory``: the database-backed simulated dataplane."""
    return SimulatedDataplane()


def memory_factory() -> InMemoryDataplane:
    """``--backend eipflow.backends.simulated:memory_factory``: a per-process in-memory dataplane."""
    return InMemoryDataplane()

"""Simulated dataplanes: in memory (unit tests, hypothesis) and in the database (the CLI default).

Both keep one record per (host, EIP) and judge every call with the generation rule of
:mod:`eipflow.backends.fencing` (an older call is refused with :class:`~eipflow.StaleGeneration`,
a revoke leaves a tombstone), record every call, watch that effective calls for one EIP never
overlap, and consult a :class:`~eipflow.backends.faults.Faults` plan.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .._logging import get_logger
from ..clock import utcnow
from ..errors import StaleGeneration
from ..store.database import retry_transient, translate_errors
from ..store.schema import SimRuleRow
from ..values import EipSpec
from .batch import Change, ChangeResult, result_of
from .faults import Faults
from .fencing import HostRecord, decide, record_after

__all__ = ["BackendCall", "InMemoryDataplane", "SimulatedDataplane"]

log = get_logger(__name__)
RULE = SimRuleRow.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class BackendCall:
    action: str
    spec: EipSpec
    outcome: str  # "ok" | "failed" | "timeout" | "refused" (stale generation)


class _Simulated:
    """Shared by both dataplanes: fault injection, the call log, the generation check, overlap watch.

    ``overlaps`` lists EIP uuids for which two *effective* calls (calls that changed the host's state)
    were in flight on one host at once. A call the generation check refused, or an idempotent repeat,
    changes nothing, so it cannot overlap anything: that is how a zombie's late call is made harmless.
    """

    def __init__(self) -> None:
        self.faults = Faults()
        self.calls: list[BackendCall] = []
        self.overlaps: list[str] = []  # EIP uuids that saw two effective calls in flight at once
        self._lock = threading.Lock()
        self._seq = 0
        self._effective: dict[tuple[str, str], list[tuple[int, int]]] = {}  # (host, eip) -> [(start, end)]
        #: the size of every backend call (a single apply or revoke is a batch of one)
        self.batches: list[int] = []

    # storage, by subclasses: judge each call with fencing.decide and realize the batch atomically
    def _effect_many(self, changes: Sequence[Change]) -> list[bool | StaleGeneration]:
        """Apply the generation rule to each change and realize the accepted ones, all at once.

        Per change: ``True`` when the host's state changed, ``False`` for an idempotent repeat, or the
        :class:`~eipflow.StaleGeneration` that refused it (nothing changed for that one).
        """
        raise NotImplementedError

    def _tick(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def _finished(self, spec: EipSpec, started: int) -> None:
        ended = self._tick()
        key = (spec.host_uuid, spec.eip_uuid)
        with self._lock:
            spans = self._effective.setdefault(key, [])
            if any(end > started for _, end in spans):
                self.overlaps.append(spec.eip_uuid)
            spans.append((started, ended))
            del spans[:-64]  # bounded memory: far more calls than a test keeps in flight at once

    def _inside(self, action: str, spec: EipSpec) -> None:
        """Hook: runs once a call is in flight, before its effect (tests run concurrent actors here)."""

    def apply_changes(self, host_uuid: str, changes: Sequence[Change]) -> list[ChangeResult]:
        """The batch call: every change judged on its own, the accepted ones realized in one write."""
        self.faults.sleep_latency({c.action for c in changes})  # one round trip for the whole batch
        results: list[ChangeResult | None] = [None] * len(changes)
        started: list[int] = []
        going: list[tuple[int, Any]] = []  # (index, the timeout to report once the effect happened)
        for i, change in enumerate(changes):
            if change.spec.host_uuid != host_uuid:
                raise ValueError(f"{change.spec.eip_uuid}: a change for {change.spec.host_uuid} in {host_uuid}'s batch")
            started.append(self._tick())
            self._inside(change.action, change.spec)
            failure = self.faults.before(change.action, change.spec, latency=False)
            if failure is not None and not failure.timeout:
                self._log(change.action, change.spec, "failed")
                results[i] = result_of(self.faults.error_for(failure))
            else:
                going.append((i, failure))
        outcomes = self._effect_many([changes[i] for i, _ in going]) if going else []
        for (i, failure), outcome in zip(going, outcomes, strict=True):
            change = changes[i]
            if isinstance(outcome, StaleGeneration):
                self._log(change.action, change.spec, "refused")
                results[i] = result_of(outcome)
                continue
            if outcome:
                self._finished(change.spec, started[i])  # the host is done with it; only the answer may be held
            self.faults.after(change.action, change.spec)
            if failure is not None:
                self._log(change.action, change.spec, "timeout")
                results[i] = result_of(self.faults.error_for(failure))
                continue
            self._log(change.action, change.spec, "ok")
            results[i] = result_of(None)
        self.batches.append(len(changes))
        return [r for r in results if r is not None]

    def _call(self, action: str, spec: EipSpec) -> None:
        (result,) = self.apply_changes(spec.host_uuid, [Change(action, spec)])
        if result.error is not None:
            raise result.error

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
        self._records: dict[tuple[str, str], HostRecord] = {}

    def _effect_many(self, changes: Sequence[Change]) -> list[bool | StaleGeneration]:
        out: list[bool | StaleGeneration] = []
        with self._lock:  # the host's per-EIP checks and writes are one step
            for change in changes:
                spec = change.spec
                key = (spec.host_uuid, spec.eip_uuid)
                record = self._records.get(key)
                try:
                    decision = decide(record, change.action, spec)
                except StaleGeneration as exc:
                    out.append(exc)
                    continue
                self._records[key] = record_after(record, decision, spec)
                out.append(not decision.same)
        return out

    def record(self, host_uuid: str, eip_uuid: str) -> HostRecord | None:
        """What the host remembers of the EIP (its generation, and the rule or a tombstone)."""
        with self._lock:
            return self._records.get((host_uuid, eip_uuid))

    def rules(self, host_uuid: str | None = None) -> list[EipSpec]:
        with self._lock:
            return sorted(
                (r.spec for (h, _), r in self._records.items() if r.spec is not None and host_uuid in (None, h)),
                key=lambda s: (s.host_uuid, s.eip_uuid),
            )

    def inject_rule(self, spec: EipSpec) -> None:
        """Put a rule behind eipflow's back (drift tests): no generation check."""
        with self._lock:
            self._records[(spec.host_uuid, spec.eip_uuid)] = HostRecord(spec.generation, spec)

    def drop_rule(self, host_uuid: str, eip_uuid: str) -> None:
        """Lose a rule behind eipflow's back (a host reboot, in drift tests); the generation is remembered."""
        with self._lock:
            record = self._records.get((host_uuid, eip_uuid))
            if record is not None:
                self._records[(host_uuid, eip_uuid)] = HostRecord(record.generation, None)


class SimulatedDataplane(_Simulated):
    """Rules in the ``sim_rule`` table of eipflow's own database, so separate processes share one dataplane.

    A revoked rule stays as a tombstone row (``revoked``), so its generation keeps refusing older calls.
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

    @staticmethod
    def _record(row: Any) -> HostRecord:
        spec = EipSpec(row.eip_uuid, row.vip, row.vm_nic_uuid, row.guest_ip, row.host_uuid, row.generation)
        return HostRecord(row.generation, None if row.revoked else spec)

    @retry_transient
    def _effect_many(self, changes: Sequence[Change]) -> list[bool | StaleGeneration]:
        """One transaction per batch: read the host's records of its EIPs (locked), judge each change,
        then one executemany INSERT of first records and one executemany UPDATE of changed ones."""
        engine = self._db()
        host = changes[0].spec.host_uuid
        uuids = [c.spec.eip_uuid for c in changes]
        if len(set(uuids)) != len(uuids):
            raise ValueError("a batch holds at most one change per EIP")
        select = sa.select(RULE).where(RULE.c.host_uuid == host, RULE.c.eip_uuid.in_(uuids))
        if engine.dialect.name != "sqlite":
            select = select.with_for_update()  # SQLite: BEGIN IMMEDIATE already holds the write lock
        for _ in range(5):
            try:
                with translate_errors(engine), engine.begin() as conn:
                    held = {row.eip_uuid: self._record(row) for row in conn.execute(select)}
                    out: list[bool | StaleGeneration] = []
                    inserts: list[dict[str, Any]] = []
                    updates: list[dict[str, Any]] = []
                    now = utcnow()
                    for change in changes:
                        spec = change.spec
                        record = held.get(spec.eip_uuid)
                        try:
                            decision = decide(record, change.action, spec)
                        except StaleGeneration as exc:
                            out.append(exc)
                            continue
                        after = record_after(record, decision, spec)
                        kept = after.spec or (record.spec if record is not None else None) or spec
                        values = {"b_eip": spec.eip_uuid, "vip": kept.vip, "vm_nic_uuid": kept.vm_nic_uuid,
                                  "guest_ip": kept.guest_ip, "generation": after.generation,
                                  "revoked": after.revoked, "applied_at": now}
                        if record is None:
                            inserts.append(values)
                        elif not decision.same:
                            updates.append(values)
                        out.append(not decision.same)
                    if inserts:
                        conn.execute(self._insert_stmt(host), inserts)
                    if updates:
                        conn.execute(self._update_stmt(host), updates)
                    return out
            except sa.exc.IntegrityError:
                continue  # another process inserted a first record meanwhile: judge against it
        raise RuntimeError(f"could not record a batch of {len(changes)} on {host}")  # pragma: no cover

    @staticmethod
    def _insert_stmt(host: str) -> Any:
        return RULE.insert().values(
            host_uuid=host, eip_uuid=sa.bindparam("b_eip"),
            **{c: sa.bindparam(c) for c in ("vip", "vm_nic_uuid", "guest_ip", "generation", "revoked", "applied_at")})

    @staticmethod
    def _update_stmt(host: str) -> Any:
        return (RULE.update().where(RULE.c.host_uuid == host, RULE.c.eip_uuid == sa.bindparam("b_eip"))
                .values(**{c: sa.bindparam(c) for c in ("vip", "vm_nic_uuid", "guest_ip", "generation", "revoked",
                                                        "applied_at")}))

    def rules(self, host_uuid: str | None = None) -> list[EipSpec]:
        stmt = sa.select(RULE).where(RULE.c.revoked == sa.false()).order_by(RULE.c.host_uuid, RULE.c.eip_uuid)
        if host_uuid is not None:
            stmt = stmt.where(RULE.c.host_uuid == host_uuid)
        with self._db().connect().execution_options(eipflow_read=True) as conn:
            return [
                EipSpec(r.eip_uuid, r.vip, r.vm_nic_uuid, r.guest_ip, r.host_uuid, r.generation)
                for r in conn.execute(stmt)
            ]

    def record(self, host_uuid: str, eip_uuid: str) -> HostRecord | None:
        """What the host remembers of the EIP (its generation, and the rule or a tombstone)."""
        stmt = sa.select(RULE).where(RULE.c.host_uuid == host_uuid, RULE.c.eip_uuid == eip_uuid)
        with self._db().connect().execution_options(eipflow_read=True) as conn:
            row = conn.execute(stmt).first()
        return self._record(row) if row is not None else None

    @retry_transient
    def inject_rule(self, spec: EipSpec) -> None:
        """Put a rule behind eipflow's back (drift tests): no generation check."""
        engine = self._db()
        values = {"vip": spec.vip, "vm_nic_uuid": spec.vm_nic_uuid, "guest_ip": spec.guest_ip,
                  "generation": spec.generation, "revoked": False, "applied_at": utcnow()}
        with translate_errors(engine), engine.begin() as conn:
            conn.execute(RULE.delete().where(RULE.c.host_uuid == spec.host_uuid, RULE.c.eip_uuid == spec.eip_uuid))
            conn.execute(RULE.insert().values(host_uuid=spec.host_uuid, eip_uuid=spec.eip_uuid, **values))

    def drop_rule(self, host_uuid: str, eip_uuid: str) -> None:
        """Lose a rule behind eipflow's back (a host reboot); the generation is remembered."""
        with self._db().begin() as conn:
            conn.execute(RULE.update().where(RULE.c.host_uuid == host_uuid, RULE.c.eip_uuid == eip_uuid)
                         .values(revoked=True))


def factory() -> SimulatedDataplane:
    """``--backend eipflow.backends.simulated:factory``: the database-backed simulated dataplane."""
    return SimulatedDataplane()


def memory_factory() -> InMemoryDataplane:
    """``--backend eipflow.backends.simulated:memory_factory``: a per-process in-memory dataplane."""
    return InMemoryDataplane()

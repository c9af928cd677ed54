"""The tables, as sqlmodel classes (the schema Alembic migrates and the store writes with Core).

The hot path never goes through the ORM: :mod:`eipflow.store.store` uses the
``__table__`` of these classes with SQLAlchemy Core statements.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.types import TypeDecorator, TypeEngine
from sqlmodel import Field, SQLModel

__all__ = [
    "ClockRow",
    "EipRow",
    "OperationRow",
    "SimRuleRow",
    "TransitionRow",
    "UTCDateTime",
    "VmRow",
    "WorkRow",
    "metadata",
]

ID = 128  # caller-platform ids are opaque bounded strings
IP = 64


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC in Python, naive UTC in the column: the same on SQLite, PostgreSQL and MariaDB."""

    impl = sa.DateTime(timezone=False)
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> TypeEngine[Any]:
        # MySQL/MariaDB DATETIME keeps whole seconds (MySQL even rounds up): leases and due times need µs.
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))  # type: ignore[no-any-return]
        return dialect.type_descriptor(self.impl)  # type: ignore[no-any-return]

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("eipflow stores timezone-aware UTC datetimes only")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


def _ts(**kw: Any) -> Any:
    return Field(sa_column=sa.Column(UTCDateTime(), **kw))


class EipRow(SQLModel, table=True):
    __tablename__ = "eip"
    __table_args__ = (
        sa.Index("ix_eip_vm_uuid", "vm_uuid"),
        sa.Index("ix_eip_host_uuid", "host_uuid"),
        sa.Index("ix_eip_applied_host", "applied_host"),
        sa.Index("ix_eip_state", "state"),
        # Named, so migrations can refer to them on every database.
        sa.UniqueConstraint("vip", name="uq_eip_vip"),
        # A guest IP carries at most one EIP: NULLs (unbound rows) never collide on any of our databases.
        sa.UniqueConstraint("guest_ip", name="uq_eip_guest_ip"),
    )

    uuid: str = Field(primary_key=True, max_length=36)
    name: str | None = Field(default=None, max_length=255)
    vip: str = Field(max_length=IP)
    state: str = Field(max_length=20)
    version: int
    desired: str = Field(max_length=16)
    vm_nic_uuid: str | None = Field(default=None, max_length=ID)
    guest_ip: str | None = Field(default=None, max_length=IP)  # unique: uq_eip_guest_ip
    vm_uuid: str | None = Field(default=None, max_length=ID)
    host_uuid: str | None = Field(default=None, max_length=ID)
    applied_host: str | None = Field(default=None, max_length=ID)
    attach_confirmed: bool = False
    work_id: int | None = None
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False)


class TransitionRow(SQLModel, table=True):
    __tablename__ = "eip_transition"
    # One history row per version: the database itself refuses a second writer of the same version.
    __table_args__ = (sa.UniqueConstraint("eip_uuid", "version", name="uq_eip_transition_version"),)

    id: int | None = Field(default=None, primary_key=True)
    eip_uuid: str = Field(max_length=36)
    event: str = Field(max_length=32)
    from_state: str = Field(max_length=20)
    to_state: str = Field(max_length=20)
    version: int
    actor: str | None = Field(default=None, max_length=ID)
    op_id: str | None = Field(default=None, max_length=ID)
    at: datetime = _ts(nullable=False)
    details: str | None = Field(default=None, sa_type=sa.Text)


class WorkRow(SQLModel, table=True):
    __tablename__ = "eip_work"
    __table_args__ = (
        sa.Index("ix_eip_work_due", "status", "due_at"),
        sa.Index("ix_eip_work_eip", "eip_uuid"),
    )

    id: int | None = Field(default=None, primary_key=True)
    eip_uuid: str = Field(max_length=36)
    action: str = Field(max_length=8)
    vip: str = Field(max_length=IP)
    vm_nic_uuid: str = Field(max_length=ID)
    guest_ip: str = Field(max_length=IP)
    host_uuid: str | None = Field(default=None, max_length=ID)
    status: str = Field(max_length=10)
    attempts: int = 0
    due_at: datetime = _ts(nullable=False)
    lease_owner: str | None = Field(default=None, max_length=ID)
    lease_expires_at: datetime | None = _ts(nullable=True)
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    cleanup: bool = False
    created_at: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False)
    #: the fencing token the backend call carries (NULL until an attach's apply leaves ``binding``)
    generation: int | None = Field(default=None, sa_type=sa.BigInteger)
    #: the creating caller's trace context (W3C, JSON) when tracing is on, so a worker continues that trace
    trace_context: str | None = Field(default=None, sa_type=sa.Text)


class VmRow(SQLModel, table=True):
    __tablename__ = "eip_vm"

    uuid: str = Field(primary_key=True, max_length=ID)
    host_uuid: str | None = Field(default=None, max_length=ID)
    running: bool
    version: int
    updated_at: datetime = _ts(nullable=False)


class OperationRow(SQLModel, table=True):
    __tablename__ = "eip_operation"

    op_id: str = Field(primary_key=True, max_length=ID)
    request: str = Field(sa_type=sa.Text)
    status: str = Field(max_length=10)
    result: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False)


class SimRuleRow(SQLModel, table=True):
    """A rule of the built-in simulated dataplane (kept in the same database, so CLI processes share it)."""

    __tablename__ = "sim_rule"

    host_uuid: str = Field(primary_key=True, max_length=ID)
    eip_uuid: str = Field(primary_key=True, max_length=36)
    vip: str = Field(max_length=IP)
    vm_nic_uuid: str = Field(max_length=ID)
    guest_ip: str = Field(max_length=IP)
    applied_at: datetime = _ts(nullable=False)
    generation: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False))
    revoked: bool = Field(default=False, sa_column=sa.Column(sa.Boolean, nullable=False))


class ClockRow(SQLModel, table=True):
    """The shared lease clock's skew: every lease statement reads the database's clock plus ``skew_us``.

    One row (``id = 1``). It is 0 in production; tests move it (``Store.lease_clock.advance``) so that
    leases expire for every process at once, without any process's own clock being involved.
    """

    __tablename__ = "eip_clock"

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    skew_us: int = Field(sa_type=sa.BigInteger)


metadata = SQLModel.metadata

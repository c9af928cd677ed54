"""Initial schema: EIPs, their history, work items, VM facts, operation ids, the simulated dataplane.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Written by hand from an autogenerate draft. Frozen: plain SQLAlchemy types only, so later model
changes never rewrite history.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = 128  # caller-platform ids: opaque bounded strings
IP = 64


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    # Naive UTC; MySQL/MariaDB need DATETIME(6) or they drop (MySQL: round) the microseconds.
    return sa.Column(name, sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "eip",
        sa.Column("uuid", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("vip", sa.String(IP), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("desired", sa.String(16), nullable=False),
        sa.Column("vm_nic_uuid", sa.String(ID), nullable=True),
        sa.Column("guest_ip", sa.String(IP), nullable=True),
        sa.Column("vm_uuid", sa.String(ID), nullable=True),
        sa.Column("host_uuid", sa.String(ID), nullable=True),
        sa.Column("applied_host", sa.String(ID), nullable=True),
        sa.Column("attach_confirmed", sa.Boolean(), nullable=False),
        sa.Column("work_id", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("uuid"),
        sa.UniqueConstraint("vip", name="uq_eip_vip"),
        # One EIP per guest IP, enforced by the database (NULL = unbound never collides).
        sa.UniqueConstraint("guest_ip", name="uq_eip_guest_ip"),
    )
    # Every release path finds EIPs by VM, by host (applied or placed) and by state.
    op.create_index("ix_eip_vm_uuid", "eip", ["vm_uuid"])
    op.create_index("ix_eip_host_uuid", "eip", ["host_uuid"])
    op.create_index("ix_eip_applied_host", "eip", ["applied_host"])
    op.create_index("ix_eip_state", "eip", ["state"])

    op.create_table(
        "eip_transition",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("eip_uuid", sa.String(36), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("from_state", sa.String(20), nullable=False),
        sa.Column("to_state", sa.String(20), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(ID), nullable=True),
        sa.Column("op_id", sa.String(ID), nullable=True),
        _ts("at"),
        sa.Column("details", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        # One history row per version: a second writer of the same version is refused by the database.
        sa.UniqueConstraint("eip_uuid", "version", name="uq_eip_transition_version"),
    )

    op.create_table(
        "eip_work",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("eip_uuid", sa.String(36), nullable=False),
        sa.Column("action", sa.String(8), nullable=False),
        sa.Column("vip", sa.String(IP), nullable=False),
        sa.Column("vm_nic_uuid", sa.String(ID), nullable=False),
        sa.Column("guest_ip", sa.String(IP), nullable=False),
        sa.Column("host_uuid", sa.String(ID), nullable=True),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("due_at"),
        sa.Column("lease_owner", sa.String(ID), nullable=True),
        _ts("lease_expires_at", nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("cleanup", sa.Boolean(), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id"),
    )
    # Workers poll by (status, due time); the runner looks items up per EIP.
    op.create_index("ix_eip_work_due", "eip_work", ["status", "due_at"])
    op.create_index("ix_eip_work_eip", "eip_work", ["eip_uuid"])

    op.create_table(
        "eip_vm",
        sa.Column("uuid", sa.String(ID), nullable=False),
        sa.Column("host_uuid", sa.String(ID), nullable=True),
        sa.Column("running", sa.Boolean(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("uuid"),
    )

    op.create_table(
        "eip_operation",
        sa.Column("op_id", sa.String(ID), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("op_id"),
    )

    op.create_table(
        "sim_rule",
        sa.Column("host_uuid", sa.String(ID), nullable=False),
        sa.Column("eip_uuid", sa.String(36), nullable=False),
        sa.Column("vip", sa.String(IP), nullable=False),
        sa.Column("vm_nic_uuid", sa.String(ID), nullable=False),
        sa.Column("guest_ip", sa.String(IP), nullable=False),
        _ts("applied_at"),
        sa.PrimaryKeyConstraint("host_uuid", "eip_uuid"),
    )


def downgrade() -> None:
    for table in ("sim_rule", "eip_operation", "eip_vm", "eip_work", "eip_transition", "eip"):
        op.drop_table(table)

"""Fencing: a generation on every work item, generations and tombstones on the simulated dataplane, the
shared lease clock.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

- ``eip_work.generation``: the fencing token the item's backend call carries (``NULL`` while an attach's
  apply is still in ``binding``: the generation is fixed when it proceeds). Items written before this
  revision keep ``NULL`` and are sent as generation 0, older than anything new.
- ``sim_rule.generation`` / ``sim_rule.revoked``: the simulated host remembers the newest generation per
  EIP, a revoked rule stays as a tombstone row.
- ``eip_clock``: one row holding the skew (µs) every lease statement adds to the database's own clock; 0
  in production, moved by tests that need leases to expire (``Store.lease_clock.advance``).

Frozen: plain SQLAlchemy types only.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("eip_work") as batch:
        batch.add_column(sa.Column("generation", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("sim_rule") as batch:
        # Defaults only to fill existing rows (generation 0: older than anything new; not revoked); the
        # writers always set both, so the defaults go again and the schema matches the models exactly.
        batch.add_column(sa.Column("generation", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("revoked", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("sim_rule") as batch:
        batch.alter_column("generation", server_default=None, existing_type=sa.BigInteger(), existing_nullable=False)
        batch.alter_column("revoked", server_default=None, existing_type=sa.Boolean(), existing_nullable=False)
    op.create_table(
        "eip_clock",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("skew_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(sa.table("eip_clock", sa.column("id", sa.Integer()), sa.column("skew_us", sa.BigInteger())),
                   [{"id": 1, "skew_us": 0}])


def downgrade() -> None:
    op.drop_table("eip_clock")
    with op.batch_alter_table("sim_rule") as batch:
        batch.drop_column("revoked")
        batch.drop_column("generation")
    with op.batch_alter_table("eip_work") as batch:
        batch.drop_column("generation")

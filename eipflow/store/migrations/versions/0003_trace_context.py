"""The caller's trace context on each work item it creates, so a worker in another process continues that trace.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

``eip_work.trace_context``: the W3C trace context (``traceparent``/``tracestate``, as JSON) of the span that was
current when the item was created, when tracing is on (``eipflow.otel``); ``NULL`` otherwise.

Frozen: plain SQLAlchemy types only.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("eip_work") as batch:
        batch.add_column(sa.Column("trace_context", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("eip_work") as batch:
        batch.drop_column("trace_context")

"""Paged reads for the CLI: keyset pages over the store's tables (no OFFSET scans)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from .. import validation as v
from ..errors import EipNotFound, InvalidInput
from ..store import Store
from ..store.database import translate_errors
from ..store.store import EIP, HISTORY, _eip, _record
from ..values import Eip, TransitionRecord

__all__ = ["eips_page", "history_page"]


def _created_at(store: Store, uuid: str) -> datetime:
    """Where ``uuid`` sits in list order: its row, or its ``create`` history record once deleted."""
    with translate_errors(store.engine), store._read() as conn:
        created = conn.execute(sa.select(EIP.c.created_at).where(EIP.c.uuid == uuid)).scalar()
        if created is None:
            created = conn.execute(sa.select(HISTORY.c.at).where(HISTORY.c.eip_uuid == uuid,
                                                                 HISTORY.c.version == 1)).scalar()
    if created is None:
        raise InvalidInput(f"--after {uuid}: no such EIP (not even in history); start again without --after")
    assert isinstance(created, datetime)
    return created


def eips_page(store: Store, *, state: str | None = None, vm_uuid: str | None = None, limit: int | None = None,
              after: str | None = None) -> list[Eip]:
    """EIPs in list order (creation time, then uuid), optionally after the EIP ``after``."""
    stmt = sa.select(EIP)
    if state is not None:
        stmt = stmt.where(EIP.c.state == state)
    if vm_uuid is not None:
        stmt = stmt.where(EIP.c.vm_uuid == vm_uuid)
    if after is not None:
        after = v.eip_uuid(after, "after")
        created = _created_at(store, after)
        stmt = stmt.where(sa.or_(EIP.c.created_at > created,
                                 sa.and_(EIP.c.created_at == created, EIP.c.uuid > after)))
    stmt = stmt.order_by(EIP.c.created_at, EIP.c.uuid)
    if limit is not None:
        stmt = stmt.limit(limit)
    with translate_errors(store.engine), store._read() as conn:
        return [_eip(r) for r in conn.execute(stmt)]


def history_page(
    store: Store, uuid: str, *, limit: int | None = None, after: int | None = None
) -> list[TransitionRecord]:
    """The EIP's transitions by version, optionally only those after version ``after``.

    Raises:
        EipNotFound: the EIP has no history at all (never existed, or pruned after deletion).
    """
    uuid = v.eip_uuid(uuid)
    stmt = sa.select(HISTORY).where(HISTORY.c.eip_uuid == uuid)
    if after is not None:
        stmt = stmt.where(HISTORY.c.version > after)
    stmt = stmt.order_by(HISTORY.c.version)
    if limit is not None:
        stmt = stmt.limit(limit)
    with translate_errors(store.engine), store._read() as conn:
        records = [_record(r) for r in conn.execute(stmt)]
        if not records and (after is None or conn.execute(
                sa.select(HISTORY.c.id).where(HISTORY.c.eip_uuid == uuid).limit(1)).first() is None):
            raise EipNotFound(uuid)
    return records

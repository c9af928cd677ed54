"""The version-checked statements, built in one place for both execution paths (Core and driver-level)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .schema import EipRow

__all__ = ["eip_cas_delete", "eip_cas_update"]

EIP = EipRow.__table__  # type: ignore[attr-defined]


def _cas_where(pred_cols: tuple[str, ...]) -> list[Any]:
    where = [EIP.c.uuid == sa.bindparam("w_uuid"), EIP.c.version == sa.bindparam("w_version")]
    return where + [EIP.c[c] == sa.bindparam(f"w_{c}") for c in pred_cols]


def eip_cas_update(set_cols: tuple[str, ...], pred_cols: tuple[str, ...] = ()) -> Any:
    """``UPDATE eip SET <s_col…> WHERE uuid = :w_uuid AND version = :w_version [AND col = :w_col…]``."""
    return EIP.update().where(*_cas_where(pred_cols)).values({c: sa.bindparam(f"s_{c}") for c in set_cols})


def eip_cas_delete(pred_cols: tuple[str, ...] = ()) -> Any:
    """``DELETE FROM eip WHERE uuid = :w_uuid AND version = :w_version [AND col = :w_col…]``."""
    return EIP.delete().where(*_cas_where(pred_cols))

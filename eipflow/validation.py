"""Input validation: strict for what eipflow owns, bounded-opaque for the caller's ids."""

from __future__ import annotations

import ipaddress
import re
import uuid as uuidlib

from .errors import InvalidAddress, InvalidIdentifier

__all__ = ["MAX_ID_LENGTH", "eip_uuid", "ip_address", "name", "opaque_id"]

MAX_ID_LENGTH = 128
MAX_NAME_LENGTH = 255
_OPAQUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/+=-]*$")


def ip_address(field: str, value: object) -> str:
    """A canonical IPv4/IPv6 address string, or :class:`InvalidAddress`."""
    if not isinstance(value, str) or not value or len(value) > 64:
        raise InvalidAddress(field, value)
    try:
        addr = ipaddress.ip_address(value.strip())
    except ValueError:
        raise InvalidAddress(field, value) from None
    if addr.is_unspecified or addr.is_multicast:
        raise InvalidAddress(field, value, "not a unicast address")
    return str(addr)


def eip_uuid(value: object, field: str = "eip uuid") -> str:
    """An EIP uuid as eipflow issues them (canonical lower-case hex, with or without dashes)."""
    if not isinstance(value, str):
        raise InvalidIdentifier(field, value, "expected a UUID string")
    try:
        parsed = uuidlib.UUID(value.strip())
    except ValueError:
        raise InvalidIdentifier(field, value, "not a UUID (as printed by 'eipflow eip create')") from None
    return str(parsed)


def opaque_id(field: str, value: object) -> str:
    """A caller-platform id (NIC, VM, host, operation): opaque, non-empty, bounded, printable."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidIdentifier(field, value, "must be a non-empty string")
    value = value.strip()
    if len(value) > MAX_ID_LENGTH:
        raise InvalidIdentifier(field, value[:40] + "…", f"longer than {MAX_ID_LENGTH} characters")
    if not _OPAQUE.match(value):
        raise InvalidIdentifier(field, value, "only letters, digits and . _ : @ / + = - are allowed")
    return value


def name(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_NAME_LENGTH or any(c in value for c in "\r\n\0"):
        raise InvalidIdentifier("name", value, f"a single line of at most {MAX_NAME_LENGTH} characters")
    return value

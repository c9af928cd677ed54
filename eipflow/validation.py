"""Input validation: strict for what eipflow owns, bounded-opaque for the caller's ids.

Addresses have one canonical form: :mod:`ipaddress`'s compressed text (``2001:db8::a``, never
``2001:DB8:0::A``). That form is what is stored, compared, made unique by the database and sent
to backends. The address-class rules (the table in ``docs/errors.md``) apply to VIPs and guest
IPs alike: neither may be an address no cloud would NAT.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
import uuid as uuidlib

from .errors import InvalidAddress, InvalidIdentifier

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_NAME_LENGTH",
    "address_pair",
    "canonical_address",
    "eip_uuid",
    "ip_address",
    "name",
    "opaque_id",
    "printable",
]

MAX_ID_LENGTH = 128
MAX_NAME_LENGTH = 255
_OPAQUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/+=-]*$")
#: Unicode categories that must never reach a terminal: controls (C0, DEL, C1 — ANSI escapes start
#: with one), format characters (bidi overrides and isolates, zero-width marks), surrogates, and the
#: line/paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_LIMITED_BROADCAST = ipaddress.ip_address("255.255.255.255")


def _address_class(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why ``addr`` can be neither a VIP nor a guest IP, or ``None`` when it can."""
    if addr.is_unspecified:
        return "the unspecified address"
    if addr.is_loopback:
        return "a loopback address"
    if addr.is_multicast:
        return "a multicast address"
    if addr == _LIMITED_BROADCAST:
        return "the broadcast address"
    if addr.is_link_local:
        return "a link-local address"
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return f"an IPv4-mapped IPv6 address (use {addr.ipv4_mapped} itself)"
    if isinstance(addr, ipaddress.IPv4Address) and addr in _THIS_NETWORK:
        return "in 0.0.0.0/8 ('this network')"
    if addr.is_reserved:
        return "in a reserved range"
    return None


def ip_address(field: str, value: object) -> str:
    """The canonical (compressed) text of a unicast address a VIP or guest IP may be.

    Raises:
        InvalidAddress: not an IPv4/IPv6 address, an IPv6 zone ID (``fe80::1%eth0``), or an address
            of a refused class (unspecified, loopback, multicast, broadcast, link-local, IPv4-mapped
            IPv6, ``0.0.0.0/8``, reserved).
    """
    if not isinstance(value, str) or not value or len(value) > 64:
        raise InvalidAddress(field, value)
    text = value.strip()
    if "%" in text:
        raise InvalidAddress(field, value, "an address with a zone ID; zone IDs (%…) are not accepted")
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidAddress(field, value) from None
    why = _address_class(addr)
    if why is not None:
        raise InvalidAddress(field, value, f"{why}, which cannot be a VIP or a guest IP")
    return addr.compressed


def canonical_address(field: str, value: object) -> str:
    """The canonical text of any syntactically valid address, zone ID dropped, no class rules.

    For the paths that *remove* what is there (revoke, drift repair): a rule written before the
    class rules existed, or with a zone ID (which nft dropped when it committed), must still be
    matched and removed, so only the syntax is checked here. Everything that *creates* uses
    :func:`ip_address`.
    """
    if not isinstance(value, str) or not value or len(value) > 64:
        raise InvalidAddress(field, value)
    text = value.strip().partition("%")[0]
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        raise InvalidAddress(field, value) from None


def address_pair(vip: str, guest_ip: str) -> None:
    """Check that canonical ``vip`` and ``guest_ip`` can be NATed to each other.

    Raises:
        InvalidAddress: (field ``guest_ip``) of another IP version than the VIP, or the VIP itself.
    """
    v_addr, g_addr = ipaddress.ip_address(vip), ipaddress.ip_address(guest_ip)
    if v_addr.version != g_addr.version:
        raise InvalidAddress("guest_ip", guest_ip,
                             f"an IPv{g_addr.version} address but the EIP's VIP {vip} is IPv{v_addr.version}")
    if v_addr == g_addr:
        raise InvalidAddress("guest_ip", guest_ip, "the EIP's own VIP")


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
        raise InvalidIdentifier(field, value, f"longer than {MAX_ID_LENGTH} characters")
    if not _OPAQUE.match(value):
        raise InvalidIdentifier(field, value, "only letters, digits and . _ : @ / + = - are allowed")
    return value


_CONTROL_NAMES = {0x00: "NUL", 0x09: "TAB", 0x0A: "LINE FEED", 0x0D: "CARRIAGE RETURN", 0x1B: "ESCAPE",
                  0x7F: "DELETE"}


def _char_name(char: str) -> str:
    known = _CONTROL_NAMES.get(ord(char))
    return known if known is not None else unicodedata.name(char, "a control character")


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in _UNSAFE_CATEGORIES


def name(value: object) -> str | None:
    """An EIP's display name: at most :data:`MAX_NAME_LENGTH` characters, no control or format characters.

    Raises:
        InvalidIdentifier: not a string, too long, or holding a control character (newline, ANSI
            escape), a bidi override or another invisible format character.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidIdentifier("name", value, "must be a string")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidIdentifier("name", value, f"{len(value)} characters, at most {MAX_NAME_LENGTH} are allowed")
    bad = next((c for c in value if _unsafe(c)), None)
    if bad is not None:
        raise InvalidIdentifier(
            "name", value, f"contains {_char_name(bad)} (U+{ord(bad):04X}); control and format characters are "
                           "not allowed"
        )
    return value


def printable(text: str) -> str:
    """``text`` safe for a terminal: control and format characters shown as ``\\xNN``/``\\uNNNN`` escapes.

    Stored text (names, errors, details) written before validation existed, or coming back from a
    backend, may hold ANSI escapes or bidi overrides; nothing eipflow prints passes them through.
    """
    if not any(_unsafe(c) for c in text):
        return text
    out = []
    for c in text:
        if _unsafe(c):
            code = ord(c)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(c)
    return "".join(out)

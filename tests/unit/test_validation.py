"""Input validation: strict for what eipflow owns, opaque-but-bounded for the caller's ids."""

from __future__ import annotations

import pytest

from eipflow import InvalidAddress, InvalidIdentifier, InvalidInput
from eipflow import validation as v


@pytest.mark.parametrize(("raw", "canonical"), [("203.0.113.10", "203.0.113.10"), (" 10.0.0.5 ", "10.0.0.5"),
                                                ("2001:DB8::1", "2001:db8::1")])
def test_addresses_are_canonical(raw: str, canonical: str) -> None:
    assert v.ip_address("vip", raw) == canonical


@pytest.mark.parametrize("raw", ["", "1.2.3", "256.1.1.1", "0.0.0.0", "224.0.0.1", "::", "host", None, 7, "1" * 70])
def test_bad_addresses_name_the_field(raw: object) -> None:
    with pytest.raises(InvalidAddress) as info:
        v.ip_address("guest_ip", raw)
    assert info.value.field == "guest_ip" and "guest_ip" in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, InvalidInput)


@pytest.mark.parametrize("raw", ["nic-1", "eni-0abc", "0123456789abcdef0123456789abcdef", "a:b/c@d+e=f.g_h"])
def test_opaque_ids_accept_platform_formats(raw: str) -> None:
    assert v.opaque_id("nic", raw) == raw


@pytest.mark.parametrize("raw", ["", "   ", None, "x" * 129, "a b", "a;rm -rf", "-leading", "new\nline"])
def test_opaque_ids_reject_empty_long_or_odd(raw: object) -> None:
    with pytest.raises(InvalidIdentifier) as info:
        v.opaque_id("vm", raw)
    assert info.value.field == "vm"


def test_eip_uuid_is_canonicalised_and_checked() -> None:
    assert v.eip_uuid("6F1C0D1E8A524C3E9D0B1F2E3A4B5C6D") == "6f1c0d1e-8a52-4c3e-9d0b-1f2e3a4b5c6d"
    with pytest.raises(InvalidIdentifier, match="not a UUID"):
        v.eip_uuid("eip-1")


def test_names_are_single_bounded_lines() -> None:
    assert v.name(None) is None and v.name("web") == "web"
    for bad in ("a\nb", "x" * 256, 3):
        with pytest.raises(InvalidIdentifier):
            v.name(bad)

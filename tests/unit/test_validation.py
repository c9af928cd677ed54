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


@pytest.mark.parametrize(("raw", "canonical"), [
    ("2001:0DB8:0000:0000:0000:0000:0000:000A", "2001:db8::a"), ("2001:db8:0::a", "2001:db8::a"),
    ("fd00:0:0:0::5", "fd00::5"), ("192.0.2.10", "192.0.2.10"),
])
def test_every_spelling_of_an_address_has_one_canonical_form(raw: str, canonical: str) -> None:
    """What is stored, compared and sent to backends is ipaddress's compressed form."""
    assert v.ip_address("vip", raw) == canonical


@pytest.mark.parametrize("raw", ["fe80::1%pub0", "fd00::5%a", "2001:db8::a%x", "fe80::1%x;flush ruleset", "fe80::1%"])
def test_zone_ids_are_refused(raw: str) -> None:
    """An IPv6 zone suffix would defeat uniqueness and reach nft as a hostname: refused."""
    with pytest.raises(InvalidAddress, match="zone ID"):
        v.ip_address("guest_ip", raw)


@pytest.mark.parametrize(("raw", "why"), [
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"),
    ("::1", "loopback"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"), ("255.255.255.255", "broadcast"),
    ("169.254.1.1", "link-local"), ("fe80::1", "link-local"), ("::ffff:203.0.113.10", "IPv4-mapped"),
    ("0.1.2.3", "this network"), ("240.0.0.1", "reserved"), ("::203.0.113.10", "reserved"),
])
def test_address_classes_no_cloud_nats_are_refused(raw: str, why: str) -> None:
    """The address-class table of docs/errors.md, row by row, for VIPs and guest IPs alike."""
    for field in ("vip", "guest_ip"):
        with pytest.raises(InvalidAddress, match=why) as info:
            v.ip_address(field, raw)
        assert info.value.field == field


def test_vip_and_guest_ip_must_be_of_one_version_and_differ() -> None:
    v.address_pair("203.0.113.10", "192.0.2.10")
    v.address_pair("2001:db8::a", "fd00::5")
    with pytest.raises(InvalidAddress, match=r"IPv6 address but the EIP's VIP 203\.0\.113\.10 is IPv4"):
        v.address_pair("203.0.113.10", "fd00::5")
    with pytest.raises(InvalidAddress, match="own VIP"):
        v.address_pair("203.0.113.10", "203.0.113.10")


@pytest.mark.parametrize("bad", ["\x1b[31mred\x1b[0m", "evil\u202etxt.exe", "a\u2066b", "tab\there", "nul\0",
                                 "zero\u200bwidth", "line\u2028sep", "del\x7f", "c1\x9b"])
def test_names_refuse_control_and_format_characters(bad: str) -> None:
    """ANSI escapes, bidi overrides and isolates, zero-width and separator characters are refused by name."""
    with pytest.raises(InvalidIdentifier, match="not allowed") as info:
        v.name(bad)
    assert "\x1b" not in str(info.value) and "\u202e" not in str(info.value)


def test_a_long_name_is_not_echoed_whole() -> None:
    with pytest.raises(InvalidIdentifier) as info:
        v.name("n" * 10_000)
    assert len(str(info.value)) < 200 and "10000 characters" in str(info.value)
    assert v.name("Wéb ☃ 名前") == "Wéb ☃ 名前"  # printable Unicode is welcome


def test_printable_escapes_what_a_terminal_would_obey() -> None:
    assert v.printable("plain ☃") == "plain ☃"
    assert v.printable("\x1b[2Jx\u202ey\n") == "\\x1b[2Jx\\u202ey\\x0a"

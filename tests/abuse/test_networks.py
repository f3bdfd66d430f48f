"""hypothesis for the DNSxL query-name builder and the CIDR and allowlist matchers,
each against an independent statement of the rule."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhost.abuse.dnsbl import query_name
from mailhost.abuse.fcrdns import reverse_name
from mailhost.abuse.networks import (
    Allowlist,
    client_address,
    domain_matches,
    greylist_network,
    in_networks,
    parse_networks,
)

v4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
v6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
zone = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True)


@given(v4, zone)
def test_ipv4_query_is_the_reversed_octets_then_the_zone(addr, z):
    name = query_name(str(addr), z)
    octets = str(addr).split(".")
    assert name == f"{octets[3]}.{octets[2]}.{octets[1]}.{octets[0]}.{z}"
    # the in-addr.arpa name with the zone in place of in-addr.arpa
    assert name == addr.reverse_pointer.removesuffix("in-addr.arpa") + z


@given(v6, zone)
def test_ipv6_query_is_32_reversed_nibbles_then_the_zone(addr, z):
    name = query_name(addr.compressed, z)
    labels = name.split(".")
    assert len(labels[:32]) == 32 and all(len(n) == 1 for n in labels[:32])
    assert "".join(reversed(labels[:32])) == f"{int(addr):032x}"
    assert ".".join(labels[32:]) == z
    assert name == addr.reverse_pointer.removesuffix("ip6.arpa") + z


@given(v4, zone)
def test_ipv4_mapped_ipv6_client_is_asked_as_ipv4(addr, z):
    assert query_name(f"::ffff:{addr}", z) == query_name(str(addr), z)


@given(v4 | v6)
def test_reverse_name_is_the_ptr_owner(addr):
    assert reverse_name(str(addr)) == addr.reverse_pointer


@pytest.mark.parametrize("bad", ["", "host.example", "1.2.3", "::g", "1.2.3.4.5"])
def test_query_name_refuses_non_addresses(bad):
    with pytest.raises(ValueError):
        query_name(bad, "zen.example")


def _contains(net: ipaddress.IPv4Network | ipaddress.IPv6Network, addr) -> bool:
    """The rule stated on integers: the top prefixlen bits agree."""
    if net.version != addr.version:
        return False
    shift = net.max_prefixlen - net.prefixlen
    return int(addr) >> shift == int(net.network_address) >> shift


networks4 = st.builds(lambda a, p: ipaddress.ip_network(f"{a}/{p}", strict=False), v4,
                      st.integers(0, 32))
networks6 = st.builds(lambda a, p: ipaddress.ip_network(f"{a}/{p}", strict=False), v6,
                      st.integers(0, 128))


@given(st.lists(networks4 | networks6, max_size=5), v4 | v6)
def test_cidr_matcher_agrees_with_the_bit_rule(nets, addr):
    parsed = parse_networks([str(n) for n in nets])
    assert in_networks(str(addr), parsed) == any(_contains(n, addr) for n in nets)


@given(networks4, v4)
def test_a_mapped_client_matches_ipv4_networks(net, addr):
    assert in_networks(f"::ffff:{addr}", [net]) == _contains(net, addr)


@given(v4)
def test_greylist_network_of_ipv4_is_its_slash_24(addr):
    net = ipaddress.ip_network(greylist_network(str(addr)))
    assert net.prefixlen == 24 and addr in net


@given(v6)
def test_greylist_network_of_ipv6_is_its_slash_64(addr):
    net = ipaddress.ip_network(greylist_network(addr.compressed))
    assert net.prefixlen == 64 and addr in net


label = st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)
domains = st.lists(label, min_size=1, max_size=4).map(".".join)


@given(domains, domains)
def test_domain_matches_itself_and_subdomains_only(d, pattern):
    expected = d == pattern or d.endswith("." + pattern)
    assert domain_matches(d, [pattern]) == expected
    assert domain_matches(d.upper() + ".", [pattern]) == expected
    assert not domain_matches("x" + d, [d])  # badexample.com is not example.com


@given(label, domains, st.sampled_from(["full", "local", "domain", "other"]))
def test_recipient_allowlist_entries(local, domain, kind):
    rcpt = f"{local}@{domain}"
    entry = {"full": rcpt, "local": f"{local}@", "domain": domain, "other": f"{local}x@{domain}"}
    allow = Allowlist.parse(recipients=[entry[kind].upper()])
    assert allow.recipient(rcpt) == (kind != "other")
    assert allow.recipient(rcpt.upper()) == (kind != "other")


def test_allowlist_clients_and_senders():
    allow = Allowlist.parse(["192.0.2.0/24", "2001:db8::/32"], ["friend.test"])
    assert allow.client("192.0.2.77") and allow.client("::ffff:192.0.2.1")
    assert allow.client("2001:db8:1::5") and not allow.client("192.0.3.1")
    assert allow.sender("x@friend.test") and allow.sender("x@lists.friend.test")
    assert not allow.sender("x@notfriend.test") and not allow.sender("")
    assert client_address("fe80::1%eth0") == ipaddress.ip_address("fe80::1")
    with pytest.raises(ValueError, match="greylist.allow_clients"):
        Allowlist.parse(["300.1.1.1"], key="greylist.allow")


@given(st.text(max_size=60))
def test_zone_spec_parser_never_crashes(spec):
    from mailhost.abuse.dnsbl import Zone, ZoneSpecError

    try:
        zone = Zone.parse(spec)
    except ZoneSpecError:
        return
    zone.counts("127.0.0.2")

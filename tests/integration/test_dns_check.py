"""The DNS check with dnspython against a real DNS server on a loopback port."""

from __future__ import annotations

from buddo_deploy.services.domains import DnsResolver, lookup

from tests.dns_server import DnsServer


def test_cname_and_addresses_through_a_real_server():
    with DnsServer() as server:
        resolver = DnsResolver((server.address,), timeout_s=2)
        server.set("shop.example.com", "CNAME", "shop.apps.test.")
        server.set("shop.apps.test", "A", "192.0.2.10")
        assert lookup(resolver, "shop.example.com", "shop.apps.test", ()).verdict == "points_here"

        server.set("shop.example.com", "CNAME", "evil.example.net.")
        found = lookup(resolver, "shop.example.com", "shop.apps.test", ("192.0.2.10",))
        assert found.verdict == "elsewhere" and found.records == ["CNAME evil.example.net"]

        server.set("shop.example.com", "CNAME")
        server.set("shop.example.com", "A", "192.0.2.10")
        server.set("shop.example.com", "AAAA", "2001:db8::10")
        assert lookup(resolver, "shop.example.com", "shop.apps.test",
                      ("192.0.2.10", "2001:db8:0::10")).verdict == "points_here"
        assert lookup(resolver, "shop.example.com", "shop.apps.test", ("192.0.2.10",)).verdict == "elsewhere"
        assert lookup(resolver, "nothing.example.com", "shop.apps.test", ("192.0.2.10",)).verdict == "missing"


def test_an_unanswering_resolver_concludes_nothing():
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
        silent.bind(("127.0.0.1", 0))
        resolver = DnsResolver((f"127.0.0.1:{silent.getsockname()[1]}",), timeout_s=0.5)
        found = lookup(resolver, "shop.example.com", "shop.apps.test", ())
    assert found.verdict == "unknown" and found.error

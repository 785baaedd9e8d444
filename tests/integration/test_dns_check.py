"""The DNS check with dnspython against a real DNS server on a loopback port."""

from __future__ import annotations

from buddo_deploy.services.domains import DnsResolver, challenge_value, lookup

from tests.dns_server import DnsServer

TOKEN = "0123456789abcdef0123456789abcdef"


def test_a_cname_to_the_apps_own_name_verifies():
    with DnsServer() as server:
        resolver = DnsResolver((server.address,), timeout_s=2)
        server.set("shop.example.com", "CNAME", "shop.apps.test.")
        server.set("shop.apps.test", "A", "192.0.2.10")
        found = lookup(resolver, "shop.example.com", "shop.apps.test", TOKEN)
        assert (found.verdict, found.proof, found.records) == ("verified", "cname", ["CNAME shop.apps.test"])

        server.set("shop.example.com", "CNAME", "evil.example.net.")
        found = lookup(resolver, "shop.example.com", "shop.apps.test", TOKEN, ("192.0.2.10",))
        assert found.verdict == "unproved" and found.records == ["CNAME evil.example.net"]
        assert lookup(resolver, "nothing.example.com", "shop.apps.test", TOKEN).verdict == "missing"


def test_the_claims_txt_token_verifies():
    with DnsServer() as server:
        resolver = DnsResolver((server.address,), timeout_s=2)
        server.set("example.com", "A", "198.51.100.7")  # an apex elsewhere (behind a CDN, say)
        server.set("_buddo-challenge.example.com", "TXT", '"v=spf1 -all"', '"buddo-verify=someone-elses-token"')
        assert lookup(resolver, "example.com", "shop.apps.test", TOKEN).verdict == "unproved"
        # The TXT value as a DNS provider may store it: split in strings (joined when read).
        server.set("_buddo-challenge.example.com", "TXT", '"buddo-verify=someone-elses-token"',
                   f'"buddo-verify=" "{TOKEN}"')
        found = lookup(resolver, "example.com", "shop.apps.test", TOKEN)
        assert (found.verdict, found.proof, found.records) == ("verified", "txt", [f"TXT {challenge_value(TOKEN)}"])
        assert lookup(resolver, "example.com", "shop.apps.test", None).verdict == "unproved"


def test_a_and_aaaa_records_to_the_shared_host_do_not_verify():
    with DnsServer() as server:
        resolver = DnsResolver((server.address,), timeout_s=2)
        server.set("shop.example.com", "A", "192.0.2.10")
        server.set("shop.example.com", "AAAA", "2001:db8::10")
        found = lookup(resolver, "shop.example.com", "shop.apps.test", TOKEN, ("192.0.2.10", "2001:db8:0::10"))
        assert (found.verdict, found.at_host) == ("unproved", True)
        assert found.records == ["A/AAAA 192.0.2.10", "A/AAAA 2001:db8::10"]
        assert not lookup(resolver, "shop.example.com", "shop.apps.test", TOKEN, ("192.0.2.10",)).at_host


def test_a_name_too_long_for_the_challenge_label_is_checked_by_its_cname():
    long = ".".join(["a" * 61] * 4) + ".com"  # 251 characters: _buddo-challenge.<it> would be 268
    with DnsServer() as server:
        resolver = DnsResolver((server.address,), timeout_s=2)
        server.set(long, "CNAME", "evil.example.net.")
        assert lookup(resolver, long, "shop.apps.test", TOKEN).verdict == "unproved"  # not "unknown"
        server.set(long, "CNAME", "shop.apps.test.")
        assert lookup(resolver, long, "shop.apps.test", TOKEN).verdict == "verified"


def test_an_unanswering_resolver_concludes_nothing():
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
        silent.bind(("127.0.0.1", 0))
        resolver = DnsResolver((f"127.0.0.1:{silent.getsockname()[1]}",), timeout_s=0.5)
        found = lookup(resolver, "shop.example.com", "shop.apps.test", TOKEN)
    assert found.verdict == "unknown" and found.error

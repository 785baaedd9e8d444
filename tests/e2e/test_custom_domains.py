"""Custom domains end to end: a real DNS server, Debian's Pebble as the ACME CA, Caddy's on-demand TLS.

The stack here is production-like for certificates (ACME from Pebble, whose
directory certificate Caddy trusts through ``caddy_acme_ca_root``; the ask URL
on the stack's API) and has its own Caddy ports, so it runs beside the session
stack. The DNS server answers the operators' records; the worker checks against it.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.dns_server import DnsServer
from tests.e2e.conftest import Stack, start_stack, stop_stack
from tests.helpers import free_port

HTTPS, HTTP, ADMIN = 28443, 28080, "127.0.0.1:12029"


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("pebble")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=pebble e2e",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    listen, management = free_port(), free_port()
    config = {"pebble": {"listenAddress": f"127.0.0.1:{listen}", "managementListenAddress": f"127.0.0.1:{management}",
                         "certificate": str(cert), "privateKey": str(key), "httpPort": free_port(),
                         "tlsPort": free_port(), "ocspResponderURL": "", "externalAccountBindingRequired": False}}
    (root / "config.json").write_text(json.dumps(config))
    env = os.environ | {"PEBBLE_VA_ALWAYS_VALID": "1", "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    proc = subprocess.Popen(["pebble", "-config", str(root / "config.json")], env=env,
                            stdout=(root / "pebble.log").open("ab"), stderr=subprocess.STDOUT)
    directory = f"https://127.0.0.1:{listen}/dir"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(directory, verify=str(cert), timeout=2).raise_for_status()
                break
            except requests.RequestException:
                assert proc.poll() is None and time.monotonic() < deadline, (root / "pebble.log").read_text()
                time.sleep(0.2)
        # Pebble makes a new root at every start: what its certificates chain to.
        roots = requests.get(f"https://127.0.0.1:{management}/roots/0", verify=str(cert), timeout=5).text
        (root / "roots.pem").write_text(roots)
        yield {"directory": directory, "tls_cert": cert, "roots": root / "roots.pem", "log": root / "pebble.log"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


@pytest.fixture(scope="module")
def acme_stack(tmp_path_factory: pytest.TempPathFactory, pebble: dict[str, Any], dns: DnsServer) -> Iterator[Stack]:
    stack = start_stack(
        tmp_path_factory.mktemp("e2e-acme"),
        group_vars={"caddy_http_port": HTTP, "caddy_https_port": HTTPS, "caddy_admin_address": ADMIN,
                    "caddy_local_certs": False, "caddy_acme_email": "ops@customer-e2e.test",
                    "caddy_acme_ca": pebble["directory"],
                    "caddy_acme_ca_root": str(pebble["tls_cert"]),
                    # *.localhost names still get local certificates; keep that CA out of the system store.
                    "caddy_extra_global_options": ["skip_install_trust"]},
        env={"BUDDO_DNS_RESOLVERS": dns.address, "BUDDO_DOMAIN_CHECK_INTERVAL": "2",
             "BUDDO_PUBLIC_HTTPS_PORT": str(HTTPS), "BUDDO_HOST_PORT_RANGE": "24000-24999"},
    )
    try:
        yield stack
    finally:
        stop_stack(stack)


def https(domain: str, ca: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--cacert", str(ca), "--resolve", f"{domain}:{HTTPS}:127.0.0.1",
         "-o", "-", "-w", "\n%{http_code}", f"https://{domain}:{HTTPS}/"],
        capture_output=True, text=True, check=False,
    )


def issuer(domain: str, ca: Path) -> str:
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", HTTPS), timeout=10) as sock, \
            context.wrap_socket(sock, server_hostname=domain) as tls:
        cert = tls.getpeercert()
    return " ".join(value for rdn in cert["issuer"] for key, value in rdn if key == "commonName")


def wait_for_domain(stack: Stack, ident: str, status: str, timeout: float = 90) -> dict[str, Any]:
    """Until the custom domain has ``status`` and the deployment has converged to it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = stack.call("GET", f"/api/deploy/apps/{ident}").json()["deployment"]
        if d["custom_domain_status"] == status and d["status"] == "running" \
                and d["observed_generation"] == d["generation"]:
            return dict(d)
        time.sleep(0.5)
    raise AssertionError(f"{ident}: never {status}: {d}; logs: {stack.logs(ident)}")


def routed(stack: Stack, domain: str) -> bool:
    return any(domain in site.read_text() for site in stack.sites_dir.glob("*.caddy"))


def test_a_verified_domain_gets_a_pebble_certificate_and_a_misdirected_one_nothing(
        acme_stack: Stack, pebble: dict[str, Any], dns: DnsServer) -> None:
    stack, tag = acme_stack, uuid.uuid4().hex[:6]
    image = stack.push(f"custom-{tag}")
    good, bad = f"shop-{tag}.customer-e2e.test", f"blog-{tag}.customer-e2e.test"
    dns.set(good, "CNAME", f"cd-shop-{tag}.localhost.")  # the operator's record: at the app
    dns.set(bad, "CNAME", "someone-else.example.net.")  # points elsewhere
    shop = stack.create(subdomain=f"cd-shop-{tag}", image=image, port=3000, custom_domain=good)
    blog = stack.create(subdomain=f"cd-blog-{tag}", image=image, port=3000, custom_domain=bad)
    assert shop["custom_domain_status"] == "pending"

    wait_for_domain(stack, shop["id"], "active")
    wait_for_domain(stack, blog["id"], "misconfigured")
    assert routed(stack, good) and not routed(stack, bad)

    # A thousand asks without the secret, from Caddy's own address: each refused, and none spends
    # the issuance budget (the rate limits, off in these stacks, are tests/api's).
    check = f"{stack.api}/api/deploy/internal/domain-check"
    with requests.Session() as session:
        codes = Counter(session.get(check, params={"domain": good}, timeout=10).status_code for _ in range(1000))
    assert codes == {403: 1000}, codes

    # The first request: Caddy asks the API, Pebble issues, the app answers.
    first = https(good, pebble["roots"])
    assert first.returncode == 0 and first.stdout.endswith("\n200") and f"custom-{tag}" in first.stdout, \
        (first, pebble["log"].read_text()[-2000:])
    assert "Pebble Intermediate CA" in issuer(good, pebble["roots"])

    refused = https(bad, pebble["roots"])
    assert refused.returncode != 0 and not refused.stdout.endswith("\n200")
    ask = requests.get(check, params={"domain": bad, "token": stack.env["BUDDO_ASK_SECRET"]}, timeout=10)
    assert ask.status_code == 403 and ask.json()["error"]["code"] == "domain_not_verified"
    # Without the ask secret nobody is answered, not even about a verified domain.
    anonymous = requests.get(check, params={"domain": good}, timeout=10)
    assert anonymous.status_code == 403 and anonymous.json()["error"]["code"] == "ask_forbidden"
    entries = [e for e in stack.logs(shop["id"]) if (e["details"] or {}).get("reason") == "custom_domain"]
    assert [(e["details"]["previous_status"], e["details"]["custom_domain_status"]) for e in entries] == [
        ("pending", "active")]

    # The operator proves the claim with the TXT record the API shows (its name is an apex, say,
    # with an A record to the host): verified, routed and issued; a record moved away: no route.
    record = blog["custom_domain_verification"]
    assert (record["type"], record["name"]) == ("TXT", f"_buddo-challenge.{bad}")
    dns.set(bad, "CNAME")
    dns.set(bad, "A", "127.0.0.1")
    dns.set(record["name"], "TXT", f'"{record["value"]}"')
    wait_for_domain(stack, blog["id"], "active")
    fixed = https(bad, pebble["roots"])
    assert fixed.returncode == 0 and fixed.stdout.endswith("\n200"), fixed
    dns.set(good, "CNAME", "someone-else.example.net.")
    wait_for_domain(stack, shop["id"], "misconfigured")
    assert not routed(stack, good)
    gone = https(good, pebble["roots"])
    assert not gone.stdout.endswith("\n200"), gone
    for ident in (shop["id"], blog["id"]):
        stack.destroy(ident)

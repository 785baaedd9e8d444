"""DNS records as part of the desired state: converge and reconcile against the Cloudflare fake.

The playbooks reach the fake over HTTP from the controller, as they reach the real API;
the token goes the worker's way (a per-run secret file) and must appear nowhere.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine.conftest import Engine
from tests.fakes.cloudflare import FakeCloudflare

pytestmark = pytest.mark.slow

TOKEN = "cf-engine-token-7e3d1c9b5a"
HOST_IPV4 = "192.0.2.44"


class Dns:
    def __init__(self, engine: Engine, fake: FakeCloudflare, zone_id: str) -> None:
        self.engine, self.fake, self.zone_id = engine, fake, zone_id

    @property
    def prefix(self) -> str:
        return f"buddo-deploy {self.engine.instance} container-host-1 "

    def settings(self, **over: Any) -> dict[str, Any]:
        return {"cloudflare_dns_mode": "per_deployment", "cloudflare_dns_api_url": self.fake.url,
                "cloudflare_dns_zone": "localhost", "buddo_public_ipv4": HOST_IPV4, **over}

    def converge(self, items: list[dict[str, Any]], token: str = TOKEN, **kwargs: Any) -> Any:
        return self.engine.converge(items, extra=self.settings(**kwargs.pop("extra", {})),
                                    secret_files={"cloudflare_dns_api_token_file": token}, **kwargs)

    def records(self) -> list[dict[str, Any]]:
        return self.fake.state.records_of(self.zone_id)

    def record_of(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["name"] == f"{item['subdomain']}.localhost"]


@pytest.fixture
def dns(engine: Engine) -> Iterator[Dns]:
    with FakeCloudflare() as fake:
        zone_id = fake.state.add_zone("localhost")
        fake.state.add_token(TOKEN)
        yield Dns(engine, fake, zone_id)


def absent(item: dict[str, Any]) -> dict[str, Any]:
    return {**item, "state": "absent"}


def test_converge_creates_the_record_of_a_deployment_and_destroy_removes_it(dns: Dns) -> None:
    item = dns.engine.deployment("dns", f"{dns.engine.registry}/demo/hello:v1")
    name = f"{item['subdomain']}.localhost"
    try:
        first = dns.converge([item], keep_data_dir=True)  # artifacts (stdout, command) stay to be searched
        assert first.result.ok, first.result
        outcome = first.outcome(item)
        assert outcome["ok"], outcome
        assert f"dns record missing (A {name})" in outcome["drift"]
        [record] = dns.record_of(item)
        assert (record["type"], record["content"], record["ttl"], record["proxied"]) == ("A", HOST_IPV4, 1, False)
        assert record["comment"] == dns.prefix + item["id"]

        again = dns.converge([item])
        assert again.changed == 0 and again.outcome(item)["drift"] == []
        writes = [m for m, _, _ in dns.fake.state.requests if m != "GET"]
        assert writes == ["POST"]  # the second run only read

        # Stopped: the name stays (the site does too).
        stopped = dns.converge([{**item, "state": "stopped", "generation": 2}])
        assert stopped.outcome(item)["ok"] and len(dns.record_of(item)) == 1
    finally:
        gone = dns.converge([absent(item)], keep_data_dir=True)
    assert gone.outcome(item)["ok"], gone.outcome(item)
    assert f"dns record present (A {name})" in gone.outcome(item)["drift"]
    assert dns.record_of(item) == []
    assert dns.converge([absent(item)]).changed == 0

    # The token reached the API (records were written) and nothing else: not the
    # events, not the outcomes, not a file of the session, not the tmpfs secret dirs.
    text = json.dumps([e.__dict__ for e in first.events + gone.events]) + json.dumps(first.outcomes)
    assert TOKEN not in text
    kept = list((dns.engine.root / "runner").glob("*/artifacts/*/stdout"))
    assert len(kept) >= 2 and "Create or repair the DNS records" in "".join(p.read_text() for p in kept)
    places = [str(dns.engine.root), *map(str, Path("/dev/shm").glob("buddo-secrets-*"))]
    leaked = subprocess.run(["grep", "-rl", TOKEN, *places], capture_output=True, text=True)
    assert leaked.stdout == "", f"token found in files: {leaked.stdout}"


def test_reconcile_repairs_changed_records_and_removes_orphans_only(dns: Dns) -> None:
    item = dns.engine.deployment("dnsrec", f"{dns.engine.registry}/demo/hello:v1")
    name = f"{item['subdomain']}.localhost"
    try:
        assert dns.converge([item]).outcome(item)["ok"]
        [ours] = dns.record_of(item)
        state = dns.fake.state
        orphan_id = str(uuid.uuid4())
        orphan = state.put_record(dns.zone_id, type="A", name="left-over", content=HOST_IPV4,
                                  comment=dns.prefix + orphan_id)
        foreign = state.put_record(dns.zone_id, type="A", name="by-hand", content="198.51.100.9")
        other_host = state.put_record(dns.zone_id, type="A", name="elsewhere", content="198.51.100.10",
                                      comment=f"buddo-deploy {dns.engine.instance} container-host-2 {uuid.uuid4()}")
        state.records[dns.zone_id][ours["id"]].update(content="198.51.100.66", ttl=300)

        # A converge of the deployment repairs its own record, and touches no orphan.
        dry = dns.converge([item], reconcile=True, check=True)
        assert f"dns record differs (A {name}: 198.51.100.66 ttl 300, want {HOST_IPV4} ttl 1)" in dry.outcome(
            item)["drift"]
        assert "dns record A left-over.localhost" in dry.orphans
        assert {r["id"] for r in dns.records()} >= {orphan["id"], foreign["id"]}
        assert dns.record_of(item)[0]["content"] == "198.51.100.66"

        repaired = dns.converge([item], reconcile=True)
        assert repaired.result.ok and repaired.outcome(item)["ok"]
        assert repaired.orphans == ["dns record A left-over.localhost"]
        [fixed] = dns.record_of(item)
        assert (fixed["id"], fixed["content"], fixed["ttl"]) == (ours["id"], HOST_IPV4, 1)
        left = {r["id"] for r in dns.records()}
        assert orphan["id"] not in left and {foreign["id"], other_host["id"]} <= left

        # A missing record comes back; a refused token fails the deployment (retried), not the play.
        state.records[dns.zone_id].pop(ours["id"])
        assert dns.converge([item], reconcile=True).outcome(item)["ok"] and len(dns.record_of(item)) == 1
        refused = dns.converge([item], token="not-the-token")
        assert refused.result.ok
        assert not refused.outcome(item)["ok"] and refused.outcome(item)["kind"] == "host"
        assert "10000 Authentication error" in refused.outcome(item)["message"]
        assert "not-the-token" not in json.dumps(refused.outcomes)
        assert "version v1" in dns.engine.https_get(name)[1]  # the app still serves
    finally:
        dns.converge([absent(item)])


def test_wildcard_mode_one_record_per_host_and_pruned_when_the_mode_changes(dns: Dns) -> None:
    item = absent(dns.engine.deployment("dnswild", f"{dns.engine.registry}/demo/hello:v1"))
    wildcard = {"cloudflare_dns_mode": "wildcard", "buddo_public_ipv6": "2001:db8::44"}
    first = dns.converge([item], extra=wildcard)
    assert first.result.ok and first.outcome(item)["ok"]
    assert sorted((r["type"], r["name"], r["content"], r["comment"]) for r in dns.records()) == [
        ("A", "*.localhost", HOST_IPV4, dns.prefix + "*"), ("AAAA", "*.localhost", "2001:db8::44", dns.prefix + "*")]
    assert dns.converge([item], extra=wildcard).changed == 0
    # Back to per_deployment: the wildcard records are this host's orphans, removed by a reconcile only.
    assert len(dns.converge([item]).result.stats.get("buddo_orphans") or []) == 0 and len(dns.records()) == 2
    pruned = dns.converge([item], reconcile=True)
    assert sorted(pruned.orphans) == ["dns record A *.localhost", "dns record AAAA *.localhost"]
    assert dns.records() == []

"""The cloudflare_dns filters: what to ensure and delete, drift per deployment, failures into the outcomes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "collections"))

from ansible_collections.buddo.deploy.plugins.filter.cloudflare_dns import (  # noqa: E402
    cloudflare_dns_outcomes,
    cloudflare_dns_plan,
    cloudflare_dns_report,
)

BASE = "apps.example.com"
PREFIX = "buddo-deploy buddo h1 "


def item(ident: str = "d1", **over: Any) -> dict[str, Any]:
    return {"id": ident, "host": "h1", "subdomain": f"app-{ident}", "state": "running", **over}


def rec(key: str = "d1", rtype: str = "A", name: str = "app-d1." + BASE, content: str = "192.0.2.10",
        **over: Any) -> dict[str, Any]:
    return {"id": f"r-{key}-{rtype}-{content}", "type": rtype, "name": name, "content": content, "ttl": 1,
            "proxied": False, "comment": PREFIX + key, **over}


def plan(items: list[dict[str, Any]], records: list[dict[str, Any]], **over: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"mode": "per_deployment", "base_domain": BASE, "host": "h1", "platform": "buddo",
                            "ipv4": "192.0.2.10", "ipv6": "", **over}
    return cloudflare_dns_plan(items, records, **args)


def test_per_deployment_creates_what_is_missing_for_running_and_stopped() -> None:
    made = plan([item("d1"), item("d2", state="stopped"), item("d3", state="absent")], [], ipv6="2001:db8::10")
    assert [(e["key"], e["type"], e["name"], e["content"]) for e in made["ensure"]] == [
        ("d1", "A", "app-d1." + BASE, "192.0.2.10"), ("d1", "AAAA", "app-d1." + BASE, "2001:db8::10"),
        ("d2", "A", "app-d2." + BASE, "192.0.2.10"), ("d2", "AAAA", "app-d2." + BASE, "2001:db8::10")]
    assert all(e["exclusive"] and e["comment"] == PREFIX + e["key"] for e in made["ensure"])
    assert made["drift"]["d1"] == [f"dns record missing (A app-d1.{BASE})", f"dns record missing (AAAA app-d1.{BASE})"]
    assert "d3" not in made["drift"] and made["delete"] == []


def test_nothing_to_do_when_the_records_match() -> None:
    made = plan([item()], [rec()])
    assert made["ensure"] == [] and made["delete"] == [] and made["drift"] == {}


def test_a_changed_or_duplicated_record_is_repaired() -> None:
    changed = plan([item()], [rec(content="198.51.100.7", ttl=300)])
    assert changed["drift"]["d1"] == [f"dns record differs (A app-d1.{BASE}: 198.51.100.7 ttl 300, want 192.0.2.10 "
                                      "ttl 1)"]
    assert len(changed["ensure"]) == 1
    proxied = plan([item()], [rec(proxied=True)])
    assert proxied["drift"]["d1"] == [f"dns record differs (A app-d1.{BASE}: 192.0.2.10 ttl 1 proxied, want "
                                      "192.0.2.10 ttl 1)"]
    twice = plan([item()], [rec(), rec(content="198.51.100.7")])
    assert twice["drift"]["d1"] == [f"dns record duplicated (A app-d1.{BASE})"] and len(twice["ensure"]) == 1


def test_destroyed_and_stale_records_are_deleted() -> None:
    made = plan([item("d1", state="absent"), item("d2")],
                [rec("d1", name="app-d1." + BASE), rec("d2", name="old-name." + BASE), rec("d2", rtype="AAAA",
                                                                                          name="app-d2." + BASE,
                                                                                          content="2001:db8::1")])
    assert [(d["key"], d["type"], d["name"]) for d in made["delete"]] == [
        ("d1", "A", "app-d1." + BASE), ("d2", "A", "old-name." + BASE), ("d2", "AAAA", "app-d2." + BASE)]
    assert made["drift"]["d1"] == [f"dns record present (A app-d1.{BASE})"]
    assert made["drift"]["d2"] == [f"dns record missing (A app-d2.{BASE})", f"dns record stale (A old-name.{BASE})",
                                   f"dns record stale (AAAA app-d2.{BASE})"]


def test_orphans_only_with_prune_and_never_known_or_other_hosts_or_instances() -> None:
    records = [rec("gone"), rec("kept"), rec("x", comment="buddo-deploy buddo h2 x"),
               rec("y", comment="buddo-deploy other h1 y"), rec("z", comment=None)]
    assert plan([], records)["delete"] == []
    pruned = plan([], records, prune=True, known=["kept"])
    assert [d["key"] for d in pruned["delete"]] == ["gone"]
    assert pruned["orphans"] == [f"dns record A app-d1.{BASE}"] and pruned["drift"] == {}


def test_wildcard_one_record_for_the_host_drift_on_every_live_deployment() -> None:
    items = [item("d1"), item("d2", state="stopped"), item("d3", state="absent")]
    made = plan(items, [rec("d1")], mode="wildcard")
    assert [(e["key"], e["name"], e["exclusive"]) for e in made["ensure"]] == [("*", "*." + BASE, False)]
    assert made["drift"]["d1"] == [f"dns record missing (A *.{BASE})", f"dns record stale (A app-d1.{BASE})"]
    assert made["drift"]["d2"] == [f"dns record missing (A *.{BASE})"]
    assert [d["key"] for d in made["delete"]] == ["d1"]  # the per-deployment record of the other mode
    assert plan(items, [rec("*", name="*." + BASE)], mode="wildcard")["ensure"] == []
    # A wildcard record left from the other mode is an orphan of per_deployment mode.
    assert plan([], [rec("*", name="*." + BASE)], prune=True)["orphans"] == [f"dns record A *.{BASE}"]


def test_report_and_outcomes() -> None:
    made = plan([item("d1"), item("d2")], [])
    ensured = {"results": [{"record_item": made["ensure"][0], "failed": True, "msg": "DNS record A ...: 81058"},
                           {"record_item": made["ensure"][1], "changed": True}]}
    report = cloudflare_dns_report(made, {"records": []}, ensured, {"results": []})
    assert report["failed"] == {"d1": "DNS record A ...: 81058"}
    outcomes = {"d1": {"ok": True, "state": "running", "drift": ["site missing"]},
                "d2": {"ok": True, "state": "running", "drift": []}}
    merged = cloudflare_dns_outcomes(outcomes, report)
    assert merged["d1"] == {"ok": False, "state": "running", "kind": "host", "message": "DNS record A ...: 81058",
                            "task": "Converge the DNS records",
                            "drift": ["site missing", f"dns record missing (A app-d1.{BASE})"]}
    assert merged["d2"] == {"ok": True, "state": "running", "drift": [f"dns record missing (A app-d2.{BASE})"]}
    # A listing that failed fails every deployment of the host (retried), and plans nothing.
    down = cloudflare_dns_report(plan([item("d1")], []), {"failed": True, "msg": "could not be reached"},
                                 None, None, [item("d1")])
    assert down == {"drift": {}, "failed": {"d1": "could not be reached"}, "orphans": []}
    # An app failure stays the app's; DNS disabled changes nothing.
    app = {"d1": {"ok": False, "kind": "app", "message": "pull failed", "drift": []}}
    assert cloudflare_dns_outcomes(app, down)["d1"]["message"] == "pull failed"
    assert cloudflare_dns_outcomes(outcomes, {}) == outcomes

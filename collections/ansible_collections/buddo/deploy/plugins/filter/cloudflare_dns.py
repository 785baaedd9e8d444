"""The DNS records a host's deployments need on Cloudflare, compared with the records we manage there."""

from __future__ import annotations

from typing import Any

DOCUMENTATION = r"""
name: cloudflare_dns_plan
short_description: Compare the DNS records a host's deployments need with the managed records found
description:
  - "Records this platform manages carry the comment C(buddo-deploy <instance> <host> <key>),
    where the key is a deployment id (mode per_deployment) or C(*) (mode wildcard). Given the
    desired deployments of one host and the records found with that host's marker prefix,
    returns the records to ensure (create or repair), the ones to delete, and the drift per
    deployment."
  - "Records of deployments the document does not list are touched only with O(prune)
    (reconcile: the document is complete) and never when their id is in O(known)."
positional: records
options:
  _input: {description: Desired deployments of the host (see playbooks/README.md)., type: list, required: true}
  records: {description: "Managed records found (cloudflare_record_info's records).", type: list, required: true}
  mode: {description: "wildcard or per_deployment.", type: str, required: true}
  base_domain: {description: Base domain of the deployments., type: str, required: true}
  host: {description: The inventory host., type: str, required: true}
  platform: {description: "The platform instance (BUDDO_INSTANCE).", type: str, required: true}
  ipv4: {description: "The host's public IPv4 address, or empty.", type: str, default: ""}
  ipv6: {description: "The host's public IPv6 address, or empty.", type: str, default: ""}
  ttl: {description: "TTL of the records (1 is automatic).", type: int, default: 1}
  proxied: {description: Whether the records are proxied., type: bool, default: false}
  known: {description: Ids of deployments to leave alone., type: list, default: []}
  prune: {description: "Also delete records of deployments the document does not list.", type: bool, default: false}
"""

RETURN = r"""
_value:
  description: "ensure (records to create or repair), delete (records to remove), drift (id -> reasons), orphans."
  type: dict
"""

WILDCARD = "*"
MARKER = "buddo-deploy"


def marker_prefix(platform: str, host: str) -> str:
    return f"{MARKER} {platform} {host} "


def _label(record: dict[str, Any]) -> str:
    return f"{record['type']} {record['name']}"


def cloudflare_dns_plan(
    deployments: list[dict[str, Any]],
    records: list[dict[str, Any]],
    mode: str,
    base_domain: str,
    host: str,
    platform: str,
    ipv4: str = "",
    ipv6: str = "",
    ttl: int = 1,
    proxied: bool = False,
    known: list[str] | None = None,
    prune: bool = False,
) -> dict[str, Any]:
    prefix = marker_prefix(platform, host)
    addresses = [(t, a) for t, a in (("A", ipv4), ("AAAA", ipv6)) if a]
    ttl = 1 if proxied else int(ttl)
    listed = {str(d["id"]): d for d in deployments}
    live = [i for i, d in listed.items() if d["state"] in ("running", "stopped")]

    wanted: list[dict[str, Any]] = []
    if mode == "wildcard":
        keys = {WILDCARD: f"*.{base_domain}"}
    else:
        keys = {i: f"{listed[i]['subdomain']}.{base_domain}" for i in live}
    for key, name in keys.items():
        for rtype, address in addresses:
            wanted.append({"key": key, "type": rtype, "name": name, "content": address, "ttl": ttl,
                           "proxied": proxied, "comment": prefix + key, "exclusive": key != WILDCARD})
    # Deployments a record's drift and failure belong to (a wildcard serves every one that runs).
    owners = {key: (live if key == WILDCARD else [key]) for key in keys}

    plan: dict[str, Any] = {"ensure": [], "delete": [], "drift": {}, "orphans": [], "owners": owners}

    def note(key: str, reason: str) -> None:
        for ident in owners.get(key) or ([key] if key in listed else []):
            plan["drift"].setdefault(ident, []).append(reason)

    found: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for record in records:
        comment = str(record.get("comment") or "")
        if comment.startswith(prefix):
            found.setdefault((comment[len(prefix):], record["type"], record["name"]), []).append(record)

    for want in wanted:
        mine = found.pop((want["key"], want["type"], want["name"]), [])
        right = [r for r in mine if all(r.get(k) == want[k] for k in ("content", "ttl", "proxied"))]
        if not mine:
            note(want["key"], f"dns record missing ({_label(want)})")
        elif not right:
            have = mine[0]
            note(want["key"], f"dns record differs ({_label(want)}: {have.get('content')} ttl {have.get('ttl')}"
                              f"{' proxied' if have.get('proxied') else ''}, want {want['content']} ttl {want['ttl']}"
                              f"{' proxied' if want['proxied'] else ''})")
        elif len(mine) > 1:
            note(want["key"], f"dns record duplicated ({_label(want)})")
        if not right or len(mine) > 1:
            plan["ensure"].append(want)

    keep = {str(k) for k in known or []}
    for (key, rtype, name), extra in sorted(found.items()):
        label = f"{rtype} {name}"
        if key in listed or (key == WILDCARD and mode == "wildcard"):
            gone = key in listed and listed[key]["state"] == "absent"
            note(key, f"dns record {'present' if gone else 'stale'} ({label})")
        elif prune and key not in keep:
            plan["orphans"].append(f"dns record {label}")
        else:
            continue
        plan["delete"].append({"key": key, "type": rtype, "name": name, "comment": prefix + key,
                               "count": len(extra)})
    return plan


def _by_key(results: dict[str, Any] | None) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for result in (results or {}).get("results") or []:
        record = result.get("record_item") or {}
        if record.get("key") is not None:
            out.setdefault(str(record["key"]), []).append(result)
    return out


def cloudflare_dns_report(
    plan: dict[str, Any],
    listed: dict[str, Any] | None,
    ensured: dict[str, Any] | None = None,
    deleted: dict[str, Any] | None = None,
    deployments: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Per deployment: the DNS drift found and why its records could not be converged."""
    failed: dict[str, str] = {}
    if listed is not None and listed.get("failed"):
        message = str(listed.get("msg") or "the DNS records could not be listed")
        for item in deployments or []:
            failed[str(item["id"])] = message
        return {"drift": {}, "failed": failed, "orphans": []}
    owners = plan.get("owners") or {}
    for key, results in _by_key(ensured).items():
        for result in results:
            if result.get("failed"):
                for ident in owners.get(key) or [key]:
                    failed.setdefault(ident, str(result.get("msg") or "the DNS record could not be written"))
    for key, results in _by_key(deleted).items():
        for result in results:
            if result.get("failed"):
                for ident in owners.get(key) or [key]:
                    failed.setdefault(ident, str(result.get("msg") or "the DNS record could not be removed"))
    return {"drift": plan.get("drift") or {}, "failed": failed, "orphans": plan.get("orphans") or []}


def cloudflare_dns_outcomes(outcomes: dict[str, Any], report: dict[str, Any] | None) -> dict[str, Any]:
    """The converge outcomes with each deployment's DNS drift added and a DNS failure failing it (retried)."""
    if not report:
        return outcomes
    merged = {}
    for ident, outcome in outcomes.items():
        outcome = dict(outcome)
        outcome["drift"] = list(outcome.get("drift") or []) + list((report.get("drift") or {}).get(ident) or [])
        message = (report.get("failed") or {}).get(ident)
        if message and outcome.get("ok"):
            outcome |= {"ok": False, "kind": "host", "message": message, "task": "Converge the DNS records"}
        merged[ident] = outcome
    return merged


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"cloudflare_dns_plan": cloudflare_dns_plan, "cloudflare_dns_report": cloudflare_dns_report,
                "cloudflare_dns_outcomes": cloudflare_dns_outcomes}

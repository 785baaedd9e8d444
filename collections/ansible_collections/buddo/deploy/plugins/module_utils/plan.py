"""The drift between a host's desired deployments and what it runs, as a plan; and, once the
converge module acted on it, each deployment's outcome.

plan: start, stop, remove (desired items with serving_port and recreate added), remove_sites,
orphan_containers, orphan_sites (files), orphan_networks (names), reload (bool), drift (id -> reasons).
"""

from __future__ import annotations

import json
from typing import Any

from ansible_collections.buddo.deploy.plugins.module_utils.container import drift as container_drift
from ansible_collections.buddo.deploy.plugins.module_utils.desired import bad_names
from ansible_collections.buddo.deploy.plugins.module_utils.observe import of_deployments
from ansible_collections.buddo.deploy.plugins.module_utils.podman import deployment_network


def _site_hosts(item: dict[str, Any], base_domain: str) -> list[str]:
    hosts = [f"{item['subdomain']}.{base_domain}"]
    if item.get("custom_domain"):
        hosts.append(str(item["custom_domain"]))
    return hosts


def _served(host: str, live_config: str) -> bool:
    return f'"{host}"' in live_config


def _dials(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {str(node["dial"])} if "dial" in node else set()
        return found.union(*(_dials(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_dials(v) for v in node))
    return set()


def _live_routes(node: Any, routes: dict[str, set[str]] | None = None) -> dict[str, set[str]]:
    """Host -> upstream addresses its routes dial, from Caddy's JSON config."""
    routes = {} if routes is None else routes
    if isinstance(node, dict):
        hosts = [h for m in node.get("match") or [] if isinstance(m, dict) for h in m.get("host") or []]
        if hosts and "handle" in node:
            for host in hosts:
                routes.setdefault(str(host), set()).update(_dials(node["handle"]))
        for value in node.values():
            _live_routes(value, routes)
    elif isinstance(node, list):
        for value in node:
            _live_routes(value, routes)
    return routes


def _routes_of(live_config: str) -> dict[str, set[str]] | None:
    try:
        return _live_routes(json.loads(live_config)) if live_config else None
    except ValueError:
        return None


def converge_plan(
    desired: list[dict[str, Any]],
    observed: dict[str, Any],
    live_config: str,
    base_domain: str,
    known: list[str] | None = None,
    prune: bool = False,
    restart_policy: str = "no",
) -> dict[str, Any]:
    if bad := bad_names(desired):  # before anything changes: names become file and container names
        raise ValueError("converge_deployments: " + "; ".join(bad))
    containers: list[dict[str, Any]] = list(observed.get("containers") or [])
    sites: list[dict[str, Any]] = list(observed.get("sites") or [])
    live = live_config or ""
    routes = _routes_of(live)
    plan: dict[str, Any] = {"start": [], "stop": [], "remove": [], "remove_sites": [], "orphan_containers": [],
                            "orphan_sites": [], "orphan_networks": [], "reload": False, "drift": {}}
    by_deployment, network_of = of_deployments(observed)
    site_of = {str(s.get("deployment_id")): s for s in sites if s.get("deployment_id")}
    networks: list[dict[str, Any]] = list(observed.get("networks") or [])

    for item in desired:
        ident = str(item["id"])
        mine = by_deployment.get(ident, [])
        site = site_of.get(ident)
        drift: list[str] = []
        state = item["state"]
        if state == "running":
            serving = [c for c in mine if c.get("spec") == item["spec"] and c.get("state") == "running"]
            recreate = False
            same = [c for c in mine if c.get("spec") == item["spec"]]
            if not serving:
                if not mine:
                    drift.append("container missing")
                elif same:
                    drift.append("container not running")
                else:
                    drift.append("container runs an older spec")
            elif len(mine) > 1:
                drift.append("old containers left over")
            # A container whose limits differ, or made before its tier's caps changed or before
            # tenants had networks of their own, is replaced (beside the serving one), never
            # started again as it was.
            if serving or same:
                differs = container_drift((serving or same)[0], item, deployment_network(str(item["id"])),
                                          limits=bool(serving), restart_policy=restart_policy)
                drift += differs
                recreate = bool(differs)
            hosts = _site_hosts(item, base_domain)
            if site is None:
                drift.append("site missing")
            elif sorted(site.get("hosts") or []) != sorted(hosts) or (
                    serving and site.get("upstream_port") != serving[0].get("host_port")):
                drift.append("site stale")
            if live and not all(_served(h, live) for h in hosts):
                drift.append("caddy does not serve the site")
                plan["reload"] = True
            elif routes is not None and site is not None and site.get("upstream_port"):
                # A run killed between switching the file and the reload: Caddy still routes
                # to the old container, which must not be retired before Caddy moved.
                want = f":{site['upstream_port']}"
                if not all(any(d.endswith(want) for d in routes.get(h, set())) for h in hosts):
                    drift.append("caddy routes to another port")
                    plan["reload"] = True
            if drift:
                serving_port = site.get("upstream_port") if site else None
                plan["start"].append({**item, "serving_port": serving_port or None, "recreate": recreate})
        elif state == "stopped":
            if any(c.get("state") == "running" for c in mine):
                drift.append("container running")
                plan["stop"].append(item)
        else:  # absent
            if mine:
                drift.append("container present")
            if ident in network_of:
                drift.append("network present")
            if mine or ident in network_of:
                plan["remove"].append(item)
            if site is not None:
                drift.append("site present")
                plan["remove_sites"].append(site["file"])
            elif live and _served(f"{item['subdomain']}.{base_domain}", live) and not any(
                    d["state"] == "running" and d["subdomain"] == item["subdomain"] for d in desired):
                drift.append("caddy still serves the site")
                plan["reload"] = True
        if drift:
            plan["drift"][ident] = drift

    if prune:
        wanted = {str(d["id"]) for d in desired} | {str(k) for k in known or []}
        for container in containers:
            if str(container.get("deployment_id")) not in wanted:
                plan["orphan_containers"].append(container["id"])
                plan["drift"].setdefault("orphans", []).append(f"container {container.get('name')}")
        live_ids = {str(d["id"]) for d in desired if d["state"] != "absent"} | {str(k) for k in known or []}
        for site in sites:
            ident = str(site.get("deployment_id") or "")
            if ident and ident not in live_ids and site["file"] not in plan["remove_sites"]:
                plan["orphan_sites"].append(site["file"])
                plan["drift"].setdefault("orphans", []).append(f"site {site.get('name')}")
        for network in networks:
            if str(network.get("deployment_id")) not in wanted:
                plan["orphan_networks"].append(network["name"])
                plan["drift"].setdefault("orphans", []).append(f"network {network['name']}")
    return plan


def _by_item_id(results: dict[str, Any] | None, loop_var: str = "item") -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for result in (results or {}).get("results") or []:
        item = result.get(loop_var) or {}
        ident = item.get("id") or item.get("deployment_id")
        if ident:
            out[str(ident)] = result
    return out


def _start_results(started: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The start step's entry (instances.converge_all) per deployment."""
    return {str(entry["deployment_id"]): entry for entry in started}


def converge_started(plan: dict[str, Any], started: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The plan's start items whose container now runs, with the container added."""
    results = _start_results(started)
    up = []
    for item in plan["start"]:
        result = results.get(str(item["id"])) or {}
        if not result.get("failed") and (result.get("container") or {}).get("id"):
            up.append({**item, "container": result["container"], "container_id": result["container"]["id"],
                       "others": result.get("others") or []})
    return up


def converge_sites(up: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """caddy_site items: route each deployment to the port of its running container."""
    return [{"subdomain": i["subdomain"], "custom_domain": i.get("custom_domain") or "",
             "upstream_port": i["container"]["host_port"], "deployment_id": i["id"]} for i in up]


def converge_retire(up: list[dict[str, Any]], sites: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Deployments whose traffic moved (site written) and that have old containers or a temporary name."""
    failed = {ident for ident, result in _by_item_id(sites, "site").items() if result.get("failed")}
    return [i for i in up if str(i["id"]) not in failed
            and (i["others"] or i["container"].get("name") != i["container_name"])]


def converge_outcomes(
    desired: list[dict[str, Any]],
    plan: dict[str, Any],
    observed: dict[str, Any],
    started: list[dict[str, Any]] | None = None,
    sites: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Per deployment: ok, failure kind and message, drift found, the serving container."""
    start_results = _start_results(started or [])
    site_results = _by_item_id(sites, "site")
    outcomes: dict[str, Any] = {}
    for item in desired:
        ident = str(item["id"])
        outcome: dict[str, Any] = {"ok": True, "state": item["state"], "drift": plan["drift"].get(ident, []),
                                   "generation": item.get("generation")}
        if item["state"] == "running":
            result = start_results.get(ident)
            if result is not None:
                outcome["actions"] = result.get("actions") or []
                if result.get("failed"):
                    outcome |= {"ok": False, "kind": result.get("failure_kind") or "host",
                                "message": str(result.get("msg") or "the container could not be started"),
                                "task": "Run the app containers"}
                else:
                    outcome["container"] = result.get("container") or {}
            else:  # no drift: what runs is the spec
                serving = [c for c in observed.get("containers") or []
                           if c.get("deployment_id") == ident and c.get("spec") == item["spec"]
                           and c.get("state") == "running"]
                if serving:
                    outcome["container"] = {k: serving[0].get(k) for k in ("id", "name", "host_port")}
            site = site_results.get(ident)
            if outcome["ok"] and site is not None and site.get("failed"):
                outcome |= {"ok": False, "kind": "app", "task": "Write, remove and apply the Caddy sites",
                            "message": "Caddy rejected the site; the running config is unchanged: "
                                       + str(site.get("stderr") or site.get("msg") or "").strip()}
        outcomes[ident] = outcome
    return outcomes

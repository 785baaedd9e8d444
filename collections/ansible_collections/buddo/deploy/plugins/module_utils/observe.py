"""What runs on a host: this platform's containers, networks and Caddy sites, Caddy's live config,
the egress policy and (for the health prober) whether each app answers. Only reads."""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ansible_collections.buddo.deploy.plugins.module_utils import desired
from ansible_collections.buddo.deploy.plugins.module_utils.container import observed
from ansible_collections.buddo.deploy.plugins.module_utils.http import http_get
from ansible_collections.buddo.deploy.plugins.module_utils.podman import parse_networks, parse_ps, run_command

_DEPLOYMENT = re.compile(r"^# deployment (\S+)\s*$", re.MULTILINE)
_INSTANCE = re.compile(r"^# instance (\S+)\s*$", re.MULTILINE)
_UPSTREAM = re.compile(r"reverse_proxy\s+\S*:(\d+)")
_SITE_HOSTS = re.compile(r"^([^\s#{}][^{}]*?)\s*\{\s*$", re.MULTILINE)

Run = Callable[[list[str]], tuple[int, str, str]]


class ObserveError(Exception):
    """The host could not be read (podman failed): nothing can be planned."""


__all__ = ["ObserveError", "host", "of_deployments", "probes", "run_command"]


def probe(url: str, timeout: float, expected: int = desired.BELOW_500) -> dict[str, Any]:
    status, _, error = http_get(url, timeout)
    healthy = desired.healthy(status, desired.BELOW_500 if expected == desired.ANY_ANSWER else expected)
    return {"status": status, "healthy": healthy, "error": error}


def of_host(found: list[dict[str, Any]], host: str) -> list[dict[str, Any]]:
    """The containers (or networks) of inventory host ``host`` (all when empty; unlabelled ones count as its own)."""
    return [c for c in found if not host or c["host"] in ("", host)]


def containers(run: Run, podman: str, instance: str, host: str) -> list[dict[str, Any]]:
    rc, out, err = run([podman, "ps", "--all", "--format", "json", "--filter", "label=buddo.managed_by=buddo-deploy",
                        "--filter", f"label=buddo.instance={instance}"])
    if rc != 0:
        raise ObserveError(f"podman ps failed: {err.strip()}")
    unknown = dict.fromkeys(("memory_limit_mb", "cpu_limit_millicores", "pids_limit", "log_max_size_mb", "networks",
                             "no_new_privileges", "restart_policy"))
    found = {c["id"]: {**c, **unknown} for c in of_host(parse_ps(out), host)}
    if found:
        rc, out, _ = run([podman, "inspect", "--format", "json", *found])
        for info in json.loads(out or "[]") if rc == 0 else []:
            entry = found.get(info.get("Id", ""))
            if entry is not None:
                entry |= observed(info)
    return list(found.values())


def networks(run: Run, podman: str, instance: str, host: str) -> list[dict[str, Any]]:
    rc, out, err = run([podman, "network", "ls", "--format", "json", "--filter", f"label=buddo.instance={instance}"])
    if rc != 0:
        raise ObserveError(f"podman network ls failed: {err.strip()}")
    return [n for n in of_host(parse_networks(out), host) if n["deployment_id"]]


def sites(sites_dir: str, instance: str) -> list[dict[str, Any]]:
    """Site files of this instance (a file naming none is the default instance's)."""
    found = []
    for path in sorted(glob.glob(os.path.join(sites_dir, "*.caddy"))):
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError:
            continue
        owner = _INSTANCE.search(text)
        if (owner.group(1) if owner else "buddo") != instance:
            continue
        deployment = _DEPLOYMENT.search(text)
        upstream = _UPSTREAM.search(text)
        found.append({
            "file": path, "name": os.path.basename(path),
            "deployment_id": deployment.group(1) if deployment else "",
            "hosts": [h.strip() for line in _SITE_HOSTS.findall(text) for h in line.split(",") if h.strip()],
            "upstream_port": int(upstream.group(1)) if upstream else 0,
        })
    return found


def caddy(admin: str) -> dict[str, Any]:
    """Whether Caddy answers on its admin address, and its live JSON config (as text)."""
    status, config, _ = http_get(f"http://{admin}/config/", 5, return_content=True)
    return {"running": status == 200, "config": config if status == 200 else ""}


def egress(run: Run, nft: str | None, table: str) -> bool:
    """Whether the nftables table of the egress policy is loaded."""
    return bool(nft) and run([str(nft), "list", "table", *table.split()])[0] == 0


def probes(found: list[dict[str, Any]], path: str, timeout: float) -> dict[str, Any]:
    """Container id -> one GET (no redirects, no proxy) to each running container's published port."""
    running = [c for c in found if c["state"] == "running" and c["host_port"]]

    def one(c: dict[str, Any]) -> dict[str, Any]:
        own = c.get("health") or {}  # the operator's health check (podman.parse_ps), else the platform's
        return probe(f"http://127.0.0.1:{c['host_port']}{own.get('path') or path}", own.get("timeout") or timeout,
                     own.get("status") or desired.BELOW_500)

    with ThreadPoolExecutor(max_workers=16) as pool:
        return {c["id"]: answer for c, answer in zip(running, pool.map(one, running))}


def of_deployments(seen: dict[str, Any]) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]]]:
    """An observation's containers (a list each) and networks by the deployment they belong to."""
    containers_of: dict[str, list[dict[str, Any]]] = {}
    for container in seen.get("containers") or []:
        containers_of.setdefault(str(container.get("deployment_id")), []).append(container)
    network_of = {str(n["deployment_id"]): n for n in seen.get("networks") or [] if n.get("deployment_id")}
    return containers_of, network_of


def host(run: Run, podman: str, instance: str, host_name: str, sites_dir: str = "", caddy_admin: str = "",
         nft: str | None = None, egress_table: str = "") -> dict[str, Any]:
    """Containers, networks and sites of this platform on this host; Caddy and egress when asked."""
    # Podman, nft and Caddy answer at the same time: the observation costs the slowest of them.
    with ThreadPoolExecutor(max_workers=4) as pool:
        found = pool.submit(containers, run, podman, instance, host_name)
        nets = pool.submit(networks, run, podman, instance, host_name)
        live = pool.submit(caddy, caddy_admin) if caddy_admin else None
        loaded = pool.submit(egress, run, nft, egress_table) if egress_table else None
        result: dict[str, Any] = {"containers": found.result(), "networks": nets.result(),
                                  "sites": sites(sites_dir, instance) if sites_dir else []}
        if live is not None:
            result["caddy"] = live.result()
        if loaded is not None:
            result["egress"] = loaded.result()
    return result

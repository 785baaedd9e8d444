#!/usr/bin/python
"""What a container host runs for Buddo Deploy, read in one module run."""

from __future__ import annotations

DOCUMENTATION = r"""
module: host_state
short_description: Observe the deployments' containers and Caddy sites on a host
description:
  - Lists every container labelled C(buddo.managed_by=buddo-deploy) and this platform's
    C(buddo.instance) (one C(podman ps), one C(podman inspect) for the limits and the
    isolation settings), the deployments' networks of this instance, and every
    Caddy site file of this instance in O(sites_dir) (C(# instance) comment) with the
    deployment it names, its hosts and upstream port.
  - With O(caddy_admin), also reads Caddy's live JSON config from its admin API, so a
    converge knows in this same module run whether Caddy runs and what it serves.
  - With O(probe), sends one GET (no redirects, no proxy) to the published port of
    every running container and reports whether the app answered with a status
    below 500.
  - With O(egress_table), also says whether the egress policy of tenant containers (role
    container_host) is loaded, so a converge never starts an app on a host without it.
  - Only reads; safe in check mode.
options:
  sites_dir: {description: Directory of the per-deployment Caddy site files (none when empty)., type: path, default: ""}
  instance: {description: Only containers labelled C(buddo.instance) with this value (one platform's own)., type: str,
      default: buddo}
  host: {description: "Only containers and networks labelled C(buddo.host) with this value, or with no such label
      (made before hosts were labelled). Empty: every host's. Two inventory hosts may share one machine's Podman.",
      type: str, default: ""}
  probe: {description: Probe the running containers over HTTP., type: bool, default: false}
  probe_path: {description: Path requested by the probe., type: str, default: /}
  probe_timeout: {description: Seconds one probe may take., type: float, default: 3}
  caddy_admin: {description: "Caddy's admin address (host:port); empty: Caddy is not read.", type: str, default: ""}
  egress_table: {description: "nftables table of the egress policy (C(inet buddo_egress)); empty - not read.",
      type: str, default: ""}
  podman: {description: Podman binary., type: str, default: podman}
"""

RETURN = r"""
containers:
  description: >-
    Managed containers (id, name, deployment_id, spec, state, host_port, memory_limit_mb, cpu_limit_millicores,
    pids_limit, log_max_size_mb, networks, no_new_privileges).
  type: list
  returned: always
networks: {description: "The deployments' networks (name, deployment_id, isolated).", type: list, returned: always}
sites: {description: "Site files (file, deployment_id, hosts, upstream_port).", type: list, returned: always}
probes: {description: "Container id -> {status, healthy, error}.", type: dict, returned: when probe}
egress: {description: Whether the nftables table O(egress_table) is loaded., type: bool, returned: when egress_table}
caddy:
  description: "Caddy's admin API: running (it answered 200), config (its live JSON config as text, empty when not
      running)."
  type: dict
  returned: when caddy_admin
"""

import glob
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.buddo.deploy.plugins.module_utils.container import observed
from ansible_collections.buddo.deploy.plugins.module_utils.http import http_get
from ansible_collections.buddo.deploy.plugins.module_utils.podman import parse_networks, parse_ps

_DEPLOYMENT = re.compile(r"^# deployment (\S+)\s*$", re.MULTILINE)
_INSTANCE = re.compile(r"^# instance (\S+)\s*$", re.MULTILINE)
_UPSTREAM = re.compile(r"reverse_proxy\s+\S*:(\d+)")
_SITE_HOSTS = re.compile(r"^([^\s#{}][^{}]*?)\s*\{\s*$", re.MULTILINE)
# `podman inspect` shows the log cap as go-units' HumanSize: decimal units, e.g. "10MB", "0B".


def probe(url: str, timeout: float) -> dict[str, Any]:
    status, _, error = http_get(url, timeout)
    return {"status": status, "healthy": 0 < status < 500, "error": error}


def of_host(found: list[dict[str, Any]], host: str) -> list[dict[str, Any]]:
    """The containers (or networks) of inventory host ``host`` (all when empty; unlabelled ones count as its own)."""
    return [c for c in found if not host or c["host"] in ("", host)]


def containers(module: AnsibleModule, podman: str, instance: str, host: str) -> list[dict[str, Any]]:
    rc, out, err = module.run_command([podman, "ps", "--all", "--format", "json", "--filter",
                                       "label=buddo.managed_by=buddo-deploy", "--filter",
                                       f"label=buddo.instance={instance}"])
    if rc != 0:
        module.fail_json(msg=f"podman ps failed: {err.strip()}")
    unknown = dict.fromkeys(("memory_limit_mb", "cpu_limit_millicores", "pids_limit", "log_max_size_mb", "networks",
                             "no_new_privileges"))
    found = {c["id"]: {**c, **unknown} for c in of_host(parse_ps(out), host)}
    if found:
        rc, out, _ = module.run_command([podman, "inspect", "--format", "json", *found])
        for info in json.loads(out or "[]") if rc == 0 else []:
            entry = found.get(info.get("Id", ""))
            if entry is not None:
                entry |= observed(info)
    return list(found.values())


def networks(module: AnsibleModule, podman: str, instance: str, host: str) -> list[dict[str, Any]]:
    rc, out, err = module.run_command([podman, "network", "ls", "--format", "json", "--filter",
                                       f"label=buddo.instance={instance}"])
    if rc != 0:
        module.fail_json(msg=f"podman network ls failed: {err.strip()}")
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


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "sites_dir": {"type": "path", "default": ""},
            "instance": {"type": "str", "default": "buddo"},
            "host": {"type": "str", "default": ""},
            "probe": {"type": "bool", "default": False},
            "probe_path": {"type": "str", "default": "/"},
            "probe_timeout": {"type": "float", "default": 3},
            "caddy_admin": {"type": "str", "default": ""},
            "egress_table": {"type": "str", "default": ""},
            "podman": {"type": "str", "default": "podman"},
        },
        supports_check_mode=True,
    )
    p = module.params
    result: dict[str, Any] = {"changed": False, "containers": containers(module, p["podman"], p["instance"], p["host"]),
                              "networks": networks(module, p["podman"], p["instance"], p["host"]),
                              "sites": sites(p["sites_dir"], p["instance"]) if p["sites_dir"] else []}
    if p["caddy_admin"]:
        status, config, _ = http_get(f"http://{p['caddy_admin']}/config/", 5, return_content=True)
        result["caddy"] = {"running": status == 200, "config": config if status == 200 else ""}
    if p["egress_table"]:
        nft = module.get_bin_path("nft", opt_dirs=["/usr/sbin", "/sbin"])
        result["egress"] = bool(nft) and module.run_command([nft, "list", "table", *p["egress_table"].split()])[0] == 0
    if p["probe"]:
        running = [c for c in result["containers"] if c["state"] == "running" and c["host_port"]]
        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = pool.map(lambda c: probe(f"http://127.0.0.1:{c['host_port']}{p['probe_path']}",
                                               p["probe_timeout"]), running)
            result["probes"] = {c["id"]: answer for c, answer in zip(running, answers)}
    module.exit_json(**result)


if __name__ == "__main__":
    main()

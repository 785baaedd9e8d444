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

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.buddo.deploy.plugins.module_utils import observe


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
    nft = module.get_bin_path("nft", opt_dirs=["/usr/sbin", "/sbin"]) if p["egress_table"] else None
    try:
        result: dict[str, Any] = observe.host(observe.run_command, p["podman"], p["instance"], p["host"],
                                              p["sites_dir"], p["caddy_admin"], nft, p["egress_table"])
    except observe.ObserveError as exc:
        module.fail_json(msg=str(exc))
    if p["probe"]:
        result["probes"] = observe.probes(result["containers"], p["probe_path"], p["probe_timeout"])
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()

"""Desired deployment items as the options of buddo.deploy.app_instance."""

from __future__ import annotations

from typing import Any

DOCUMENTATION = r"""
name: app_instance_items
short_description: Desired deployment items as app_instance's deployments
description:
  - Maps items of the desired-state document (see playbooks/README.md) to the per-deployment
    options of M(buddo.deploy.app_instance) for one state, so one module run converges them all.
  - Its companion C(app_instance_env) keeps only the env (or registry login) of the listed
    deployments, so no other deployment's secrets travel to the host.
positional: state, host
options:
  _input: {description: "Desired deployment items (the converge role adds serving_port, recreate, container_id).",
      type: list, required: true}
  state: {description: "The module's state: started, stopped, absent or retired.", type: str, required: true}
  host: {description: "Inventory host (label buddo.host of new containers).", type: str, default: ""}
"""

RETURN = r"""
_value: {description: One options mapping per item., type: list}
"""


def app_instance_items(items: list[dict[str, Any]], state: str, host: str = "") -> list[dict[str, Any]]:
    out = []
    for item in items:
        entry: dict[str, Any] = {"deployment_id": str(item["id"]), "name": item["container_name"]}
        if state == "started":
            entry |= {
                "image": item["image"], "spec": item["spec"], "port": item["port"], "host_ports": item["host_ports"],
                "memory_limit_mb": item["memory_limit_mb"], "cpu_limit_millicores": item["cpu_limit_millicores"],
                "pids_limit": item["pids_limit"], "log_max_size_mb": item["log_max_size_mb"],
                "disk_limit_mb": item["disk_limit_mb"],
                # buddo.host: host_state of this inventory host observes (and prunes) only its own.
                "labels": {**(item.get("labels") or {}), "buddo.subdomain": item["subdomain"], "buddo.host": host},
                "pull": item.get("pull") or "missing", "recreate": bool(item.get("recreate")),
            }
            if item.get("serving_port"):
                entry["serving_port"] = item["serving_port"]
        elif state == "absent":
            entry["image"] = item.get("image") or ""
        elif state == "retired":
            entry |= {"keep": item["container_id"], "keep_images": list(item.get("releases") or [])}
        out.append(entry)
    return out


def app_instance_env(env: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    """Deployment id -> env (or registry login), for the listed deployments only."""
    wanted = {str(item["id"]) for item in items}
    return {str(ident): values for ident, values in (env or {}).items() if str(ident) in wanted}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"app_instance_items": app_instance_items, "app_instance_env": app_instance_env}

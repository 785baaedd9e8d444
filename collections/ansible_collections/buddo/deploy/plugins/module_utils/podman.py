"""The managed containers as `podman ps --all --format json` lists them."""

from __future__ import annotations

import json
from typing import Any


def parse_ps(out: str) -> list[dict[str, Any]]:
    """id, name, state, exit_code, deployment_id, spec, host_port (first published), image, host (label)."""
    found = []
    for item in json.loads(out or "[]"):
        labels = item.get("Labels") or {}
        ports = [int(p.get("host_port") or 0) for p in item.get("Ports") or []]
        found.append({
            "id": item["Id"], "name": (item.get("Names") or [""])[0], "state": item.get("State", ""),
            "exit_code": item.get("ExitCode"), "deployment_id": labels.get("buddo.deployment_id", ""),
            "spec": labels.get("buddo.spec", ""), "host_port": ports[0] if ports else 0,
            "image": item.get("Image", ""), "host": labels.get("buddo.host", ""),
        })
    return found


def deployment_network(deployment_id: str) -> str:
    """The network of one deployment's containers (netavark `isolate`: no route to any other tenant's)."""
    return f"buddo-{deployment_id}"


def parse_networks(out: str) -> list[dict[str, Any]]:
    """name, deployment_id, isolated: from `podman network ls --format json`."""
    found = []
    for item in json.loads(out or "[]"):
        labels = item.get("labels") or {}
        found.append({"name": item.get("name", ""), "deployment_id": labels.get("buddo.deployment_id", ""),
                      "host": labels.get("buddo.host", ""),
                      "isolated": (item.get("options") or {}).get("isolate") == "true"})
    return found

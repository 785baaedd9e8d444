"""The managed containers as `podman ps --all --format json` lists them."""

from __future__ import annotations

import json
import subprocess
from typing import Any


def run_command(argv: list[str], data: str | None = None, pass_fds: tuple[int, ...] = ()) -> tuple[int, str, str]:
    """Run a command (podman, nft) without a shell: exit code, stdout, stderr.

    subprocess, not AnsibleModule.run_command: that one is not meant for threads (shared state,
    and fail_json on an OSError would only end the thread)."""
    proc = subprocess.run(argv, input=data, stdin=None if data is not None else subprocess.DEVNULL,
                          capture_output=True, encoding="utf-8", errors="replace", check=False, pass_fds=pass_fds)
    return proc.returncode, proc.stdout, proc.stderr


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
            # The operator's health check, when it has one (instances.health_labels).
            "health": {"path": labels["buddo.health_path"], "status": int(labels.get("buddo.health_status") or 0),
                       "timeout": float(labels.get("buddo.health_timeout") or 0)}
            if labels.get("buddo.health_path") else None,
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


def log_lines(out: str, err: str, secrets: list[str], tail: int) -> list[dict[str, str]]:
    """`podman logs --timestamps` output as lines (at, stream, text), oldest first, masked.

    podman writes the container's stderr to its own stderr: both are merged by timestamp.
    """
    from ansible_collections.buddo.deploy.plugins.module_utils.redact import redact

    merged = []
    for text, stream in ((out, "stdout"), (err, "stderr")):
        for raw in text.splitlines():
            at, _, line = raw.partition(" ")
            merged.append((at, stream, redact(line, secrets)))
    merged.sort(key=lambda line: line[0])
    return [{"at": at, "stream": stream, "text": text} for at, stream, text in merged[-tail:]]


def saved_output_path(output_dir: str, deployment_id: str) -> str:
    """Where the output of a container that never answered is kept once the container is gone."""
    return f"{output_dir.rstrip('/')}/{deployment_id}.json"

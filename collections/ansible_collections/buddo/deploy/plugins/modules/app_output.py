#!/usr/bin/python
"""What a deployment's container printed, read with one podman logs, env values masked."""

from __future__ import annotations

DOCUMENTATION = r"""
module: app_output
short_description: Read the output of a deployment's container
description:
  - Finds the containers labelled C(buddo.deployment_id=O(deployment_id)) of this
    platform (C(buddo.instance)) and reads the stdout and stderr of the one that serves
    (named O(name)), else of the newest one (a stopped or crashed app's last container).
  - Returns the last O(tail) lines of both streams together, oldest first, each with
    its timestamp and stream; every line has the values of O(env) masked.
  - Changes nothing.
options:
  deployment_id: {description: Deployment id (label buddo.deployment_id)., type: str, required: true}
  name: {description: Container name of the serving container., type: str, default: ""}
  instance: {description: Label buddo.instance of the platform's containers., type: str, default: buddo}
  tail: {description: Lines to return at most (of both streams together)., type: int, default: 100}
  since: {description: "Only lines after this RFC 3339 time (empty: all)." , type: str, default: ""}
  env: {description: Environment variables whose values are masked (never logged)., type: dict, default: {}}
  output_dir: {description: "Where app_instance keeps the output of a container that never answered (read when no
      container is left; empty: nowhere).", type: str, default: ""}
  podman: {description: Podman binary., type: str, default: podman}
"""

EXAMPLES = r"""
- name: Read the app's output
  buddo.deploy.app_output:
    deployment_id: 0b0f...
    name: my-app-abc123
    tail: 100
    env: {GREETING: hello}
  no_log: true
  register: output
"""

RETURN = r"""
lines: {description: "Oldest first: at (RFC 3339), stream (stdout or stderr), text (masked).", type: list,
    returned: always}
container: {description: "The container read (id, name, state, exit_code); empty when there is none.", type: dict,
    returned: always}
"""

import datetime
import json
import re
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.buddo.deploy.plugins.module_utils.podman import log_lines, saved_output_path
from ansible_collections.buddo.deploy.plugins.module_utils.redact import redact


def pick(containers: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The serving container (by name, running first), else the newest."""
    if not containers:
        return None
    named = [c for c in containers if name and name in (c.get("Names") or [])]
    ordered = sorted(named or containers, key=lambda c: (c.get("State") == "running", c.get("Created") or 0))
    return ordered[-1]


def saved(output_dir: str, deployment_id: str, tail: int, since: str) -> dict[str, Any] | None:
    """What app_instance kept of a container that never answered (it removed the container)."""
    try:
        with open(saved_output_path(output_dir, deployment_id), encoding="utf-8") as handle:
            kept = json.load(handle)
    except (OSError, ValueError):
        return None
    lines = kept.get("lines") or []
    if since:
        cutoff = _instant(since)
        lines = [line for line in lines if _instant(line["at"]) > cutoff]
    return {"lines": lines[-tail:], "container": kept.get("container") or {}}


def _instant(stamp: str) -> datetime.datetime:
    """RFC 3339 with up to nanoseconds (podman's) as an aware datetime (microseconds)."""
    stamp = re.sub(r"(\.\d{6})\d+", r"\1", stamp.replace("Z", "+00:00"))
    return datetime.datetime.fromisoformat(stamp)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "deployment_id": {"type": "str", "required": True},
            "name": {"type": "str", "default": ""},
            "instance": {"type": "str", "default": "buddo"},
            "tail": {"type": "int", "default": 100},
            "since": {"type": "str", "default": ""},
            "env": {"type": "dict", "default": {}, "no_log": True},
            "output_dir": {"type": "str", "default": ""},
            "podman": {"type": "str", "default": "podman"},
        },
        supports_check_mode=True,
    )
    p = module.params
    secrets = [str(v) for v in p["env"].values()]
    rc, out, err = module.run_command([
        p["podman"], "ps", "--all", "--format", "json", "--filter", f"label=buddo.deployment_id={p['deployment_id']}",
        "--filter", f"label=buddo.instance={p['instance']}"])
    if rc != 0:
        module.fail_json(msg=redact(f"podman ps failed: {err.strip()}", secrets))
    container = pick(json.loads(out or "[]"), p["name"])
    if container is None:
        kept = saved(p["output_dir"], p["deployment_id"], max(1, p["tail"]), p["since"]) if p["output_dir"] else None
        module.exit_json(changed=False, **(kept or {"lines": [], "container": {}}))
    args = [p["podman"], "logs", "--timestamps", "--tail", str(max(1, p["tail"]))]
    if p["since"]:
        args += ["--since", p["since"]]
    rc, out, err = module.run_command([*args, container["Id"]])
    if rc != 0 and not out:
        module.fail_json(msg=redact(f"podman logs failed: {err.strip()}", secrets))
    lines = log_lines(out, err, secrets, p["tail"])
    module.exit_json(changed=False, lines=lines, container={
        "id": container["Id"], "name": (container.get("Names") or [""])[0], "state": container.get("State", ""),
        "exit_code": container.get("ExitCode")})


if __name__ == "__main__":
    main()

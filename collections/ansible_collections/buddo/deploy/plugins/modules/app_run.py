#!/usr/bin/python
"""A one-off command in a new container of a deployment's current release, with its env,
limits, network and user namespace; its output (env values masked) and exit code."""

from __future__ import annotations

DOCUMENTATION = r"""
module: app_run
short_description: Run a one-off command in a new container of a deployment's release
description:
  - Creates a container from O(image) with the deployment's env, limits, network and user
    namespace, the command O(command) in place of the image's CMD, and no published port.
  - Waits up to O(timeout_s) for it to exit; one that overstays is stopped. Returns its
    exit code and the last O(max_lines) lines of its output, env values masked, then removes it.
  - Its labels (C(buddo.managed_by=buddo-run)) keep it apart from the deployment's own
    containers, so the converge and reconcile never see it. Run containers of this platform
    left by a run that died (their C(buddo.run_deadline) passed) are removed first.
options:
  run_id: {description: The run's id (label buddo.run_id)., type: str, required: true}
  deployment_id: {description: Deployment id (its network; label buddo.run_of)., type: str, required: true}
  name: {description: The container's name., type: str, required: true}
  image: {description: The release's image (by digest)., type: str, required: true}
  spec: {description: The deployment's spec hash (names its env secrets)., type: str, required: true}
  command: {description: "The command and its arguments (the task is no_log).", type: list, elements: str,
    required: true}
  timeout_s: {description: Seconds the command may run., type: int, required: true}
  max_lines: {description: Lines of output kept at most., type: int, default: 1000}
  memory_limit_mb: {description: Memory limit., type: int, required: true}
  cpu_limit_millicores: {description: CPU limit., type: int, required: true}
  pids_limit: {description: Process limit., type: int, required: true}
  log_max_size_mb: {description: Log cap., type: int, required: true}
  disk_limit_mb: {description: Writable layer cap (0 none)., type: int, default: 0}
  env: {description: Env of the deployment (values never logged)., type: dict, default: {}}
  registry_auth: {description: "The operator's login for the image's registry (secret).", type: dict, default: {}}
  host: {description: Inventory name of this host (label buddo.host of the network)., type: str, default: ""}
  instance: {description: Label buddo.instance of the platform's containers., type: str, default: buddo}
  userns: {description: A user namespace of its own (--userns=auto)., type: bool, default: true}
  init: {description: An init process as PID 1., type: bool, default: true}
  podman: {description: Podman binary., type: str, default: podman}
"""

EXAMPLES = r"""
- name: Run the migrations
  buddo.deploy.app_run:
    run_id: 5b0f...
    deployment_id: 0b0f...
    name: my-app-run-5b0f
    image: 127.0.0.1:5000/demo/hello@sha256:...
    spec: 3f2a...
    command: [sh, -c, ./migrate]
    timeout_s: 300
    memory_limit_mb: 256
    cpu_limit_millicores: 250
    pids_limit: 256
    log_max_size_mb: 10
  no_log: true
"""

RETURN = r"""
exit_code: {description: "The command's exit code (null: it never ran).", type: int, returned: always}
timed_out: {description: It ran longer than timeout_s and was stopped., type: bool, returned: always}
lines: {description: "Oldest first: at (RFC 3339), stream, text (masked).", type: list, returned: always}
error: {description: "Why the command did not run (the image, the host).", type: str, returned: always}
"""

import json
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.buddo.deploy.plugins.module_utils.container import run_arguments
from ansible_collections.buddo.deploy.plugins.module_utils.instances import (
    AppFailure,
    Deployment,
    HostFailure,
    Podman,
    cached_digests,
    env_arguments,
    limit_disk,
    pull,
    untag_digests,
)
from ansible_collections.buddo.deploy.plugins.module_utils.podman import deployment_network, log_lines

POLL_S = 0.2
# A run container whose run died with its worker is removed this long after its deadline.
GRACE_S = 60


def sweep(podman: Podman, instance: str) -> None:
    """Remove this platform's run containers whose deadline passed (their run died)."""
    _, out, _ = podman.run("ps", "--all", "--format", "json", "--filter", "label=buddo.managed_by=buddo-run",
                           "--filter", f"label=buddo.instance={instance}", check=False)
    now = time.time()
    stale = [c["Id"] for c in json.loads(out or "[]")
             if float((c.get("Labels") or {}).get("buddo.run_deadline") or 0) < now]
    if stale:
        podman.run("rm", "--force", "--time", "0", *stale, check=False)


def wait(podman: Podman, container_id: str, timeout_s: int) -> tuple[int | None, bool]:
    """(exit code, timed out): the container's end, or its stop at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        _, out, _ = podman.run("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", container_id)
        status, _, code = out.strip().partition(" ")
        if status in ("exited", "stopped"):
            return int(code or 0), False
        if time.monotonic() >= deadline:
            podman.run("stop", "--time", "2", container_id, check=False)
            return None, True
        time.sleep(POLL_S)


def run(d: Deployment) -> dict[str, Any]:
    p, podman = d.p, d.podman
    sweep(podman, p["instance"])
    # As a start of the app's own image: the registry is asked (with the operator's login) for
    # the cached version by its digests (a local digest the registry never knew, then one it knows).
    pull(podman, p["image"], "missing", p["registry_auth"], d.untag, cached_digests(podman, p["image"], "missing"))
    podman.ensure_network(p["deployment_id"], p["instance"], p["host"])
    labels = {"buddo.managed_by": "buddo-run", "buddo.instance": p["instance"], "buddo.run_id": p["run_id"],
              "buddo.run_of": p["deployment_id"],
              "buddo.run_deadline": str(int(time.time() + p["timeout_s"] + GRACE_S))}
    args = ["create", "--pull", "never", *run_arguments(
        name=p["name"], memory_limit_mb=p["memory_limit_mb"], cpu_limit_millicores=p["cpu_limit_millicores"],
        pids_limit=p["pids_limit"], log_max_size_mb=p["log_max_size_mb"], restart_policy="no", stop_timeout=2,
        network=deployment_network(p["deployment_id"]), publish="", userns=p["userns"], init=p["init"],
        labels=labels)]
    lines, secrets = env_arguments(d)
    args += secrets
    if lines:
        args += ["--env-file", "/dev/stdin"]  # from a pipe, as the app's own containers
    rc, out, err = podman.run(*args, p["image"], *p["command"], check=False, data="\n".join(lines) or None)
    if rc != 0:
        raise AppFailure(podman.mask(f"the run's container could not be created: {err.strip() or out.strip()}"))
    container_id = out.strip().splitlines()[-1]
    try:
        limit_disk(podman, container_id, p["disk_limit_mb"])
        rc, _, err = podman.run("start", container_id, check=False)
        if rc != 0:
            raise AppFailure(podman.mask(f"the command could not start: {err.strip()}"))
        exit_code, timed_out = wait(podman, container_id, p["timeout_s"])
        _, out, err = podman.run("logs", "--timestamps", "--tail", str(p["max_lines"]), container_id, check=False)
        return {"exit_code": exit_code, "timed_out": timed_out, "error": "",
                "lines": log_lines(out, err, podman.secrets, p["max_lines"])}
    finally:
        podman.run("rm", "--force", "--time", "0", container_id, check=False)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "run_id": {"type": "str", "required": True},
            "deployment_id": {"type": "str", "required": True},
            "name": {"type": "str", "required": True},
            "image": {"type": "str", "required": True},
            "spec": {"type": "str", "required": True},
            # Not no_log here: Ansible would mask its words ("sh") in all the run returns; the
            # task is no_log (run.yml), so no event shows the command.
            "command": {"type": "list", "elements": "str", "required": True},
            "timeout_s": {"type": "int", "required": True},
            "max_lines": {"type": "int", "default": 1000},
            "memory_limit_mb": {"type": "int", "required": True},
            "cpu_limit_millicores": {"type": "int", "required": True},
            "pids_limit": {"type": "int", "required": True},
            "log_max_size_mb": {"type": "int", "required": True},
            "disk_limit_mb": {"type": "int", "default": 0},
            "env": {"type": "dict", "default": {}, "no_log": True},
            "registry_auth": {"type": "dict", "default": {}, "no_log": True},
            "host": {"type": "str", "default": ""},
            "instance": {"type": "str", "default": "buddo"},
            "userns": {"type": "bool", "default": True},
            "init": {"type": "bool", "default": True},
            "podman": {"type": "str", "default": "podman"},
        },
        supports_check_mode=False,
    )
    p = dict(module.params)
    env = {str(k): str(v) for k, v in (p["env"] or {}).items()}
    auth = p["registry_auth"] or None
    masked = [*env.values(), *(str(login.get("auth", "")) for login in (auth or {}).values())]
    d = Deployment({**p, "env": env, "registry_auth": auth}, Podman(p["podman"], masked), False)
    try:
        result = run(d)
    except AppFailure as exc:
        result = {"exit_code": None, "timed_out": False, "lines": [], "error": str(exc)}
    except HostFailure as exc:
        module.fail_json(msg=str(exc))
    finally:
        untag_digests(d.podman, d.untag)
    module.exit_json(changed=True, **result)


if __name__ == "__main__":
    main()

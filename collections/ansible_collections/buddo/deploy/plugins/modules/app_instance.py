#!/usr/bin/python
"""The containers of many deployments of one host, converged in one module run."""

from __future__ import annotations

DOCUMENTATION = r"""
module: app_instance
short_description: Converge the Podman containers of many deployments in one run
description:
  - Converges every deployment of O(deployments) to O(state) in one module run, working on
    up to O(parallel) deployments at a time (their podman commands and HTTP waits overlap).
    Each deployment gets its own entry in RV(deployments) - a failure of one (bad image, an
    app that never answers, a podman error) is reported there and never fails the others
    nor the module run, which fails only on bad arguments or a host-wide problem (no podman).
  - Every container of a deployment carries the labels C(buddo.deployment_id) and
    C(buddo.spec) (a hash of image reference, port, limits, env and revision that the
    caller computes). This module finds them with one C(podman ps) per deployment.
  - O(state=started) makes sure a container with the deployment's spec runs and answers
    HTTP on its published port. When it must start a new one (spec changed, container
    missing, recreate), it starts it B(beside) the one that serves now, on whichever of the
    deployment's two host ports that one does not use, and waits for it. If the new
    container never answers it is removed and the deployment fails with
    C(failure_kind=app); the serving container was never touched. Switching traffic and
    retiring the old container are the caller's next steps (caddy_site, then
    O(state=retired)).
  - O(state=retired) removes every container of each deployment except its C(keep), renames
    C(keep) to C(name), tags the images of C(keep_images) (the newest releases) so they
    stay for rollbacks and drops the tags of older ones; then one C(podman image prune)
    for all of them removes dangling images no container uses.
  - O(state=stopped) stops every container of each deployment; O(state=absent) removes
    them, the deployment's network and the image reference when no other container uses it.
  - Tenants apart - every container of a deployment runs on the deployment's own Podman
    network (C(buddo-<deployment_id>), created here, netavark option C(isolate), so no route
    to any other isolated network), so it is reachable from outside only through its
    published port on O(host_address), i.e. through Caddy. It runs in a user namespace of its
    own (C(--userns=auto), O(userns)), so its root is an unprivileged host uid whose range no
    other container shares; with C(no-new-privileges), only the capabilities an ordinary image
    needs to drop privileges (CHOWN, DAC_OVERRIDE, FOWNER, SETUID, SETGID, KILL,
    NET_BIND_SERVICE), a private IPC namespace, a pids limit, a capped log file, and a disk
    quota on its writable layer (C(disk_limit_mb), a btrfs qgroup of the storage pool that
    role container_host sets up; image VOLUMEs stay in that layer).
  - Every start of an image from a registry asks the registry with the operator's own login
    (O(registry_auth), from an auth file that exists only in memory), or anonymously; a
    cached image is pulled again by its digest, so it is never a way around the registry.
  - Env values (O(env), never logged) never reach a command line nor a file; one-line values
    are read from a pipe as an env file, others become podman secrets of type env. Every
    message is returned with env values and passwords masked.
options:
  state: {description: Desired state of every deployment., type: str, default: started,
      choices: [started, stopped, absent, retired]}
  deployments:
    description: The deployments to converge, each with its own options.
    type: list
    elements: dict
    required: true
    suboptions:
      deployment_id: {description: Deployment id (label buddo.deployment_id)., type: str, required: true}
      name: {description: Container name of the serving container., type: str, required: true}
      image: {description: "Image reference (required by O(state=started)).", type: str, default: ""}
      spec: {description: "Hash of everything that makes a container; a different one means a new container (required
          by O(state=started)).", type: str, default: ""}
      port: {description: Container port., type: int, default: 3000}
      host_ports: {description: "The deployment's two host ports (required by O(state=started)).", type: list,
          elements: int, default: []}
      serving_port: {description: Host port Caddy routes to now (its container is never touched by started)., type: int}
      memory_limit_mb: {description: Memory limit in MB., type: int, default: 256}
      cpu_limit_millicores: {description: CPU limit in millicores., type: int, default: 250}
      pids_limit: {description: Most processes (and threads) the container may run., type: int, default: 256}
      log_max_size_mb: {description: Size in MB at which the container's log file is truncated., type: int, default: 10}
      labels: {description: Extra labels., type: dict, default: {}}
      pull: {description: "C(always) pulls the reference as it is now; C(missing) keeps the version that is cached
          (pulled again by its digest, so the registry still answers) and pulls the reference only when absent.",
          type: str, default: missing, choices: [always, missing]}
      disk_limit_mb: {description: "Most MB the container may write (its writable layer); 0 - no limit.", type: int,
          default: 0}
      recreate: {description: "Start a new container even when one with the spec runs (wrong limits, unhealthy).",
          type: bool, default: false}
      keep: {description: "Container id to keep (required by O(state=retired)).", type: str, default: ""}
      keep_images: {description: "On retired, images (repository@digest, newest release first) to keep on the host; on
          absent every kept image is dropped.", type: list, elements: str, default: []}
  keep_count: {description: "How many of each deployment's keep_images to keep (the newest releases).", type: int,
      default: 3}
extends_documentation_fragment: [buddo.deploy.containers]
"""

EXAMPLES = r"""
- name: Run the apps
  buddo.deploy.app_instance:
    state: started
    deployments:
      - deployment_id: 0b0f...
        name: my-app-abc123
        image: 127.0.0.1:5000/demo/hello:latest
        spec: 6f1c...
        host_ports: [20000, 20001]
      - deployment_id: 5e2a...
        name: blog-def456
        image: 127.0.0.1:5000/demo/blog:v2
        spec: 91d0...
        host_ports: [20002, 20003]
        serving_port: 20002
    env: {"0b0f...": {GREETING: hello}}
  no_log: true
  register: apps
"""

RETURN = r"""
msg: {description: "How many deployments failed, and why (the module run does not fail for them).", type: str,
    returned: always}
deployments:
  description: One entry per deployment of O(deployments), in that order.
  type: list
  elements: dict
  returned: always
  contains:
    deployment_id: {description: The deployment this entry belongs to., type: str}
    changed: {description: Whether anything of this deployment changed., type: bool}
    failed: {description: Whether this deployment failed (the others are not affected)., type: bool}
    msg: {description: "Why it failed (env values masked).", type: str, returned: failure}
    failure_kind: {description: "C(app) when the app itself failed (bad image, never answered); C(host) for a podman
        error.", type: str, returned: failure}
    container: {description: "The container that runs the spec (id, name, host_port, image_digest).", type: dict,
        returned: "state=started or retired, success"}
    others: {description: Ids of the deployment's other containers (to retire once traffic moved)., type: list,
        returned: "state=started, success"}
    actions: {description: What was done., type: list}
"""

import shutil

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.buddo.deploy.plugins.module_utils.instances import (
    SHARED_OPTIONS,
    converge_all,
    summary,
    validate,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "default": "started", "choices": ["started", "stopped", "absent", "retired"]},
            "deployments": {"type": "list", "elements": "dict", "required": True},
            # Keyed by deployment id and kept out of the items: declared no_log here, Ansible
            # masks every value of it in whatever the module returns, even on bad arguments.
            "env": {"type": "dict", "default": {}, "no_log": True},
            # Deployment id -> {registry host: {auth: base64 user:password}}: the operator's login
            # for the registry of that deployment's image (secret, like env; Ansible masks the
            # values of a no_log option, so the host is a key and stays readable).
            "registry_auth": {"type": "dict", "default": {}, "no_log": True},
            "parallel": {"type": "int", "default": 4},
            "podman": {"type": "str", "default": "podman"},
            **SHARED_OPTIONS,
        },
        supports_check_mode=True,
    )
    params = module.params
    state: str = params["state"]
    items, errors = validate(params["deployments"], state, params["env"])
    if params["parallel"] < 1:
        errors.append(f"parallel must be at least 1, not {params['parallel']}")
    if errors:
        module.fail_json(msg="; ".join(errors), errors=errors)
    binary = shutil.which(params["podman"])
    if binary is None:  # nothing can converge on this host
        module.fail_json(msg=f"{params['podman']} not found on this host", failure_kind="host")
    entries = converge_all(state, items, {k: params[k] for k in SHARED_OPTIONS}, params["env"],
                           params["registry_auth"], params["parallel"], binary, module.check_mode)
    module.exit_json(changed=any(e["changed"] for e in entries), deployments=entries, msg=summary(state, entries))


if __name__ == "__main__":
    main()

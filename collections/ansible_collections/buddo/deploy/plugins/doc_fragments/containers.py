"""The options buddo.deploy.converge and buddo.deploy.app_instance share (module_utils/instances.SHARED_OPTIONS,
plus the secrets, the parallelism and the podman binary), documented once."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  env: {description: "Deployment id -> its environment variables (secret - never logged, masked in every message).",
      type: dict, default: {}}
  registry_auth:
    description:
      - "Deployment id -> C({<registry host>: {auth: <base64 of user:password>}}), the operator's login for its
        image's registry, as in a containers-auth.json (secret; the host is a key, so it is not masked)."
    type: dict
    default: {}
  parallel: {description: How many deployments are worked on at the same time., type: int, default: 4}
  userns: {description: "Run each container in a user namespace of its own (C(--userns=auto:size=65536)).", type: bool,
      default: true}
  host_address: {description: Address ports are published on., type: str, default: 127.0.0.1}
  instance: {description: "Label buddo.instance: the platform the containers and sites belong to (only its own are
      observed).", type: str, default: buddo}
  init: {description: Run an init as PID 1., type: bool, default: true}
  restart_policy: {description: "Podman restart policy. C(no): the platform's health probe restarts a container
      that exited (podman 4.3 leaks a user-namespaced container's network namespace at each restart of its own).",
      type: str, default: "no"}
  stop_timeout: {description: Seconds to wait for a graceful stop., type: int, default: 10}
  wait_timeout: {description: Seconds a new container has to answer., type: float, default: 60}
  wait_path: {description: Path requested to see whether the app answers., type: str, default: /}
  remove_image: {description: "On absent, remove the image reference when unused.", type: bool, default: true}
  prune_images: {description: "After a replacement (retired), remove dangling images no container uses (once, after
      every deployment).", type: bool, default: true}
  output_dir: {description: "Where the output of a container that never answered is kept (0600) before it is removed;
      empty: nowhere.", type: str, default: ""}
  podman: {description: Podman binary., type: str, default: podman}
"""

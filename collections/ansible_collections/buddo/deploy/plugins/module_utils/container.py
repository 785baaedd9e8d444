"""What a container is: the run arguments of a spec, what ``podman inspect`` says of one, and
the drift between the two.

One place for each: app_instance creates a deployment's container with :func:`run_arguments`,
host_state reads every container with :func:`observed`, and the converge plan compares what
runs with the desired item with :func:`drift` (a container that differs is replaced beside
the serving one). The desired item itself is module_utils/desired.py.
"""

from __future__ import annotations

import re
from typing import Any

# Host ids per container (--userns=auto): each container's range is its own, taken from the
# subordinate ids of the host's `containers` user (role container_host).
USERNS_SIZE = 65536
# Capabilities an app keeps: what an ordinary image's entrypoint uses to set itself up and
# drop privileges (chown its files, switch user, signal its workers, bind a port below 1024).
KEPT_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID", "KILL", "NET_BIND_SERVICE")
HARDENING = (
    "--security-opt", "no-new-privileges",
    "--cap-drop", "all", *(arg for cap in KEPT_CAPABILITIES for arg in ("--cap-add", cap)),
    # IPC namespace of its own, and a /dev/shm that runc mounts inside the container: with a
    # user namespace, podman's shared shm mount made `podman rm` fail now and then (EBUSY).
    "--ipc", "none", "--tmpfs", "/dev/shm:rw,nosuid,nodev,noexec,size=64m",  # noqa: S108 (a mount, not a temp file)
    # An image's VOLUMEs are plain directories of the writable layer: under the disk quota,
    # and gone with the container.
    "--image-volume", "ignore",
)

_SIZE = re.compile(r"^([0-9.]+)\s*([kMGT]?)B$")
_DECIMAL = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def run_arguments(*, name: str, memory_limit_mb: int, cpu_limit_millicores: int, pids_limit: int, log_max_size_mb: int,
                  restart_policy: str, stop_timeout: int, network: str, publish: str, userns: bool, init: bool,
                  labels: dict[str, str]) -> list[str]:
    """``podman create`` options of a deployment's container, or of a one-off run's (``publish``
    empty); the image and env are the caller's."""
    args = ["--name", name, "--memory", f"{memory_limit_mb}m", "--cpus", f"{cpu_limit_millicores / 1000:g}",
            "--restart", restart_policy, "--stop-timeout", str(stop_timeout), "--pids-limit", str(pids_limit),
            # k8s-file whatever the host's default: conmon truncates it at max-size (journald would not).
            "--log-driver", "k8s-file", "--log-opt", f"max-size={log_max_size_mb}m",
            *HARDENING, "--network", network]
    if publish:  # a one-off run publishes nothing
        args += ["--publish", publish]
    if userns:
        args += ["--userns", f"auto:size={USERNS_SIZE}"]
    if init:
        args.append("--init")
    for key, value in sorted(labels.items()):
        args += ["--label", f"{key}={value}"]
    return args


def log_size_mb(size: str) -> int:
    match = _SIZE.match(size.strip())
    return round(float(match.group(1)) * _DECIMAL[match.group(2)] / 10**6) if match else 0


def observed(info: dict[str, Any]) -> dict[str, Any]:
    """The limits and isolation of one container, from its ``podman inspect``."""
    host = info.get("HostConfig") or {}
    return {
        "memory_limit_mb": int(host.get("Memory") or 0) // (1024 * 1024),
        "cpu_limit_millicores": int(host.get("NanoCpus") or 0) // 1_000_000,
        "pids_limit": int(host.get("PidsLimit") or 0),
        "log_max_size_mb": log_size_mb(str((host.get("LogConfig") or {}).get("Size") or "")),
        "networks": sorted((info.get("NetworkSettings") or {}).get("Networks") or {}),
        "no_new_privileges": "no-new-privileges" in (host.get("SecurityOpt") or []),
        "restart_policy": restart_name(str((host.get("RestartPolicy") or {}).get("Name") or "")),
    }


def restart_name(policy: str) -> str:
    """A restart policy's name as podman inspect reports it ("" and "no" alike; on-failure:3 -> on-failure)."""
    return policy.partition(":")[0] or "no"


def drift(container: dict[str, Any], item: dict[str, Any], network: str, *, limits: bool = True,
          restart_policy: str = "no") -> list[str]:
    """How an observed container differs from the desired item (what is not known is not compared).

    ``limits``: compare memory and CPU too (the serving container's; a stopped one is
    started again as it is unless its isolation or per-tier caps changed)."""
    found: list[str] = []
    memory, cpu = container.get("memory_limit_mb"), container.get("cpu_limit_millicores")
    if limits and memory is not None and (memory != item["memory_limit_mb"] or cpu != item["cpu_limit_millicores"]):
        found.append(f"limits differ ({memory} MB/{cpu} m, want {item['memory_limit_mb']} MB/"
                     f"{item['cpu_limit_millicores']} m)")
    settings: list[str] = []
    pids, log = container.get("pids_limit"), container.get("log_max_size_mb")
    if pids is not None and pids != item["pids_limit"]:
        settings.append(f"pids limit {pids}, want {item['pids_limit']}")
    if log is not None and log != item["log_max_size_mb"]:
        settings.append(f"log cap {log} MB, want {item['log_max_size_mb']} MB")
    if container.get("networks") is not None and container["networks"] != [network]:
        settings.append(f"network {','.join(container['networks']) or 'none'}, want {network}")
    if container.get("no_new_privileges") is False:
        settings.append("no-new-privileges unset")
    restart = container.get("restart_policy")
    if restart is not None and restart != restart_name(restart_policy):
        settings.append(f"restart policy {restart}, want {restart_name(restart_policy)}")
    if settings:
        found.append(f"settings differ ({'; '.join(settings)})")
    return found

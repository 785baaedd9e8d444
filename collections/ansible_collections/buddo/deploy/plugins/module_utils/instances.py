"""The containers of many deployments of one host: start beside the serving one, retire, stop, remove.

One deployment's failure is its own entry (:func:`converge_all`), never its neighbours'. Used by
the modules converge (every deployment of a host) and app_instance (the bootstrap smoke test).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.errors import UnsupportedError
from ansible_collections.buddo.deploy.plugins.module_utils import desired
from ansible_collections.buddo.deploy.plugins.module_utils.container import run_arguments
from ansible_collections.buddo.deploy.plugins.module_utils.http import http_get
from ansible_collections.buddo.deploy.plugins.module_utils.observe import of_deployments
from ansible_collections.buddo.deploy.plugins.module_utils.podman import (
    deployment_network,
    log_lines,
    parse_ps,
    run_command,
    saved_output_path,
)
from ansible_collections.buddo.deploy.plugins.module_utils.redact import redact

# The most lines kept of a container that never answered (the API's tail bound).
KEPT_OUTPUT_LINES = 5000
# A registry's answer that no other reference of the image would change.
DENIED = re.compile(r"\b(unauthorized|denied|authentication required|forbidden|401|403)\b", re.IGNORECASE)

# One deployment's options, validated item by item so that an error names its item.
DEPLOYMENT_OPTIONS: dict[str, dict[str, Any]] = {
    "deployment_id": {"type": "str", "required": True},
    "name": {"type": "str", "required": True},
    "image": {"type": "str", "default": ""},
    "spec": {"type": "str", "default": ""},
    "port": {"type": "int", "default": 3000},
    "host_ports": {"type": "list", "elements": "int", "default": []},
    "serving_port": {"type": "int"},
    "memory_limit_mb": {"type": "int", "default": 256},
    "cpu_limit_millicores": {"type": "int", "default": 250},
    "pids_limit": {"type": "int", "default": 256},
    "log_max_size_mb": {"type": "int", "default": 10},
    "labels": {"type": "dict", "default": {}},
    "pull": {"type": "str", "default": "missing", "choices": ["always", "missing"]},
    "disk_limit_mb": {"type": "int", "default": 0},
    "recreate": {"type": "bool", "default": False},
    "keep": {"type": "str", "default": ""},
    "keep_images": {"type": "list", "elements": "str", "default": []},
    # The operator's health check: zeros and "" are the shared wait_path and wait_timeout.
    **desired.HEALTH_OPTIONS,
}
# What a state needs of each deployment beyond its id and name.
REQUIRED_BY_STATE = {"started": ("image", "spec", "host_ports"), "retired": ("keep",)}


class AppFailure(Exception):
    """The app's own fault: retrying the same spec cannot help."""


class HostFailure(Exception):
    """Podman failed on this host (for one deployment: the others go on)."""


class Podman:
    """Podman commands of one deployment, with its env values masked in every message."""

    def __init__(self, binary: str, secrets: list[str]) -> None:
        self.binary = binary
        self.secrets = secrets

    def mask(self, text: str) -> str:
        """Podman's own output may echo env values (Ansible masks them in results too)."""
        return redact(text, self.secrets)

    def run(self, *args: str, check: bool = True, data: str | None = None,
            pass_fds: tuple[int, ...] = ()) -> tuple[int, str, str]:
        rc, out, err = run_command([self.binary, *args], data, pass_fds)
        if check and rc != 0:
            raise HostFailure(self.mask(f"podman {args[0]} failed: {err.strip() or out.strip()}"))
        return rc, out, err

    def containers(self, deployment_id: str) -> list[dict[str, Any]]:
        _, out, _ = self.run("ps", "--all", "--format", "json",
                             "--filter", f"label=buddo.deployment_id={deployment_id}")
        return parse_ps(out)

    def ensure_network(self, deployment_id: str, instance: str, host: str, known: bool | None = None) -> bool:
        """The deployment's own isolated network; True when it had to be created. ``known``: whether
        it exists, as the caller observed it (None: ask podman)."""
        if known or (known is None and self.has_network(deployment_id)):
            return False
        # buddo.host as on the containers: hosts sharing one Podman prune only their own.
        owner = ["--label", f"buddo.host={host}"] if host else []
        # No DNS: nothing on the network has a name to find, and no aardvark-dns listens on it.
        self.run("network", "create", "--disable-dns", "--opt", "isolate=true",
                 "--label", "buddo.managed_by=buddo-deploy", "--label", f"buddo.instance={instance}",
                 "--label", f"buddo.deployment_id={deployment_id}", *owner, deployment_network(deployment_id))
        return True

    def has_network(self, deployment_id: str) -> bool:
        return self.run("network", "exists", deployment_network(deployment_id), check=False)[0] == 0

    def digest(self, container_id: str) -> str:
        return self.digests([container_id]).get(container_id, "")

    def digests(self, container_ids: list[str]) -> dict[str, str]:
        """Container id -> the digest of the image it runs, in one podman run."""
        if not container_ids:
            return {}
        _, out, _ = self.run("inspect", "--format", "{{.ID}} {{.ImageDigest}}", *container_ids, check=False)
        pairs = (line.split() for line in out.splitlines())
        return {pair[0]: pair[1] for pair in pairs if len(pair) == 2}


@dataclass
class Deployment:
    """One deployment's work: its options (the shared ones merged in), its podman, what was done."""

    p: dict[str, Any]
    podman: Podman
    check_mode: bool
    actions: list[str] = field(default_factory=list)
    prune: bool = False  # retired: it left images for the prune after every deployment
    untag: list[str] = field(default_factory=list)  # digest names its pulls added (untag_digests)


def untag_digests(podman: Podman, refs: Iterable[str]) -> None:
    """Drop the digest names the run's pulls added, each once, after every container was made.

    ``image rm`` of a digest name untags it while the image has another name; of a digest the
    image no longer carries as a name, it removes the image itself. Two deployments of one
    image untagging at once (each after its own pull) would do that to each other; once for
    the run, with the run's containers made, it only untags (an image in use is never removed)."""
    for ref in sorted(set(refs)):
        podman.run("image", "rm", ref, check=False)


def gate(p: dict[str, Any], port: int) -> tuple[str, float, int, float]:
    """What a new container must do before it takes traffic: (url, within seconds, healthy status
    (desired.healthy), seconds per try), from the item's health check or the shared defaults."""
    url = f"http://{p['host_address']}:{port}{p['health_path'] or p['wait_path']}"
    return url, float(p["health_grace_s"] or p["wait_timeout"]), p["health_status"], float(p["health_timeout_s"] or 2)


def health_labels(p: dict[str, Any]) -> dict[str, str]:
    """How the prober probes the container (observe.probes): only an operator's own health check."""
    if not (p["health_path"] or p["health_status"] or p["health_timeout_s"]):
        return {}
    return {"buddo.health_path": p["health_path"] or p["wait_path"], "buddo.health_status": str(p["health_status"]),
            "buddo.health_timeout": str(p["health_timeout_s"] or 0)}


def wait_until_answers(podman: Podman, container_id: str, url: str, wait_timeout: float, expected: int = 0,
                       try_timeout: float = 2.0) -> None:
    deadline = time.monotonic() + wait_timeout
    checks = 0
    last = 0
    while time.monotonic() < deadline:
        # Each try has its own deadline within the wait's: an app that answers a byte a second,
        # or never ends its headers, fails its own wait on time, never its batch-mates'.
        last = http_get(url, max(0.05, min(try_timeout, deadline - time.monotonic())))[0]
        if desired.healthy(last, expected):  # by default any HTTP answer: up
            return
        checks += 1
        if checks % 20 == 0:  # an app that died will never answer: say so early
            _, out, _ = podman.run("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", container_id,
                                   check=False)
            status, _, code = out.strip().partition(" ")
            if status in {"exited", "stopped"}:
                raise AppFailure(f"the container exited (exit code {code}) before it answered on {url}")
        time.sleep(0.02 if checks < 50 else 0.05)  # most apps answer within a second of their start
    if last > 0:
        wanted = "a status below 500" if expected == desired.BELOW_500 else f"HTTP {expected}"
        raise AppFailure(f"app answered HTTP {last} on {url}, not {wanted}, within {wait_timeout:g} s "
                         "(its health check)")
    raise AppFailure(f"app did not answer on {url} within {wait_timeout:g} s")


def registry_of(image: str) -> str:
    """The registry host of an image reference; "" for a local one (localhost/...)."""
    first, sep, _ = image.partition("/")
    if not sep or first == "localhost" or not ("." in first or ":" in first):
        return ""
    return first.lower()


def repository_of(image: str) -> str:
    """registry/path of a reference, without its tag or digest."""
    name = image.partition("@")[0]
    last = name.rpartition("/")[2]
    return name[:len(name) - len(last) + last.index(":")] if ":" in last else name


@contextmanager
def authfile(auths: dict[str, Any] | None) -> Iterator[int]:
    """An auth file that exists only in memory (memfd), read by podman as its /proc/self/fd path.

    Holds the operator's login for the image's registry, or nothing: podman then pulls
    anonymously and never falls back to the host's credentials."""
    fd = os.memfd_create("buddo-auth", os.MFD_CLOEXEC)
    try:
        os.write(fd, json.dumps({"auths": auths or {}}).encode())
        yield fd
    finally:
        os.close(fd)


def cached_digests(podman: Podman, image: str, policy: str,
                   known: dict[str, list[str] | None] | None = None) -> list[str] | None:
    """With ``missing``, whether a registry's image is cached here: its digests in its repository
    (one podman call), or None when it is not (or ``always``, or a local image).

    ``known``: what the run found of each image so far (one call per image however many
    deployments of the run use it; what a pull adds later does not matter, each pull asks)."""
    if policy != "missing" or not registry_of(image):
        return None
    if known is not None and image in known:
        return known[image]
    rc, out, _ = podman.run("image", "inspect", "--format", "{{json .RepoDigests}}", image, check=False)
    repository = repository_of(image)
    found = None if rc != 0 else [
        ref for ref in json.loads(out.strip() or "[]") or [] if ref.partition("@")[0] == repository]
    if known is not None:
        known[image] = found
    return found


def pull(podman: Podman, image: str, policy: str, auth: dict[str, Any] | None, untag: list[str],
         digests: list[str] | None = None) -> bool:
    """Every start of a registry's image asks that registry, with the operator's own login.

    A cached image is never a way around it: ``missing`` (keep the version that is here)
    pulls the cached image by its digest (``digests``: :func:`cached_digests`), which the
    registry answers like any pull; a tag moved since is not taken. ``always``, or an image
    not cached, pulls the reference as it is now. True when an image came from the registry.

    A digest pull names the image by that digest too: the name goes in ``untag``, removed
    once for the whole run after every container was made (:func:`untag_digests`)."""
    if not registry_of(image):
        return False  # a local image (the smoke test's): no registry to ask
    refs = [image]
    cached = policy == "missing" and digests is not None
    if cached and digests is not None:
        # A digest is asked for as it is first (an image built here and pushed has a local digest
        # the registry does not know: then one it knows); a tag only after its digests.
        refs = list(dict.fromkeys([image, *digests[:2]] if "@" in image else [*digests[:2], image]))
    with authfile(auth) as fd:
        errors = []
        for ref in refs:
            rc, _, err = podman.run("pull", "--quiet", "--authfile", f"/proc/self/fd/{fd}", ref, check=False,
                                    pass_fds=(fd,))
            if rc == 0:
                if ref != image:  # the pull named the image by this digest too: only the tag is to name it
                    untag.append(ref)
                return ref == image or not cached
            reasons = [line.removeprefix("Error: ") for line in err.splitlines() if line.startswith("Error")]
            errors.append(" ".join(reasons) or err.strip() or "unknown error")
            if DENIED.search(errors[-1]):
                break  # the registry refused this login: no other reference will do
    raise AppFailure(podman.mask(f"image {image} could not be pulled: {errors[-1]}"))


def create(d: Deployment, name: str, port: int) -> str:
    """``podman create`` of the deployment's new container (env from a pipe); its id."""
    p, podman = d.p, d.podman
    labels = {**p["labels"], **health_labels(p), "buddo.deployment_id": p["deployment_id"], "buddo.spec": p["spec"],
              "buddo.managed_by": "buddo-deploy", "buddo.instance": p["instance"]}
    args = ["create", "--pull", "never", *run_arguments(
        name=name, memory_limit_mb=p["memory_limit_mb"], cpu_limit_millicores=p["cpu_limit_millicores"],
        pids_limit=p["pids_limit"], log_max_size_mb=p["log_max_size_mb"], restart_policy=p["restart_policy"],
        stop_timeout=p["stop_timeout"], network=deployment_network(p["deployment_id"]),
        publish=f"{p['host_address']}:{port}:{p['port']}", userns=p["userns"], init=p["init"], labels=labels)]
    lines, secrets = env_arguments(d)
    args += secrets
    if lines:
        # From a pipe: the values never touch a file, nor podman's command line.
        args += ["--env-file", "/dev/stdin"]
    rc, out, err = podman.run(*args, p["image"], check=False, data="\n".join(lines) or None)
    if rc != 0 and "image not known" in err:
        # Another deployment's destroy (a run of this host that overlaps this one) dropped the
        # image reference, which no container used yet: ask the registry for it again, once.
        pull(podman, p["image"], "always", p["registry_auth"], d.untag)
        d.actions.append(f"pulled {p['image']} again: it was removed meanwhile")
        rc, out, err = podman.run(*args, p["image"], check=False, data="\n".join(lines) or None)
    if rc != 0:
        raise AppFailure(podman.mask(f"container {name} could not be created from {p['image']}: "
                                     f"{err.strip() or out.strip()}"))
    return out.strip().splitlines()[-1]


def start_new(d: Deployment, existing: list[dict[str, Any]]) -> dict[str, Any]:
    p, podman, actions = d.p, d.podman, d.actions
    serving = p["serving_port"]
    ports = list(p["host_ports"]) or [0]
    busy = {c["host_port"] for c in existing}
    # A port the serving container does not hold; a free one if there is one.
    candidates = [port for port in ports if port != serving] or ports
    port = next((c for c in candidates if c not in busy), candidates[0])
    names = [p["name"], f"{p['name']}-next"]
    holders = {c["name"]: c for c in existing}
    name = next((n for n in names if n not in holders), None) or next(
        n for n in names if holders[n]["host_port"] != serving)
    stale = [c["id"] for c in existing if c["host_port"] == port or c["name"] == name]
    if stale:
        podman.run("rm", "--force", "--volumes", "--time", str(p["stop_timeout"]), *stale)
        actions.append(f"removed {len(stale)} container(s) in the way of the new one")
    # The registry's answer, a first deploy's network and (when the image is cached) the
    # container's creation do not wait for each other; nothing starts before the registry said
    # yes, and nothing of a deploy it refused stays (container, network).
    network = deployment_network(p["deployment_id"])
    container_id = ""
    with ThreadPoolExecutor(max_workers=2) as both:
        made = both.submit(podman.ensure_network, p["deployment_id"], p["instance"],
                           p["labels"].get("buddo.host", ""), p["_network"])
        digests = cached_digests(podman, p["image"], p["pull"], p["_images"])  # beside the network
        asked = both.submit(pull, podman, p["image"], p["pull"], p["registry_auth"], d.untag, digests)
        try:
            if digests is None and registry_of(p["image"]):
                asked.result()  # nothing here to create it from before the registry answered
            made.result()
            container_id = create(d, name, port)
            pulled = asked.result()
            if pulled and digests is not None and "@" not in p["image"]:
                # The registry no longer has the cached version and said yes to the tag as it is
                # now, which the container made beside its answer may not run: made again from it.
                podman.run("rm", "--force", "--volumes", "--time", "0", container_id, check=False)
                container_id = ""
                container_id = create(d, name, port)
        except (AppFailure, HostFailure):
            for future in (made, asked):
                with suppress(AppFailure, HostFailure):
                    future.result()
            with suppress(HostFailure):
                if container_id:
                    podman.run("rm", "--force", "--volumes", "--time", "0", container_id, check=False)
                if made.done() and not made.exception() and made.result():
                    podman.run("network", "rm", network, check=False)
            raise
    if pulled:
        actions.append(f"pulled {p['image']}")
    if made.result():
        actions.append(f"created network {network}")
    try:
        limit_disk(podman, container_id, p["disk_limit_mb"])
        rc, out, err = podman.run("start", container_id, check=False)
        if rc != 0:
            raise AppFailure(podman.mask(f"container {name} could not be started from {p['image']}: "
                                         f"{err.strip() or out.strip()}"))
    except (AppFailure, HostFailure):
        podman.run("rm", "--force", "--volumes", "--time", "0", container_id, check=False)
        raise
    actions.append(f"started container {name} on port {port}")
    try:
        wait_until_answers(podman, container_id, *gate(p, port))
    except AppFailure:
        keep_output(d, container_id, name)
        podman.run("rm", "--force", "--volumes", "--time", "2", container_id, check=False)
        raise
    return {"id": container_id, "name": name, "host_port": port}


def secret_prefix(deployment_id: str) -> str:
    # Podman allows 64 characters: b + the id's 32 hex digits + - + 12 of the spec + - + 12 of the key's hash.
    return f"b{deployment_id.replace('-', '')[:32]}-"


def env_arguments(d: Deployment) -> tuple[list[str], list[str]]:
    """The env of a new container: one-line values as env-file lines (read from a pipe), and
    the others as podman secrets of type env (an env file holds one line per variable; a
    value must never go on a command line). A secret is named after the deployment and its
    spec, which covers the values: containers of one spec share it."""
    p, podman = d.p, d.podman
    lines, args = [], []
    for key, value in p["env"].items():
        if "\n" not in value and "\r" not in value:
            lines.append(f"{key}={value}")
            continue
        name = f"{secret_prefix(p['deployment_id'])}{p['spec'][:12]}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
        if podman.run("secret", "inspect", name, check=False)[0] != 0:
            podman.run("secret", "create", name, "-", data=value)
        args += ["--secret", f"{name},type=env,target={key}"]
    return lines, args


def drop_secrets(d: Deployment, keep_spec: str = "") -> None:
    """Remove the deployment's env secrets but those of ``keep_spec``."""
    prefix = secret_prefix(d.p["deployment_id"])
    kept = f"{prefix}{keep_spec[:12]}-" if keep_spec else None
    names = [n for n in d.p["_secret_names"] if n.startswith(prefix) and not (kept and n.startswith(kept))]
    if names:
        d.podman.run("secret", "rm", *names, check=False)
        d.actions.append(f"removed {len(names)} env secret(s)")


STORAGE_CONF = "/etc/containers/storage.conf"


def btrfs_subvolume(container_id: str, conf: str = "") -> str:
    """The btrfs subvolume of a container's writable layer, read from the storage's own records
    (storage.conf's graphroot, then ``btrfs-containers/containers.json``, which containers/storage
    replaces whole on each change): no ``podman mount``, which costs two podman runs. "" when
    they do not say (another driver or layout): the caller then asks podman."""
    try:
        import tomllib

        with open(conf or os.environ.get("CONTAINERS_STORAGE_CONF") or STORAGE_CONF, "rb") as handle:
            storage = tomllib.load(handle).get("storage") or {}
        if storage.get("driver") != "btrfs" or not storage.get("graphroot"):
            return ""
        root = str(storage["graphroot"])
        with open(os.path.join(root, "btrfs-containers", "containers.json"), encoding="utf-8") as handle:
            layer = next((str(c.get("layer") or "") for c in json.load(handle) if c.get("id") == container_id), "")
    except (ImportError, OSError, ValueError, AttributeError, TypeError):
        return ""
    path = os.path.join(root, "btrfs", "subvolumes", layer)
    return path if layer and os.path.isdir(path) else ""


def limit_disk(podman: Podman, container_id: str, limit_mb: int) -> None:
    """Cap what the container may write (its writable layer, a btrfs subvolume of the storage
    pool) at ``limit_mb``: writes beyond it fail inside the container (EDQUOT)."""
    if limit_mb <= 0:
        return
    path, mounted = btrfs_subvolume(container_id), False
    if not path:
        _, path, _ = podman.run("mount", container_id)
        path, mounted = path.strip(), True
    try:
        rc, out, err = run_command(["btrfs", "qgroup", "limit", "-e", f"{limit_mb}M", path])
    except OSError as exc:
        raise HostFailure(f"disk limit: btrfs cannot run ({exc}); run the bootstrap playbook") from exc
    finally:
        if mounted:
            podman.run("umount", container_id, check=False)
    if rc != 0:
        raise HostFailure("disk limit: podman's storage is not on the btrfs pool (run the bootstrap playbook): "
                          + (err.strip() or out.strip()))


def keep_output(d: Deployment, container_id: str, name: str) -> None:
    """Keep what a container that never answered printed (masked, 0600): its removal must not
    take the reason with it (app_output reads this when the deployment has no container left)."""
    p, podman = d.p, d.podman
    if not p["output_dir"]:
        return
    rc, out, _ = podman.run("inspect", "--format", "json", container_id, check=False)
    state = (json.loads(out or "[{}]") or [{}])[0].get("State", {}) if rc == 0 else {}
    _, out, err = podman.run("logs", "--timestamps", "--tail", str(KEPT_OUTPUT_LINES), container_id, check=False)
    kept = {"lines": log_lines(out, err, podman.secrets, KEPT_OUTPUT_LINES),
            "container": {"id": container_id, "name": name, "state": "removed",
                          "exit_code": state.get("ExitCode")}}
    os.makedirs(p["output_dir"], mode=0o700, exist_ok=True)
    path = saved_output_path(p["output_dir"], p["deployment_id"])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(kept, handle)


def started(d: Deployment) -> dict[str, Any]:
    p, podman = d.p, d.podman
    existing = p["_containers"] if p["_containers"] is not None else podman.containers(p["deployment_id"])
    same = sorted((c for c in existing if c["spec"] == p["spec"]), key=lambda c: c["state"] != "running")
    current = same[0] if same and not p["recreate"] else None
    result: dict[str, Any] = {"changed": False}
    if current is not None and current["state"] == "running":
        container = {k: current[k] for k in ("id", "name", "host_port")}
    elif d.check_mode:
        d.actions.append("would start a container" if current else "would start a new container")
        return {"changed": True, "container": {}, "others": [c["id"] for c in existing]}
    elif current is not None:
        # A stopped container (suspended, or it exited) starts again only if the registry still
        # lets the operator pull its image: a cached image is never a way around the registry.
        if pull(podman, p["image"], "missing", p["registry_auth"], d.untag,
                cached_digests(podman, p["image"], "missing", p["_images"])):
            d.actions.append(f"pulled {p['image']}")
        podman.run("start", current["id"])
        d.actions.append(f"started container {current['name']} again")
        wait_until_answers(podman, current["id"], *gate(p, current["host_port"]))
        container = {k: current[k] for k in ("id", "name", "host_port")}
        result["changed"] = True
    else:
        container = start_new(d, existing)
        result["changed"] = True
    if not p["_digests_later"]:
        container["image_digest"] = podman.digest(container["id"])
    result |= {"container": container, "others": [c["id"] for c in existing if c["id"] != container["id"]]}
    return result


def keep_tag(deployment_id: str, digest: str) -> str:
    return f"buddo-keep-{deployment_id.replace('-', '')}-{digest.rpartition(':')[2][:32]}"


def keep_images(podman: Podman, deployment_id: str, refs: list[str], actions: list[str]) -> bool:
    """Tag each image of ``refs`` (repository@digest) in its repository so no prune removes it
    (podman finds repository@digest only through a name in that repository); drop the
    deployment's other keep tags. True when a tag was dropped."""
    wanted: dict[str, str] = {}
    for ref in refs:
        repository, _, digest = ref.partition("@")
        if repository and digest:
            wanted[f"{repository}:{keep_tag(deployment_id, digest)}"] = ref
    prefix = keep_tag(deployment_id, "")
    _, out, _ = podman.run("images", "--format", "{{.Repository}}:{{.Tag}}", check=False)
    have = {name.strip() for name in out.splitlines() if name.strip().rpartition(":")[2].startswith(prefix)}
    for name, ref in sorted(wanted.items()):
        if name not in have and podman.run("image", "exists", ref, check=False)[0] == 0:
            podman.run("tag", ref, name, check=False)
            actions.append(f"kept {ref}")
    dropped = sorted(have - set(wanted))
    for name in dropped:
        # Untags; removes the image too when that was its last name and no container uses it.
        podman.run("image", "rm", name, check=False)
    if dropped:
        actions.append(f"dropped {len(dropped)} kept image(s)")
    return bool(dropped)


def retired(d: Deployment) -> dict[str, Any]:
    p, podman = d.p, d.podman
    existing = podman.containers(p["deployment_id"])
    keep = next((c for c in existing if c["id"] == p["keep"] or c["name"] == p["keep"]), None)
    if keep is None:
        raise HostFailure(f"container {p['keep']} of deployment {p['deployment_id']} is gone")
    old = [c for c in existing if c["id"] != keep["id"]]
    rename = keep["name"] != p["name"]
    if d.check_mode:
        return {"changed": bool(old) or rename, "container": keep}
    if old:
        podman.run("rm", "--force", "--volumes", "--time", str(p["stop_timeout"]), *[c["id"] for c in old])
        d.actions.append(f"retired {len(old)} old container(s)")
    if rename:
        podman.run("rename", keep["id"], p["name"])
        d.actions.append(f"renamed {keep['name']} to {p['name']}")
        keep = {**keep, "name": p["name"]}
    dropped = keep_images(podman, p["deployment_id"], p["keep_images"][:max(0, p["keep_count"])], d.actions)
    drop_secrets(d, keep["spec"])
    d.prune = bool(old) or dropped
    return {"changed": bool(old) or rename, "container": keep}


def stopped(d: Deployment) -> dict[str, Any]:
    running = [c for c in d.podman.containers(d.p["deployment_id"]) if c["state"] == "running"]
    if running and not d.check_mode:
        d.podman.run("stop", "--time", str(d.p["stop_timeout"]), *[c["id"] for c in running])
    if running:
        d.actions.append(f"stopped {len(running)} container(s)")
    return {"changed": bool(running)}


def absent(d: Deployment) -> dict[str, Any]:
    p, podman = d.p, d.podman
    existing = podman.containers(p["deployment_id"])
    network = podman.has_network(p["deployment_id"])
    if d.check_mode:
        if existing:
            d.actions.append(f"would remove {len(existing)} container(s)")
        if network:
            d.actions.append(f"would remove network {deployment_network(p['deployment_id'])}")
        return {"changed": bool(existing) or network}
    if existing:
        podman.run("rm", "--force", "--volumes", "--time", str(p["stop_timeout"]), *[c["id"] for c in existing])
        d.actions.append(f"removed {len(existing)} container(s)")
        if p["remove_image"] and p["image"]:
            _, users, _ = podman.run("ps", "--all", "--quiet", "--filter", f"ancestor={p['image']}", check=False)
            if not users.strip():
                podman.run("image", "rm", p["image"], check=False)
    keep_images(podman, p["deployment_id"], [], d.actions)
    drop_secrets(d)
    if network:
        podman.run("network", "rm", deployment_network(p["deployment_id"]))
        d.actions.append(f"removed network {deployment_network(p['deployment_id'])}")
    kept = saved_output_path(p["output_dir"], p["deployment_id"]) if p["output_dir"] else ""
    forgotten = bool(kept) and os.path.exists(kept)
    if forgotten:
        os.remove(kept)
        d.actions.append("removed the kept output")
    return {"changed": bool(existing) or network or forgotten}


HANDLERS: dict[str, Callable[[Deployment], dict[str, Any]]] = {
    "started": started, "stopped": stopped, "absent": absent, "retired": retired}


def converge(state: str, d: Deployment) -> dict[str, Any]:
    """One deployment's entry of the result: its failure stays its own."""
    entry: dict[str, Any] = {"deployment_id": d.p["deployment_id"], "changed": False, "failed": False}
    try:
        entry |= HANDLERS[state](d)
    except AppFailure as exc:
        entry |= {"failed": True, "failure_kind": "app", "msg": str(exc), "changed": bool(d.actions)}
    except HostFailure as exc:
        entry |= {"failed": True, "failure_kind": "host", "msg": str(exc), "changed": bool(d.actions)}
    except Exception as exc:  # noqa: BLE001 - e.g. an unwritable output_dir: this deployment's, not the others'
        entry |= {"failed": True, "failure_kind": "host", "changed": bool(d.actions),
                  "msg": d.podman.mask(f"{type(exc).__name__}: {exc}")}
    entry["actions"] = d.actions
    return entry


def validate(items: list[dict[str, Any]], state: str, env: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """Each deployment checked on its own, so that an error says which one it is about."""
    validator = ArgumentSpecValidator(DEPLOYMENT_OPTIONS)
    valid: list[dict[str, Any]] = []
    errors: list[str] = []
    seen: set[str] = set()
    for index, raw in enumerate(items):
        ident = raw.get("deployment_id")
        where = f"deployments[{index}]" + (f" ({ident})" if ident else "")
        result = validator.validate(raw)
        item = result.validated_parameters
        problems = [f"Unsupported parameters: {error}" if isinstance(error, UnsupportedError) else str(error)
                    for error in result.errors]
        missing = [key for key in REQUIRED_BY_STATE.get(state, ()) if not item.get(key)]
        if missing:
            problems.append(f"state={state} needs {', '.join(missing)}")
        if ident in seen:
            problems.append("listed twice")
        if not isinstance(env.get(str(ident), {}), dict):
            problems.append("its env is not a mapping")
        seen.add(str(ident))
        errors += [f"{where}: {problem}" for problem in problems]
        valid.append(item)
    return valid, errors


def use_every_cpu() -> None:
    """Mitogen pins the processes it starts to one CPU; on a local connection this module and
    every podman it runs inherit that, and the overlapping podman commands would share one
    core. Threads started after this (the pool's) and their children may use them all."""
    with suppress(OSError):  # a cpuset that allows fewer: keep what we have
        os.sched_setaffinity(0, range(os.cpu_count() or 1))


# The options every deployment of a run shares (the module's own), with their defaults.
SHARED_OPTIONS: dict[str, dict[str, Any]] = {
    "userns": {"type": "bool", "default": True},
    "host_address": {"type": "str", "default": "127.0.0.1"},
    "instance": {"type": "str", "default": "buddo"},
    "init": {"type": "bool", "default": True},
    # "no": the platform restarts a container that exited (the health probe, within its crash-loop cap). Podman
    # 4.3 (Debian 12) leaks the network namespace, veth and IP of a --userns container at each restart it does
    # itself (podman#18615, fixed in 4.8), without backoff: a crashing app leaked about 6 a second.
    "restart_policy": {"type": "str", "default": "no"},
    "stop_timeout": {"type": "int", "default": 10},
    "wait_timeout": {"type": "float", "default": 60},
    "wait_path": {"type": "str", "default": "/"},
    "remove_image": {"type": "bool", "default": True},
    "prune_images": {"type": "bool", "default": True},
    "keep_count": {"type": "int", "default": 3},
    "output_dir": {"type": "str", "default": ""},
}


def converge_all(state: str, items: list[dict[str, Any]], shared: dict[str, Any], env: dict[str, Any],
                 registry_auth: dict[str, Any], parallel: int, binary: str, check_mode: bool,
                 seen: dict[str, Any] | None = None, untag: list[str] | None = None) -> list[dict[str, Any]]:
    """Every deployment of ``items`` (validated) to ``state``, ``parallel`` at a time: one entry each, in order.

    ``untag``: where the digest names the pulls added go, for the caller to drop later
    (:func:`untag_digests`; the converge does it once Caddy routes to what started); without it,
    they are dropped here. With it, the started containers' image digests are the caller's to
    read later too (:func:`fill_digests`): neither is on the way to Caddy routing.

    ``seen``: the caller's observation of the host moments ago (observe.host: containers, networks),
    which saves each start a ``podman ps`` and a ``network exists`` (podman calls are what a host's
    CPU spends a burst of creates on)."""
    if not items:
        return []
    shared = {**shared, "_secret_names": [], "_images": {}, "_digests_later": untag is not None}
    by_deployment, networks = of_deployments(seen or {})
    # Once for every deployment: the env secrets on the host (retired and absent drop theirs).
    if state in ("retired", "absent") and not check_mode:
        _, out, _ = Podman(binary, []).run("secret", "ls", "--format", "{{.Name}}", check=False)
        shared["_secret_names"] = out.split()
    work = []
    for item in items:
        values = {str(k): str(v) for k, v in (env.get(item["deployment_id"]) or {}).items()}
        auth = registry_auth.get(item["deployment_id"]) or None
        masked = [*values.values(), *(str(login.get("auth", "")) for login in (auth or {}).values())]
        ident = item["deployment_id"]
        known = {"_containers": by_deployment.get(ident, []) if seen is not None else None,
                 "_network": (ident in networks) if seen is not None else None}
        work.append(Deployment({**shared, **item, **known, "env": values, "registry_auth": auth},
                               Podman(binary, masked), check_mode))
    use_every_cpu()
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(work)))) as pool:
        entries = list(pool.map(lambda d: converge(state, d), work))
    added = [ref for d in work for ref in d.untag]
    if untag is None:
        untag_digests(Podman(binary, []), added)
    else:
        untag.extend(added)
    if state == "retired" and shared["prune_images"] and any(d.prune for d in work):
        # Once for every deployment: each prune walks all of the host's images.
        Podman(binary, []).run("image", "prune", "--force", check=False)
    return entries


def fill_digests(podman: Podman, entries: list[dict[str, Any]]) -> None:
    """The image digest of each started entry's container (converge_all with ``untag``), in one podman run."""
    containers = [e["container"] for e in entries if (e.get("container") or {}).get("id")]
    found = podman.digests([c["id"] for c in containers if "image_digest" not in c])
    for container in containers:
        container.setdefault("image_digest", found.get(container["id"], ""))


def summary(state: str, entries: list[dict[str, Any]]) -> str:
    failed = [e for e in entries if e["failed"]]
    if not failed:
        return f"{len(entries)} deployment(s) {state}"
    return f"{len(failed)} of {len(entries)} deployment(s) failed: " + "; ".join(
        f"{e['deployment_id']}: {e['msg']}" for e in failed)

"""The deployments' Caddy sites: one file each, validated together with Caddy, then one reload.

A file whose content differs is written to a hidden candidate beside it; all candidates are
validated together with one run of the validate command (in the context of the global options
and every other site, so two sites claiming one domain are caught too), then moved into place.
When that fails, each candidate is validated on its own, so only the sites Caddy rejects fail
(their old file stays, and Caddy keeps serving it); the others still go live. Then the files of
``remove`` go, with stale hidden files a killed run may have left (Caddy's import glob would
match them), and Caddy is reloaded once, under an exclusive lock: reloads are serialised, and
each reads every file, so the last to start includes every file written before it.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from ansible.module_utils.basic import AnsibleModule

STALE_S = 60
HEADER = "# Written by buddo-deploy (converge); changes here are overwritten."


class ReloadError(Exception):
    """Caddy did not take the files: the run fails (and is retried), Caddy keeps its old config."""


@dataclass
class Settings:
    sites_dir: str
    instance: str = "buddo"
    base_domain: str = "localhost"
    upstream_host: str = "127.0.0.1"
    directives: list[str] = field(default_factory=list)
    mode: str | int = "0644"
    validate: str = ""
    reload_command: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    lock_file: str = ""


def block(hosts: str, upstream: str, directives: list[str], tls_on_demand: bool = False) -> str:
    lines = [f"{hosts} {{"]
    if tls_on_demand:
        lines += ["\ttls {", "\t\ton_demand", "\t}"]
    lines += [f"\treverse_proxy {upstream}", *(f"\t{d}" for d in directives), "}"]
    return "\n".join(lines) + "\n"


def render(site: dict[str, Any], s: Settings) -> dict[str, Any]:
    """A site file (name, content) routing the deployment's hosts to its container's port."""
    upstream = f"{s.upstream_host}:{site['upstream_port']}"
    text = [HEADER, f"# deployment {site['deployment_id']}", f"# instance {s.instance}",
            block(f"{site['subdomain']}.{s.base_domain}", upstream, s.directives)]
    if site.get("custom_domain"):
        text += ["# Certificate issued at the first TLS handshake: the operator's CNAME may not",
                 "# exist yet when the site is created.",
                 block(str(site["custom_domain"]), upstream, s.directives, tls_on_demand=True)]
    return {"name": f"{site['subdomain']}.caddy", "subdomain": site["subdomain"],
            "deployment_id": str(site["deployment_id"]), "content": "\n".join(text)}


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def write_candidate(path: str, content: str) -> str:
    directory, name = os.path.split(path)
    fd, candidate = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)
    return candidate


def remove_stale(sites_dir: str) -> None:
    """Hidden candidates of a run killed mid-move; never another run's fresh ones."""
    cutoff = time.time() - STALE_S
    for entry in os.scandir(sites_dir):
        if entry.name.startswith(".") and entry.is_file() and entry.stat().st_mtime < cutoff:
            with suppress(FileNotFoundError):
                os.unlink(entry.path)


def validate(module: AnsibleModule, s: Settings, pairs: list[tuple[str, str]]) -> tuple[int, str]:
    """Run the validation command on (candidate, name) pairs: (exit status, its error output)."""
    command = shlex.split(s.validate) + [arg for pair in pairs for arg in pair]
    rc, out, err = module.run_command(command, environ_update=s.environment)
    return rc, (err or out).strip()


def reload_caddy(module: AnsibleModule, s: Settings) -> None:
    lock = open(s.lock_file, "a") if s.lock_file else None  # noqa: SIM115 - held across the reload
    try:
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        rc, out, err = module.run_command(s.reload_command, environ_update=s.environment)
    finally:
        if lock is not None:
            lock.close()
    if rc != 0:
        raise ReloadError(f"Caddy reload failed: {(err or out).strip()}")


def apply(module: AnsibleModule, s: Settings, sites: list[dict[str, Any]], remove: list[str],
          reload: bool) -> dict[str, Any]:
    """Write ``sites`` (rendered), remove the files of ``remove``, reload once: results per site,
    removed, reloaded, changed, diff. Check mode reports what would change and touches nothing."""
    results: list[dict[str, Any]] = []
    candidates: dict[int, str] = {}
    diffs = []
    try:
        for index, site in enumerate(sites):
            path = os.path.join(s.sites_dir, site["name"])
            before = read_text(path)
            entry: dict[str, Any] = {"site": {k: v for k, v in site.items() if k != "content"}, "path": path,
                                     "changed": before != site["content"], "failed": False}
            results.append(entry)
            if entry["changed"]:
                diffs.append({"before": before or "", "after": site["content"], "before_header": path,
                              "after_header": path})
                if not module.check_mode:
                    candidates[index] = write_candidate(path, site["content"])
        if candidates and s.validate:
            pairs = {i: (c, results[i]["site"]["name"]) for i, c in candidates.items()}
            if validate(module, s, list(pairs.values()))[0] != 0:  # find the ones Caddy rejects
                for index, pair in pairs.items():
                    rc, why = validate(module, s, [pair])
                    if rc != 0:
                        results[index] |= {"failed": True, "changed": False, "msg": "Caddy rejected the site",
                                           "stderr": why}
        for index, candidate in candidates.items():
            if not results[index]["failed"]:
                module.set_mode_if_different(candidate, s.mode, False)
                module.atomic_move(candidate, results[index]["path"])
    finally:
        for candidate in candidates.values():
            if os.path.exists(candidate):
                os.unlink(candidate)
    for entry in results:  # an unchanged file may still need its mode fixed (check mode only reports it)
        if os.path.exists(entry["path"]) and not entry["failed"]:
            entry["changed"] = module.set_mode_if_different(entry["path"], s.mode, entry["changed"])
    # A new deployment may take over the file of one destroyed in the same run: a file just
    # written is its new owner's (when its site was rejected, the old one goes all the same).
    written = {os.path.realpath(entry["path"]) for entry in results if not entry["failed"]}
    removed = [path for path in remove if os.path.lexists(path) and os.path.realpath(path) not in written]
    if not module.check_mode:
        for path in removed:
            os.unlink(path)
        if os.path.isdir(s.sites_dir):
            remove_stale(s.sites_dir)
    changed = bool(removed) or any(entry["changed"] for entry in results)
    reloaded = bool(s.reload_command) and (changed or reload)
    if reloaded and not module.check_mode:
        reload_caddy(module, s)
    return {"results": results, "removed": removed, "reloaded": reloaded, "changed": changed or reloaded,
            "diff": diffs}

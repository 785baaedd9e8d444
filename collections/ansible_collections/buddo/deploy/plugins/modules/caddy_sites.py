#!/usr/bin/python
"""The deployments' Caddy site files written, removed and applied in one module run."""

from __future__ import annotations

DOCUMENTATION = r"""
module: caddy_sites
short_description: Write and remove Caddy site files, validated together, then reload Caddy once
description:
  - Each item of O(sites) is one file in O(sites_dir). A file whose content differs is
    written to a hidden candidate beside it; all candidates are validated B(together)
    with one run of O(validate) (in the context of the global options and every other
    site, so two sites claiming one domain are caught too), then moved into place.
  - When that validation fails, each candidate is validated on its own, so only the
    sites Caddy rejects fail (R(results), per site); the others are still applied and
    a rejected one keeps its old file, so Caddy keeps serving the old config for it.
  - Removes the files of O(remove), and stale hidden files a killed run may have left
    (older than a minute), which Caddy's import glob would match.
  - Then, when anything changed or O(reload) is set, runs O(reload_command) once, under
    an exclusive lock on O(lock_file); reloads are serialised, and each reads every
    site file, so the last one to start includes every file written before it.
  - Check mode reports what would change and touches nothing.
options:
  sites_dir: {description: Directory of the site files., type: path, required: true}
  sites:
    description: "Files to write: name (file name in O(sites_dir)), content, and any other keys (returned as
        R(results[].site))."
    type: list
    elements: dict
    default: []
  remove: {description: Paths of site files to remove., type: list, elements: path, default: []}
  mode: {description: Mode of the written files., type: raw, default: "0644"}
  validate:
    description: >-
      Command validating candidates, run as C(<validate> CANDIDATE NAME [CANDIDATE NAME ...]) (NAME is the file
      name the candidate replaces); exit status 0 accepts them. Empty: no validation.
    type: str
    default: ""
  reload: {description: Reload even when no file changed., type: bool, default: false}
  reload_command: {description: Command (argv) that makes Caddy load the files; empty never reloads., type: list,
      elements: str, default: []}
  reload_environment: {description: Environment variables of O(reload_command) and O(validate)., type: dict,
      default: {}}
  lock_file: {description: File locked while reloading; empty takes no lock., type: path, default: ""}
"""

EXAMPLES = r"""
- name: Write, remove and apply the Caddy sites
  buddo.deploy.caddy_sites:
    sites_dir: /etc/caddy/sites
    sites:
      - name: my-app.caddy
        content: "my-app.localhost {\n\treverse_proxy 127.0.0.1:20001\n}\n"
        deployment_id: 0b0f...
    validate: /etc/caddy/validate.sh
    reload_command: [caddy, reload, --config, /etc/caddy/Caddyfile, --adapter, caddyfile, --address, "127.0.0.1:2019"]
    lock_file: /var/lib/caddy/.config/reload.lock
  register: written
"""

RETURN = r"""
results:
  description: "Per item of O(sites): site (the item without its content), path, changed, failed, msg, stderr (why
      Caddy rejected it)."
  type: list
  returned: always
removed: {description: Paths removed., type: list, returned: always}
reloaded: {description: Whether Caddy was reloaded., type: bool, returned: always}
"""

import fcntl
import os
import shlex
import tempfile
import time
from contextlib import suppress
from typing import Any

from ansible.module_utils.basic import AnsibleModule

STALE_S = 60


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


def validate(module: AnsibleModule, pairs: list[tuple[str, str]]) -> tuple[int, str]:
    """Run the validation command on (candidate, name) pairs: (exit status, its error output)."""
    command = shlex.split(module.params["validate"]) + [arg for pair in pairs for arg in pair]
    rc, out, err = module.run_command(command, environ_update=module.params["reload_environment"])
    return rc, (err or out).strip()


def remove_stale(sites_dir: str) -> None:
    """Hidden candidates of a run killed mid-move; never another run's fresh ones."""
    cutoff = time.time() - STALE_S
    for entry in os.scandir(sites_dir):
        if entry.name.startswith(".") and entry.is_file() and entry.stat().st_mtime < cutoff:
            with suppress(FileNotFoundError):
                os.unlink(entry.path)


def reload_caddy(module: AnsibleModule) -> None:
    p = module.params
    lock = open(p["lock_file"], "a") if p["lock_file"] else None  # noqa: SIM115 - held across the reload
    try:
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        rc, out, err = module.run_command(p["reload_command"], environ_update=p["reload_environment"])
    finally:
        if lock is not None:
            lock.close()
    if rc != 0:
        module.fail_json(msg=f"Caddy reload failed: {(err or out).strip()}", rc=rc)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "sites_dir": {"type": "path", "required": True},
            "sites": {"type": "list", "elements": "dict", "default": []},
            "remove": {"type": "list", "elements": "path", "default": []},
            "mode": {"type": "raw", "default": "0644"},
            "validate": {"type": "str", "default": ""},
            "reload": {"type": "bool", "default": False},
            "reload_command": {"type": "list", "elements": "str", "default": []},
            "reload_environment": {"type": "dict", "default": {}},
            "lock_file": {"type": "path", "default": ""},
        },
        supports_check_mode=True,
    )
    p = module.params
    sites_dir = p["sites_dir"]
    results: list[dict[str, Any]] = []
    candidates: dict[int, str] = {}
    diffs = []
    try:
        for index, site in enumerate(p["sites"]):
            name, content = site.get("name"), site.get("content")
            if not isinstance(name, str) or not isinstance(content, str) or not name or "/" in name:
                module.fail_json(msg=f"sites[{index}] needs a file name (no /) and a content string")
            path = os.path.join(sites_dir, name)
            before = read_text(path)
            entry: dict[str, Any] = {"site": {k: v for k, v in site.items() if k != "content"}, "path": path,
                                     "changed": before != content, "failed": False}
            results.append(entry)
            if before != content:
                diffs.append({"before": before or "", "after": content, "before_header": path, "after_header": path})
                if not module.check_mode:
                    candidates[index] = write_candidate(path, content)
        if candidates and p["validate"]:
            pairs = {i: (c, results[i]["site"]["name"]) for i, c in candidates.items()}
            rc, _ = validate(module, list(pairs.values()))
            if rc != 0:  # find the ones Caddy rejects; the others still go live
                for index, pair in pairs.items():
                    rc, why = validate(module, [pair])
                    if rc != 0:
                        results[index] |= {"failed": True, "changed": False, "msg": "Caddy rejected the site",
                                           "stderr": why}
        for index, candidate in candidates.items():
            if not results[index]["failed"]:
                module.set_mode_if_different(candidate, p["mode"], False)
                module.atomic_move(candidate, results[index]["path"])
    finally:
        for candidate in candidates.values():
            if os.path.exists(candidate):
                os.unlink(candidate)
    for entry in results:  # an unchanged file may still need its mode fixed (check mode only reports it)
        if os.path.exists(entry["path"]) and not entry["failed"]:
            entry["changed"] = module.set_mode_if_different(entry["path"], p["mode"], entry["changed"])
    # A new deployment may take over the file of one destroyed in the same run: a file just
    # written is its new owner's (when its site was rejected, the old one goes all the same).
    written = {os.path.realpath(entry["path"]) for entry in results if not entry["failed"]}
    removed = [path for path in p["remove"] if os.path.lexists(path) and os.path.realpath(path) not in written]
    if not module.check_mode:
        for path in removed:
            os.unlink(path)
        if os.path.isdir(sites_dir):
            remove_stale(sites_dir)
    changed = bool(removed) or any(entry["changed"] for entry in results)
    reloaded = bool(p["reload_command"]) and (changed or p["reload"])
    if reloaded and not module.check_mode:
        reload_caddy(module)
    result: dict[str, Any] = {"changed": changed or reloaded, "results": results, "removed": removed,
                              "reloaded": reloaded}
    if module._diff:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()

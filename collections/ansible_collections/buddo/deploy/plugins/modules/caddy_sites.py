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

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.buddo.deploy.plugins.module_utils import sites


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
    for index, site in enumerate(p["sites"]):
        name, content = site.get("name"), site.get("content")
        if not isinstance(name, str) or not isinstance(content, str) or not name or "/" in name:
            module.fail_json(msg=f"sites[{index}] needs a file name (no /) and a content string")
    settings = sites.Settings(sites_dir=p["sites_dir"], mode=p["mode"], validate=p["validate"],
                              reload_command=p["reload_command"], lock_file=p["lock_file"],
                              environment={str(k): str(v) for k, v in p["reload_environment"].items()})
    try:
        result: dict[str, Any] = sites.apply(module, settings, p["sites"], p["remove"], p["reload"])
    except sites.ReloadError as exc:
        module.fail_json(msg=str(exc))
    if not module._diff:
        result.pop("diff")
    module.exit_json(**result)


if __name__ == "__main__":
    main()

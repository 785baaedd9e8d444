#!/usr/bin/python
"""Write a file's content atomically once a validation command accepts it."""

from __future__ import annotations

DOCUMENTATION = r"""
module: checked_file
short_description: Write a small text file atomically, validated first
description:
  - Compares O(content) and O(mode) with O(path) and, when they differ, writes the
    content to a temporary file beside O(path), runs O(validate) on it and only then
    moves it over O(path). A rejected candidate is removed; the live file stays.
  - What M(ansible.builtin.template) with C(validate) does, in one module run instead
    of a stat plus a copy (or file) run; render the content with the
    P(ansible.builtin.template#lookup) lookup.
  - The temporary file is named C(.<name>.<random>.tmp) so that globs such as
    C(*.caddy) never match it.
options:
  path: {description: File to write., type: path, required: true}
  content: {description: The whole content of the file., type: str, required: true}
  mode: {description: Permissions of the file (octal string such as C("0644"))., type: raw, default: "0644"}
  validate:
    description:
      - Command run on the candidate before it replaces O(path); C(%s) is the candidate's path.
        It is not run through a shell.
    type: str
attributes:
  check_mode: {support: full}
  diff_mode: {support: full}
"""

EXAMPLES = r"""
- name: Render the Caddy site
  buddo.deploy.checked_file:
    path: /etc/caddy/sites/my-app.caddy
    content: "{{ lookup('ansible.builtin.template', 'site.caddy.j2') }}"
    validate: /etc/caddy/validate.sh %s my-app.caddy
  notify: Reload caddy
"""

RETURN = r"""
path: {description: The file., type: str, returned: always}
stdout: {description: Output of the validation command., type: str, returned: when validation failed}
stderr: {description: Errors of the validation command., type: str, returned: when validation failed}
"""

import os
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def write_candidate(path: str, content: str) -> str:
    directory, name = os.path.split(path)
    fd, candidate = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory or ".")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)
    return candidate


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "content": {"type": "str", "required": True},
            "mode": {"type": "raw", "default": "0644"},
            "validate": {"type": "str"},
        },
        supports_check_mode=True,
    )
    path, content, mode, validate = (module.params[k] for k in ("path", "content", "mode", "validate"))
    if validate and "%s" not in validate:
        module.fail_json(msg=f"validate must contain %s: {validate}")
    if os.path.isdir(path):
        module.fail_json(msg=f"{path} is a directory")

    before = read_text(path)
    result: dict[str, Any] = {"changed": False, "path": path}
    if module._diff:
        result["diff"] = {"before": before or "", "after": content, "before_header": path, "after_header": path}

    if before != content:
        result["changed"] = True
        if not module.check_mode:
            candidate = write_candidate(path, content)
            try:
                if validate:
                    rc, out, err = module.run_command(validate % candidate)
                    if rc != 0:
                        module.fail_json(msg="failed to validate", exit_status=rc, stdout=out, stderr=err, path=path)
                module.set_mode_if_different(candidate, mode, False)
                module.atomic_move(candidate, path)
            finally:
                if os.path.exists(candidate):
                    os.unlink(candidate)
    # An unchanged file may still need its mode fixed (check mode only reports it).
    if os.path.exists(path):
        result["changed"] = module.set_mode_if_different(path, mode, result["changed"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()

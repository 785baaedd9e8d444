#!/usr/bin/python
"""Poll an HTTP URL until anything answers, inside one module run."""

from __future__ import annotations

DOCUMENTATION = r"""
module: http_probe
short_description: Wait until an HTTP server answers, or read one page
description:
  - Sends GET requests to O(url) until any HTTP answer arrives (any status counts;
    the server is up) or O(wait_timeout) seconds have passed, polling every
    O(interval) seconds within this one module run.
  - Never fails because nothing answered; R(status) is -1 then, and the caller decides.
  - Redirects are not followed. Meant for loopback addresses (an app's published
    port, Caddy's admin API), so it uses no proxy.
options:
  url: {description: URL to request., type: str, required: true}
  timeout: {description: Seconds one request may take., type: float, default: 2}
  wait_timeout: {description: Seconds to keep trying; 0 makes one attempt., type: float, default: 0}
  interval: {description: Seconds between attempts., type: float, default: 0.1}
  return_content: {description: Return the body of the answer., type: bool, default: false}
"""

EXAMPLES = r"""
- name: Wait until the app answers
  buddo.deploy.http_probe:
    url: http://127.0.0.1:20001/
    wait_timeout: 60
  register: probe
"""

RETURN = r"""
status: {description: "HTTP status of the answer, -1 when nothing answered.", type: int, returned: always}
content: {description: Body of the answer., type: str, returned: when O(return_content) and something answered}
attempts: {description: Requests sent., type: int, returned: always}
elapsed: {description: Seconds spent., type: float, returned: always}
msg: {description: Why the last attempt got no answer., type: str, returned: when nothing answered}
"""

import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.buddo.deploy.plugins.module_utils.http import http_get


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "required": True},
            "timeout": {"type": "float", "default": 2},
            "wait_timeout": {"type": "float", "default": 0},
            "interval": {"type": "float", "default": 0.1},
            "return_content": {"type": "bool", "default": False},
        },
        supports_check_mode=True,  # only reads
    )
    params = module.params
    started = time.monotonic()
    deadline = started + max(params["wait_timeout"], 0)
    attempts = 0
    while True:
        attempts += 1
        status, body, error = http_get(params["url"], params["timeout"], params["return_content"])
        if status > 0 or time.monotonic() + params["interval"] >= deadline:
            break
        time.sleep(params["interval"])
    result: dict[str, Any] = {
        "changed": False,
        "status": status,
        "attempts": attempts,
        "elapsed": round(time.monotonic() - started, 3),
    }
    if status > 0 and params["return_content"]:
        result["content"] = body
    if status <= 0:
        result["msg"] = error
    module.exit_json(**result)


if __name__ == "__main__":
    main()

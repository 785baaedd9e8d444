"""The desired-state item: one deployment as converge.yml and reconcile.yml take it.

Declared here, once, as an Ansible argument spec. The converge role's
``meta/argument_specs.yml`` declares the same fields for ``converge_deployments``, so
Ansible validates every item before the role's first task (unknown keys, missing
fields, wrong types, a bad ``state``); the API builds the items through its pydantic
model ``schemas.DesiredItem``. tests/unit/test_desired_item.py holds the three together
field by field. What an argument spec cannot say (the names' patterns) is
:func:`bad_names`, which the plan filter checks before anything changes.
"""

from __future__ import annotations

import re
from typing import Any

STATES = ("running", "stopped", "absent")
PULL = ("always", "missing")

# What a running item needs beyond the fields every item needs.
RUNNING_NEEDS = ("image", "spec", "port", "host_ports", "memory_limit_mb", "cpu_limit_millicores", "pids_limit",
                 "log_max_size_mb", "disk_limit_mb")

# The operator's health check (zeros and "": the platform's defaults; health_status: healthy() below).
HEALTH_OPTIONS: dict[str, dict[str, Any]] = {
    "health_path": {"type": "str", "default": ""},
    "health_status": {"type": "int", "default": 0},
    "health_timeout_s": {"type": "int", "default": 0},
    "health_grace_s": {"type": "int", "default": 0},
}

ITEM_OPTIONS: dict[str, dict[str, Any]] = {
    "id": {"type": "str", "required": True},
    "host": {"type": "str", "required": True},
    "subdomain": {"type": "str", "required": True},
    "container_name": {"type": "str", "required": True},
    "state": {"type": "str", "required": True, "choices": list(STATES)},
    "generation": {"type": "int", "default": 0},
    "image": {"type": "str"},
    "spec": {"type": "str"},
    "port": {"type": "int"},
    "host_ports": {"type": "list", "elements": "int"},
    "memory_limit_mb": {"type": "int"},
    "cpu_limit_millicores": {"type": "int"},
    "pids_limit": {"type": "int"},
    "log_max_size_mb": {"type": "int"},
    "disk_limit_mb": {"type": "int"},
    "custom_domain": {"type": "str", "default": ""},
    "revision": {"type": "int", "default": 0},
    "pull": {"type": "str", "default": "missing", "choices": list(PULL)},
    "releases": {"type": "list", "elements": "str", "default": []},
    "labels": {"type": "dict", "default": {}},
    **HEALTH_OPTIONS,
}
# health_status: 0 any answer (the platform's default gate), 1 any status below 500, else that status.
ANY_ANSWER, BELOW_500 = 0, 1


def healthy(status: int, expected: int) -> bool:
    """Whether an HTTP status (-1 or 0: no answer) is healthy by the item's health_status."""
    if status <= 0:
        return False
    if expected == ANY_ANSWER:
        return True
    return status < 500 if expected == BELOW_500 else status == expected
ITEM_REQUIRED_IF: list[list[Any]] = [["state", "running", list(RUNNING_NEEDS)]]

# A subdomain is a DNS label (and a file name): the API's own pattern (schemas.SUBDOMAIN_PATTERN,
# held equal by the unit test); a container name is what Podman accepts.
SUBDOMAIN_PATTERN = r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?"
SUBDOMAIN = re.compile(rf"^{SUBDOMAIN_PATTERN}$")
CONTAINER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")


def bad_names(items: list[dict[str, Any]]) -> list[str]:
    """One line per item whose subdomain or container name is unsafe in file and container names."""
    bad = []
    for item in items:
        for field, pattern in (("subdomain", SUBDOMAIN), ("container_name", CONTAINER_NAME)):
            value = item.get(field)
            if not isinstance(value, str) or not pattern.match(value):
                bad.append(f"item {item.get('id', '?')}: {field} {value!r} does not match {pattern.pattern}")
    return bad

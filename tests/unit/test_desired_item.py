"""The desired-state item, declared once (module_utils/desired.py), and everything that must agree with it:
the converge role's argument spec (Ansible validates items against it), the API's items and subdomain rule."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "collections"))

from ansible_collections.buddo.deploy.plugins.module_utils import desired  # noqa: E402

ROLE_SPEC = yaml.safe_load((ROOT / "roles/converge/meta/argument_specs.yml").read_text())
DOCUMENT = ROLE_SPEC["argument_specs"]["main"]["options"]["converge_deployments"]


def _without_description(spec: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in spec.items() if key != "description"}


def test_the_role_declares_every_field_as_module_utils_does() -> None:
    assert list(DOCUMENT["options"]) == list(desired.ITEM_OPTIONS)
    for name, spec in desired.ITEM_OPTIONS.items():
        assert _without_description(DOCUMENT["options"][name]) == spec, name
        assert DOCUMENT["options"][name]["description"], name
    assert DOCUMENT["required_if"] == desired.ITEM_REQUIRED_IF


def test_the_api_and_the_engine_share_the_subdomain_rule() -> None:
    from buddo_deploy.schemas import SUBDOMAIN_PATTERN

    assert desired.SUBDOMAIN_PATTERN == SUBDOMAIN_PATTERN


def validate(items: list[dict[str, Any]]) -> list[str]:
    """What Ansible says of a document before the converge role's first task."""
    spec = {"converge_deployments": {k: v for k, v in DOCUMENT.items() if k != "description"}}
    result = ArgumentSpecValidator(spec).validate({"converge_deployments": items})
    return [str(error) for error in result.errors]


GOOD: dict[str, Any] = {
    "id": "d1", "host": "container-host-1", "subdomain": "my-app", "container_name": "my-app-abc123",
    "state": "running", "generation": 2, "image": "127.0.0.1:5000/demo/hello:v1", "spec": "s1", "port": 3000,
    "host_ports": [20000, 20001], "memory_limit_mb": 256, "cpu_limit_millicores": 250, "pids_limit": 256,
    "log_max_size_mb": 10, "disk_limit_mb": 512, "custom_domain": "", "revision": 1, "pull": "missing",
    "releases": [],
}


def test_a_well_formed_document_passes() -> None:
    stopped = {"id": "d2", "host": "container-host-1", "subdomain": "other", "container_name": "other-1",
               "state": "stopped"}
    assert validate([GOOD, stopped]) == []


@pytest.mark.parametrize(("change", "message"), [
    ({"state": "sleeping"}, "value of state must be one of: running, stopped, absent, got: sleeping"),
    ({"colour": "red"}, "colour"),
    ({"port": "three thousand"}, "port"),
    ({"host_ports": ["a", "b"]}, "host_ports"),
    ({"pull": "sometimes"}, "value of pull must be one of: always, missing"),
], ids=["state", "unknown-key", "port-type", "host-ports-type", "pull"])
def test_a_malformed_item_is_refused_with_a_clear_message(change: dict[str, Any], message: str) -> None:
    errors = validate([GOOD | change])
    assert errors and any(message in error for error in errors), errors


@pytest.mark.parametrize("missing", ["id", "host", "subdomain", "container_name", "state"])
def test_every_item_needs_its_identity(missing: str) -> None:
    item = {k: v for k, v in GOOD.items() if k != missing}
    assert any(f"missing required arguments: {missing}" in error for error in validate([item]))


@pytest.mark.parametrize("missing", desired.RUNNING_NEEDS)
def test_a_running_item_needs_what_makes_its_container(missing: str) -> None:
    item = {k: v for k, v in GOOD.items() if k != missing}
    errors = validate([item])
    assert any("state is running but all of the following are missing" in e and missing in e for e in errors)
    assert validate([item | {"state": "absent"}]) == []


def test_names_that_would_be_unsafe_in_files_and_container_names_are_named() -> None:
    assert desired.bad_names([GOOD]) == []
    bad = desired.bad_names([GOOD | {"subdomain": "../etc"}, GOOD | {"id": "d3", "container_name": "-x"}])
    assert len(bad) == 2 and bad[0].startswith("item d1: subdomain '../etc'") and "item d3: container_name" in bad[1]


def test_the_items_the_api_builds_pass_the_role_spec(client: Any, settings: Any) -> None:
    """Field by field: every key the API puts in an item is declared, with the declared type."""
    from buddo_deploy.models import Deployment
    from buddo_deploy.services import state

    from tests.helpers import create_deployment

    ident = create_deployment(client, env_vars={"K": "v"})
    item = state.desired_item(Deployment.get_by_id(ident))
    assert set(item) <= set(desired.ITEM_OPTIONS) and set(desired.RUNNING_NEEDS) <= set(item)
    assert validate([item]) == []
    assert validate([item | {"state": "absent"}]) == []


def test_the_plan_refuses_unsafe_names_before_anything_changes() -> None:
    from ansible_collections.buddo.deploy.plugins.module_utils.plan import converge_plan

    with pytest.raises(ValueError, match=r"converge_deployments: item d1: subdomain 'Bad_Name'"):
        converge_plan([GOOD | {"subdomain": "Bad_Name"}], {"containers": [], "sites": []}, "", "localhost")

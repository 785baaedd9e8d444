"""Two inventory hosts may share one machine's Podman: each observes only its own containers (buddo.host)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "collections"))

from ansible_collections.buddo.deploy.plugins.module_utils import observe as host_state  # noqa: E402
from ansible_collections.buddo.deploy.plugins.module_utils.podman import parse_ps  # noqa: E402


def ps_entry(ident: str, **labels: str) -> dict[str, object]:
    return {"Id": ident, "Names": [f"c-{ident}"], "State": "running", "Image": "img",
            "Labels": {"buddo.managed_by": "buddo-deploy", "buddo.deployment_id": f"d-{ident}", **labels},
            "Ports": [{"host_port": 20000}]}


def test_each_host_sees_its_own_containers_and_the_unlabelled_ones() -> None:
    listed = parse_ps(json.dumps([
        ps_entry("a", **{"buddo.host": "container-host-1"}),
        ps_entry("b", **{"buddo.host": "container-host-2"}),
        ps_entry("old"),  # made before containers were labelled with their host
    ]))
    assert [c["host"] for c in listed] == ["container-host-1", "container-host-2", ""]
    assert [c["id"] for c in host_state.of_host(listed, "container-host-1")] == ["a", "old"]
    assert [c["id"] for c in host_state.of_host(listed, "container-host-2")] == ["b", "old"]
    assert [c["id"] for c in host_state.of_host(listed, "")] == ["a", "b", "old"]


def test_each_host_sees_only_its_own_deployment_networks() -> None:
    """host-1's reconcile must never take host-2's networks for orphans (removing one stops its app)."""
    from ansible_collections.buddo.deploy.plugins.module_utils.podman import parse_networks

    def network(name: str, **labels: str) -> dict[str, object]:
        return {"name": name, "options": {"isolate": "true"},
                "labels": {"buddo.managed_by": "buddo-deploy", "buddo.deployment_id": name, **labels}}

    listed = parse_networks(json.dumps([
        network("n1", **{"buddo.host": "container-host-1"}),
        network("n2", **{"buddo.host": "container-host-2"}),
    ]))
    assert [n["name"] for n in host_state.of_host(listed, "container-host-1")] == ["n1"]
    assert [n["name"] for n in host_state.of_host(listed, "container-host-2")] == ["n2"]

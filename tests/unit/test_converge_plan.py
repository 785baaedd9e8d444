"""The converge filters (plan, started, sites, retire, outcomes) and host_state's pure helpers (sites, probe)."""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

# The collection's plugins import each other as Ansible does: from the ansible_collections namespace.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "collections"))

from ansible_collections.buddo.deploy.plugins.module_utils import container as container_spec  # noqa: E402
from ansible_collections.buddo.deploy.plugins.module_utils import observe as host_state  # noqa: E402
from ansible_collections.buddo.deploy.plugins.module_utils import plan as plan_filters  # noqa: E402

BASE = "apps.example.com"
HOST = f"shop.{BASE}"


def item(**over: Any) -> dict[str, Any]:
    """One desired deployment (see playbooks/README.md)."""
    return {"id": "d1", "host": "h1", "subdomain": "shop", "container_name": "buddo-d1", "state": "running",
            "image": "registry.example.com/demo/shop:v2", "port": 8080, "host_ports": [20000, 20001],
            "memory_limit_mb": 256, "cpu_limit_millicores": 500, "pids_limit": 256, "log_max_size_mb": 20,
            "custom_domain": "", "spec": "spec-2", "revision": 2, "pull": "missing", "generation": 3, **over}


def container(**over: Any) -> dict[str, Any]:
    """One container as host_state reports it (on its deployment's own network, with the item's caps)."""
    return {"id": "c1", "name": "buddo-d1", "deployment_id": "d1", "spec": "spec-2", "state": "running",
            "exit_code": 0, "host_port": 20000, "image": "registry.example.com/demo/shop:v2", "memory_limit_mb": 256,
            "cpu_limit_millicores": 500, "pids_limit": 256, "log_max_size_mb": 20,
            "networks": [f"buddo-{over.get('deployment_id', 'd1')}"], "no_new_privileges": True,
            **over}


def site(**over: Any) -> dict[str, Any]:
    """One site file as host_state reports it."""
    return {"file": "/etc/caddy/sites/shop.caddy", "name": "shop.caddy", "deployment_id": "d1", "hosts": [HOST],
            "upstream_port": 20000, **over}


def observed(containers: list[dict[str, Any]] | None = None, sites: list[dict[str, Any]] | None = None,
             networks: list[str] | None = None) -> dict[str, Any]:
    """host_state's result; ``networks``: deployment ids whose network exists."""
    return {"changed": False, "containers": containers or [], "sites": sites or [],
            "networks": [{"name": f"buddo-{i}", "deployment_id": i, "isolated": True} for i in networks or []]}


def live(routes: dict[str, int]) -> str:
    """Caddy's live JSON config (GET /config/) routing each host to 127.0.0.1:<port>."""
    return json.dumps({"apps": {"http": {"servers": {"srv0": {"listen": [":443"], "routes": [
        {"match": [{"host": [host]}], "terminal": True,
         "handle": [{"handler": "subroute", "routes": [{"handle": [
             {"handler": "reverse_proxy", "upstreams": [{"dial": f"127.0.0.1:{port}"}]}]}]}]}
        for host, port in routes.items()]}}}}}, separators=(",", ":"))


def plan_of(desired: list[dict[str, Any]], obs: dict[str, Any], live_config: str = "", **kwargs: Any
            ) -> dict[str, Any]:
    return plan_filters.converge_plan(desired, obs, live_config, BASE, **kwargs)


def empty(plan: dict[str, Any]) -> bool:
    return (not any(plan[k] for k in ("start", "stop", "remove", "remove_sites", "orphan_containers",
                                      "orphan_sites", "orphan_networks", "drift")) and plan["reload"] is False)


# --- converge_plan: running -------------------------------------------------------------------------------


def test_no_drift_when_the_spec_runs_the_site_routes_to_it_and_caddy_serves_it() -> None:
    plan = plan_of([item()], observed([container()], [site()]), live({HOST: 20000}))
    assert empty(plan)


def test_no_drift_with_a_custom_domain_served() -> None:
    desired = item(custom_domain="shop.example.org")
    obs = observed([container()], [site(hosts=["shop.example.org", HOST])])  # order does not matter
    assert empty(plan_of([desired], obs, live({HOST: 20000, "shop.example.org": 20000})))


def test_unknown_live_config_never_asks_for_a_reload() -> None:
    plan = plan_of([item()], observed([container()], [site()]), "")
    assert empty(plan)


@pytest.mark.parametrize(("containers", "reason"), [
    ([], "container missing"),
    ([container(state="exited")], "container not running"),
    ([container(spec="spec-1")], "container runs an older spec"),
    ([container(spec="spec-1"), container(id="c2", spec="spec-2", state="created")], "container not running"),
])
def test_the_container_drifts(containers: list[dict[str, Any]], reason: str) -> None:
    plan = plan_of([item()], observed(containers, [site()]), live({HOST: 20000}))
    assert plan["drift"] == {"d1": [reason]}
    [start] = plan["start"]
    assert start["id"] == "d1" and start["recreate"] is False and start["serving_port"] == 20000
    assert {k: v for k, v in start.items() if k not in ("serving_port", "recreate")} == item()
    assert plan["reload"] is False and not plan["stop"] and not plan["remove"]


def test_limits_differ_recreates_the_container() -> None:
    obs = observed([container(memory_limit_mb=128, cpu_limit_millicores=250)], [site()])
    plan = plan_of([item()], obs, live({HOST: 20000}))
    assert plan["drift"] == {"d1": ["limits differ (128 MB/250 m, want 256 MB/500 m)"]}
    assert [s["recreate"] for s in plan["start"]] == [True]


def test_only_the_cpu_limit_differs() -> None:
    plan = plan_of([item()], observed([container(cpu_limit_millicores=1000)], [site()]), live({HOST: 20000}))
    assert plan["start"][0]["recreate"] is True
    assert plan["drift"]["d1"][0].startswith("limits differ")


def test_unknown_limits_are_no_drift() -> None:
    # podman inspect failed: host_state leaves memory_limit_mb None.
    obs = observed([container(memory_limit_mb=None, cpu_limit_millicores=None)], [site()])
    assert empty(plan_of([item()], obs, live({HOST: 20000})))


# A container started before tenants had networks of their own and per-tier caps (podman's defaults).
BEFORE_ISOLATION = {"pids_limit": 2048, "log_max_size_mb": 0, "networks": ["podman"], "no_new_privileges": True}


@pytest.mark.parametrize(("settings", "reason"), [
    ({"pids_limit": 128}, "pids limit 128, want 256"),
    ({"log_max_size_mb": 10}, "log cap 10 MB, want 20 MB"),
    ({"networks": ["podman"]}, "network podman, want buddo-d1"),
    ({"networks": ["buddo-d1", "podman"]}, "network buddo-d1,podman, want buddo-d1"),
    ({"networks": []}, "network none, want buddo-d1"),
    ({"no_new_privileges": False}, "no-new-privileges unset"),
    # Made before the platform stopped podman's own restarts (they leak with a user namespace).
    ({"restart_policy": "always"}, "restart policy always, want no"),
    (BEFORE_ISOLATION, "pids limit 2048, want 256; log cap 0 MB, want 20 MB; network podman, want buddo-d1"),
])
def test_settings_differ_recreates_the_container(settings: dict[str, Any], reason: str) -> None:
    plan = plan_of([item()], observed([container(**settings)], [site()]), live({HOST: 20000}))
    assert plan["drift"] == {"d1": [f"settings differ ({reason})"]}
    [start] = plan["start"]
    assert start["recreate"] is True and start["serving_port"] == 20000


def test_a_changed_tier_cap_is_drift() -> None:
    # The document carries the tier's current caps: a bigger pids limit replaces the container.
    plan = plan_of([item(pids_limit=512, log_max_size_mb=50)], observed([container()], [site()]),
                   live({HOST: 20000}))
    assert plan["drift"] == {"d1": ["settings differ (pids limit 256, want 512; log cap 20 MB, want 50 MB)"]}
    assert plan["start"][0]["recreate"] is True


def test_unknown_settings_are_no_drift() -> None:
    # podman inspect failed: host_state leaves them None.
    unknown = dict.fromkeys(BEFORE_ISOLATION)
    assert empty(plan_of([item()], observed([container(**unknown)], [site()]), live({HOST: 20000})))


def test_a_stopped_container_from_before_isolation_is_replaced_not_started_again() -> None:
    obs = observed([container(state="exited", **BEFORE_ISOLATION)], [site()])
    plan = plan_of([item()], obs, live({HOST: 20000}))
    assert plan["drift"]["d1"][0] == "container not running"
    assert plan["drift"]["d1"][1].startswith("settings differ (pids limit 2048")
    assert plan["start"][0]["recreate"] is True


def test_old_containers_left_over() -> None:
    obs = observed([container(id="c0", name="buddo-d1-old", spec="spec-1", host_port=20001, state="exited"),
                    container()], [site()])
    plan = plan_of([item()], obs, live({HOST: 20000}))
    assert plan["drift"] == {"d1": ["old containers left over"]}
    assert plan["start"][0]["recreate"] is False and plan["start"][0]["serving_port"] == 20000


def test_site_missing() -> None:
    plan = plan_of([item()], observed([container()], []), live({HOST: 20000}))
    assert plan["drift"] == {"d1": ["site missing"]}
    assert plan["start"][0]["serving_port"] is None
    assert plan["reload"] is False


def test_site_stale_routes_to_another_port() -> None:
    plan = plan_of([item()], observed([container()], [site(upstream_port=20001)]), live({HOST: 20001}))
    assert plan["drift"] == {"d1": ["site stale"]}
    assert plan["start"][0]["serving_port"] == 20001


def test_site_stale_misses_the_custom_domain() -> None:
    desired = item(custom_domain="shop.example.org")
    plan = plan_of([desired], observed([container()], [site()]), live({HOST: 20000, "shop.example.org": 20000}))
    assert plan["drift"] == {"d1": ["site stale"]}


def test_site_stale_names_a_custom_domain_no_longer_wanted() -> None:
    obs = observed([container()], [site(hosts=[HOST, "old.example.org"])])
    plan = plan_of([item()], obs, live({HOST: 20000, "old.example.org": 20000}))
    assert plan["drift"] == {"d1": ["site stale"]}


def test_caddy_not_serving_the_site_reloads() -> None:
    plan = plan_of([item()], observed([container()], [site()]), live({f"other.{BASE}": 20010}))
    assert plan["drift"] == {"d1": ["caddy does not serve the site"]}
    assert plan["reload"] is True
    assert [s["id"] for s in plan["start"]] == ["d1"]


def test_caddy_not_serving_the_custom_domain_reloads() -> None:
    desired = item(custom_domain="shop.example.org")
    obs = observed([container()], [site(hosts=[HOST, "shop.example.org"])])
    plan = plan_of([desired], obs, live({HOST: 20000}))
    assert plan["drift"] == {"d1": ["caddy does not serve the site"]}
    assert plan["reload"] is True


def test_a_host_that_merely_contains_ours_is_not_served() -> None:
    plan = plan_of([item()], observed([container()], [site()]), live({f"www.{HOST}": 20000}))
    assert plan["reload"] is True


def test_serving_port_is_taken_from_our_own_site() -> None:
    # The new deployment d2 took over a port; the site naming d2 is not d1's.
    obs = observed([], [site(file="/etc/caddy/sites/blog.caddy", name="blog.caddy", deployment_id="d2",
                             hosts=[f"blog.{BASE}"], upstream_port=20011),
                        site(upstream_port=20001)])
    plan = plan_of([item()], obs, live({HOST: 20001, f"blog.{BASE}": 20011}))
    assert plan["start"][0]["serving_port"] == 20001
    foreign = observed([], [site(deployment_id="d2", upstream_port=20011)])
    assert plan_of([item()], foreign, "")["start"][0]["serving_port"] is None


def test_a_site_routing_to_port_zero_gives_no_serving_port() -> None:
    plan = plan_of([item()], observed([], [site(upstream_port=0)]), "")
    assert plan["start"][0]["serving_port"] is None


def test_caddy_routing_to_an_old_port_is_reloaded() -> None:
    # A run killed after the site file was switched to the new container's port (20001) and before Caddy
    # reloaded: the live config still dials the old container (20000). The host occurs in the live config, so
    # nothing asks for a reload; the rerun rewrites an unchanged file (no handler), then retires the old
    # container Caddy still routes to. Correct: a reload (the live routes disagree with the site file).
    obs = observed([container(id="c0", name="buddo-d1", spec="spec-1", host_port=20000),
                    container(id="c1", name="buddo-d1-next", spec="spec-2", host_port=20001)],
                   [site(upstream_port=20001)])
    plan = plan_of([item()], obs, live({HOST: 20000}))
    assert plan["drift"]["d1"][0] == "old containers left over"
    assert plan["reload"] is True


# --- converge_plan: stopped and absent --------------------------------------------------------------------


def test_stopped_with_a_running_container_is_stopped() -> None:
    desired = item(state="stopped")
    plan = plan_of([desired], observed([container()], [site()]), live({HOST: 20000}))
    assert plan["stop"] == [desired]
    assert plan["drift"] == {"d1": ["container running"]}
    assert not plan["start"] and not plan["remove"] and not plan["remove_sites"] and plan["reload"] is False


def test_stopped_and_not_running_is_no_drift() -> None:
    plan = plan_of([item(state="stopped")], observed([container(state="exited")], [site()]), live({HOST: 20000}))
    assert empty(plan)


def test_absent_removes_the_containers_and_our_site_file() -> None:
    desired = item(state="absent")
    obs = observed([container(), container(id="c0", spec="spec-1", state="exited")], [site()])
    plan = plan_of([desired], obs, live({HOST: 20000}))
    assert plan["remove"] == [desired]
    assert plan["remove_sites"] == ["/etc/caddy/sites/shop.caddy"]
    assert plan["drift"] == {"d1": ["container present", "site present"]}
    assert plan["reload"] is False  # removing the file reloads Caddy


def test_absent_removes_a_network_left_without_containers() -> None:
    # A teardown interrupted between removing the containers and the network.
    desired = item(state="absent")
    plan = plan_of([desired], observed([], [], networks=["d1"]), "")
    assert plan["remove"] == [desired] and plan["drift"] == {"d1": ["network present"]}
    assert plan["orphan_networks"] == []


def test_stopped_keeps_its_network() -> None:
    obs = observed([container(state="exited")], [site()], networks=["d1"])
    assert empty(plan_of([item(state="stopped")], obs, "", prune=True))


def test_absent_and_gone_is_no_drift() -> None:
    assert empty(plan_of([item(state="absent")], observed([], []), live({f"other.{BASE}": 20010})))


def test_absent_never_removes_the_site_of_the_deployment_that_took_over_the_subdomain() -> None:
    old = item(state="absent")
    new = item(id="d2", container_name="buddo-d2", host_ports=[20002, 20003], spec="spec-9")
    obs = observed([container(state="exited"),
                    container(id="c2", name="buddo-d2", deployment_id="d2", spec="spec-9", host_port=20002)],
                   [site(deployment_id="d2", upstream_port=20002)])
    for prune in (False, True):
        plan = plan_of([old, new], obs, live({HOST: 20002}), prune=prune)
        assert plan["remove"] == [old]
        assert plan["remove_sites"] == [] and plan["orphan_sites"] == [] and plan["orphan_containers"] == []
        assert plan["reload"] is False and plan["start"] == []
        assert plan["drift"] == {"d1": ["container present"]}


def test_absent_but_caddy_still_serves_the_host_reloads() -> None:
    plan = plan_of([item(state="absent")], observed([], []), live({HOST: 20000}))
    assert plan["drift"] == {"d1": ["caddy still serves the site"]}
    assert plan["reload"] is True


def test_absent_host_served_for_a_running_deployment_with_that_subdomain_is_no_reload() -> None:
    new = item(id="d2", container_name="buddo-d2")
    obs = observed([container(id="c2", name="buddo-d2", deployment_id="d2")], [site(deployment_id="d2")])
    plan = plan_of([item(state="absent"), new], obs, live({HOST: 20000}))
    assert empty(plan)


def test_absent_host_served_and_the_other_deployment_is_stopped_reloads() -> None:
    stopped = item(id="d2", container_name="buddo-d2", state="stopped")
    plan = plan_of([item(state="absent"), stopped], observed([], []), live({HOST: 20000}))
    assert plan["reload"] is True and plan["drift"] == {"d1": ["caddy still serves the site"]}


# --- converge_plan: prune ---------------------------------------------------------------------------------


def _orphaned() -> dict[str, Any]:
    return observed(
        [container(),
         container(id="c9", name="buddo-gone", deployment_id="gone"),
         container(id="c8", name="buddo-failed-first", deployment_id="known-1"),
         container(id="c7", name="buddo-absent", deployment_id="d3", state="exited")],
        [site(),
         site(file="/s/gone.caddy", name="gone.caddy", deployment_id="gone", hosts=[f"gone.{BASE}"]),
         site(file="/s/kept.caddy", name="kept.caddy", deployment_id="known-1", hosts=[f"kept.{BASE}"]),
         site(file="/s/absent.caddy", name="absent.caddy", deployment_id="d3", hosts=[f"absent.{BASE}"]),
         site(file="/s/hand.caddy", name="hand.caddy", deployment_id="", hosts=[f"hand.{BASE}"])])


def test_orphans_are_listed_only_with_prune() -> None:
    desired = [item(), item(id="d3", subdomain="absent", container_name="buddo-absent", state="absent")]
    config = live({HOST: 20000, f"gone.{BASE}": 20000})
    plain = plan_of(desired, _orphaned(), config, known=["known-1"])
    assert plain["orphan_containers"] == [] and plain["orphan_sites"] == []
    assert "orphans" not in plain["drift"]

    pruned = plan_of(desired, _orphaned(), config, known=["known-1"], prune=True)
    assert pruned["orphan_containers"] == ["c9"]
    assert pruned["orphan_sites"] == ["/s/gone.caddy"]
    assert pruned["drift"]["orphans"] == ["container buddo-gone", "site gone.caddy"]
    # The absent deployment's own things are removed as such, not as orphans.
    assert [d["id"] for d in pruned["remove"]] == ["d3"] and pruned["remove_sites"] == ["/s/absent.caddy"]
    # A site file without a deployment marker is never touched.
    assert all("hand" not in f for f in pruned["remove_sites"] + pruned["orphan_sites"])
    assert pruned["start"] == [] and pruned["reload"] is False


def test_orphan_networks_are_removed_only_with_prune() -> None:
    desired = [item(), item(id="d3", subdomain="absent", container_name="buddo-absent", state="absent")]
    obs = observed([container()], [site()], networks=["d1", "d3", "known-1", "gone"])
    assert plan_of(desired, obs, "", known=["known-1"])["orphan_networks"] == []
    pruned = plan_of(desired, obs, "", known=["known-1"], prune=True)
    # d3's network goes with d3 (remove), known-1's stays, only the network of no deployment is an orphan.
    assert pruned["orphan_networks"] == ["buddo-gone"]
    assert pruned["drift"]["orphans"] == ["network buddo-gone"]
    assert [d["id"] for d in pruned["remove"]] == ["d3"] and pruned["drift"]["d3"] == ["network present"]


def test_without_known_ids_the_known_ones_are_orphans() -> None:
    plan = plan_of([item()], _orphaned(), "", prune=True)
    assert sorted(plan["orphan_containers"]) == ["c7", "c8", "c9"]
    assert sorted(plan["orphan_sites"]) == ["/s/absent.caddy", "/s/gone.caddy", "/s/kept.caddy"]


def test_a_site_of_a_stopped_deployment_is_no_orphan() -> None:
    desired = [item(state="stopped")]
    plan = plan_of(desired, observed([container(state="exited")], [site()]), "", prune=True)
    assert empty(plan)


# --- converge_started, converge_sites, converge_retire ----------------------------------------------------


def _started(*entries: dict[str, Any]) -> list[dict[str, Any]]:
    """As the start step (instances.converge_all) returns it: one entry per deployment."""
    return list(entries)


def test_converge_started_keeps_the_items_whose_container_runs() -> None:
    plan = plan_of([item(), item(id="d2", subdomain="blog", container_name="buddo-d2"),
                    item(id="d3", subdomain="wiki", container_name="buddo-d3")], observed(), "")
    new = {"id": "c5", "name": "buddo-d1-next", "host_port": 20001}
    started = _started({"deployment_id": "d1", "changed": True, "container": new, "others": ["c1"]},
                       {"deployment_id": "d2", "failed": True, "failure_kind": "app", "msg": "exited 1"},
                       {"deployment_id": "d3", "changed": False, "container": {}})
    up = plan_filters.converge_started(plan, started)
    assert [u["id"] for u in up] == ["d1"]
    assert up[0]["container"] == new and up[0]["container_id"] == "c5" and up[0]["others"] == ["c1"]
    assert up[0]["serving_port"] is None and up[0]["recreate"] is False
    assert plan_filters.converge_started(plan, []) == []


def test_converge_started_without_others_gives_an_empty_list() -> None:
    plan = plan_of([item()], observed(), "")
    up = plan_filters.converge_started(plan, _started({"deployment_id": "d1", "container": {"id": "c5"}}))
    assert up[0]["others"] == []


def test_converge_sites_routes_to_the_running_container() -> None:
    up = [{**item(custom_domain="shop.example.org"), "container": {"id": "c5", "host_port": 20001}},
          {**item(id="d2", subdomain="blog", custom_domain=None), "container": {"id": "c6", "host_port": 20003}}]
    assert plan_filters.converge_sites(up) == [
        {"subdomain": "shop", "custom_domain": "shop.example.org", "upstream_port": 20001, "deployment_id": "d1"},
        {"subdomain": "blog", "custom_domain": "", "upstream_port": 20003, "deployment_id": "d2"},
    ]
    assert plan_filters.converge_sites([]) == []


def _up(ident: str, name: str, others: list[str]) -> dict[str, Any]:
    return {**item(id=ident, subdomain=ident, container_name=f"buddo-{ident}"),
            "container": {"id": f"c-{ident}", "name": name, "host_port": 20001}, "container_id": f"c-{ident}",
            "others": others}


def test_converge_retire() -> None:
    up = [_up("a", "buddo-a", ["old"]),            # old containers left
          _up("b", "buddo-b-next", []),            # temporary name
          _up("c", "buddo-c", []),                 # nothing to retire
          _up("d", "buddo-d-next", ["old"])]       # its site was rejected: the old one still serves
    written = {"results": [
        {"site": {"subdomain": "a", "deployment_id": "a"}, "changed": True},
        {"site": {"subdomain": "b", "deployment_id": "b"}, "changed": False},
        {"site": {"subdomain": "c", "deployment_id": "c"}, "changed": False},
        {"site": {"subdomain": "d", "deployment_id": "d"}, "failed": True, "stderr": "bad"},
    ]}
    assert [i["id"] for i in plan_filters.converge_retire(up, written)] == ["a", "b"]
    assert [i["id"] for i in plan_filters.converge_retire(up)] == ["a", "b", "d"]
    assert [i["id"] for i in plan_filters.converge_retire(up, {})] == ["a", "b", "d"]


# --- converge_outcomes ------------------------------------------------------------------------------------


def test_outcome_of_a_failed_start() -> None:
    desired = [item()]
    obs = observed([container(spec="spec-1")], [site()])
    plan = plan_of(desired, obs, live({HOST: 20000}))
    started = _started({"deployment_id": "d1", "failed": True, "failure_kind": "app",
                        "msg": "the app exited with status 1", "actions": ["pulled", "created"]})
    outcome = plan_filters.converge_outcomes(desired, plan, obs, started, {})["d1"]
    assert outcome == {"ok": False, "state": "running", "drift": ["container runs an older spec"], "generation": 3,
                       "actions": ["pulled", "created"], "kind": "app", "message": "the app exited with status 1",
                       "task": "Run the app containers"}


def test_outcome_of_a_failed_start_without_kind_or_message() -> None:
    desired = [item()]
    plan = plan_of(desired, observed(), "")
    started = _started({"deployment_id": "d1", "failed": True})
    outcome = plan_filters.converge_outcomes(desired, plan, observed(), started)["d1"]
    assert outcome["ok"] is False and outcome["kind"] == "host"
    assert outcome["message"] == "the container could not be started" and outcome["actions"] == []


def test_outcome_of_a_rejected_site() -> None:
    desired = [item()]
    obs = observed([], [])
    plan = plan_of(desired, obs, "")
    new = {"id": "c5", "name": "buddo-d1", "host_port": 20000}
    started = _started({"deployment_id": "d1", "changed": True, "container": new, "actions": ["created"]})
    written = {"results": [{"site": {"subdomain": "shop", "deployment_id": "d1"}, "failed": True,
                            "stderr": "  Error: adapting config using caddyfile: unrecognized directive\n",
                            "msg": "validation failed"}]}
    outcome = plan_filters.converge_outcomes(desired, plan, obs, started, written)["d1"]
    assert outcome["ok"] is False and outcome["kind"] == "app"
    assert outcome["task"] == "Write, remove and apply the Caddy sites"
    assert outcome["message"] == ("Caddy rejected the site; the running config is unchanged: "
                                  "Error: adapting config using caddyfile: unrecognized directive")
    assert outcome["container"] == new and outcome["actions"] == ["created"]
    assert outcome["drift"] == ["container missing", "site missing"]


def test_outcome_of_a_rejected_site_without_stderr_uses_msg() -> None:
    desired = [item()]
    plan = plan_of(desired, observed(), "")
    started = _started({"deployment_id": "d1", "container": {"id": "c5"}})
    written = {"results": [{"site": {"deployment_id": "d1"}, "failed": True, "msg": "validation failed"}]}
    outcome = plan_filters.converge_outcomes(desired, plan, observed(), started, written)["d1"]
    assert outcome["message"].endswith("unchanged: validation failed")


def test_outcome_without_drift_reports_the_serving_container() -> None:
    desired = [item()]
    obs = observed([container()], [site()])
    plan = plan_of(desired, obs, live({HOST: 20000}))
    assert empty(plan)
    outcome = plan_filters.converge_outcomes(desired, plan, obs, [], {})["d1"]
    assert outcome == {"ok": True, "state": "running", "drift": [], "generation": 3,
                       "container": {"id": "c1", "name": "buddo-d1", "host_port": 20000}}
    assert plan_filters.converge_outcomes(desired, plan, obs)["d1"] == outcome


def test_outcome_ignores_containers_of_other_specs_or_deployments() -> None:
    desired = [item()]
    obs = observed([container(spec="spec-1"), container(id="c2", deployment_id="d2"),
                    container(id="c3", state="exited")])
    plan = {"drift": {}}  # as if nothing drifted (e.g. a check-mode run that skipped the start)
    outcome = plan_filters.converge_outcomes(desired, plan, obs)["d1"]
    assert outcome["ok"] is True and "container" not in outcome


def test_outcomes_of_stopped_and_absent_deployments() -> None:
    desired = [item(state="stopped"), item(id="d2", subdomain="blog", state="absent", generation=None)]
    obs = observed([container(), container(id="c2", deployment_id="d2", state="exited")])
    plan = plan_of(desired, obs, "")
    outcomes = plan_filters.converge_outcomes(desired, plan, obs, [], {})
    assert outcomes == {
        "d1": {"ok": True, "state": "stopped", "drift": ["container running"], "generation": 3},
        "d2": {"ok": True, "state": "absent", "drift": ["container present"], "generation": None},
    }


# --- host_state.sites -------------------------------------------------------------------------------------

SITE_FILE = """#
# Ansible managed
#
# deployment {ident}
{instance}shop.apps.example.com {{
\treverse_proxy 127.0.0.1:{port}
\tencode gzip
}}

# Certificate issued at the first TLS handshake: the operator's CNAME may not
# exist yet when the site is created.
shop.example.org {{
\ttls {{
\t\ton_demand
\t}}
\treverse_proxy 127.0.0.1:{port}
}}
"""


def _write(path: Path, ident: str = "d1", instance: str | None = "buddo", port: int = 20001) -> Path:
    marker = f"# instance {instance}\n" if instance is not None else ""
    path.write_text(SITE_FILE.format(ident=ident, instance=marker, port=port), encoding="utf-8")
    return path


def test_sites_parses_the_rendered_site_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "shop.caddy")
    assert host_state.sites(str(tmp_path), "buddo") == [{
        "file": str(path), "name": "shop.caddy", "deployment_id": "d1",
        "hosts": ["shop.apps.example.com", "shop.example.org"], "upstream_port": 20001,
    }]


def test_sites_filters_by_instance(tmp_path: Path) -> None:
    _write(tmp_path / "a.caddy", ident="da", instance="buddo")
    _write(tmp_path / "b.caddy", ident="db", instance="staging")
    _write(tmp_path / "c.caddy", ident="dc", instance=None)  # no comment: the default instance's
    (tmp_path / "notes.txt").write_text("# deployment dx\nx.example.com {\n}\n", encoding="utf-8")
    assert [s["deployment_id"] for s in host_state.sites(str(tmp_path), "buddo")] == ["da", "dc"]
    assert [s["deployment_id"] for s in host_state.sites(str(tmp_path), "staging")] == ["db"]
    assert host_state.sites(str(tmp_path), "other") == []


def test_sites_without_markers_or_upstream(tmp_path: Path) -> None:
    path = tmp_path / "hand.caddy"
    path.write_text("# written by hand\na.example.com, b.example.com {\n\trespond \"hi\"\n}\n", encoding="utf-8")
    assert host_state.sites(str(tmp_path), "buddo") == [{
        "file": str(path), "name": "hand.caddy", "deployment_id": "",
        "hosts": ["a.example.com", "b.example.com"], "upstream_port": 0,
    }]


def test_sites_of_a_missing_or_empty_directory(tmp_path: Path) -> None:
    assert host_state.sites(str(tmp_path), "buddo") == []
    assert host_state.sites(str(tmp_path / "missing"), "buddo") == []


def test_sites_feed_the_plan(tmp_path: Path) -> None:
    _write(tmp_path / "shop.caddy", port=20000)
    obs = observed([container()], host_state.sites(str(tmp_path), "buddo"))
    desired = item(custom_domain="shop.example.org")
    assert empty(plan_of([desired], obs, live({HOST: 20000, "shop.example.org": 20000})))


# --- module_utils.container.observed ----------------------------------------------------------------------------------

# Shapes of `podman inspect` (Podman 4.3): an isolated app container, and one from before isolation.
INSPECT_ISOLATED = {"Id": "c1", "NetworkSettings": {"Networks": {"buddo-d1": {"IPAddress": "10.89.3.2"}}},
                    "HostConfig": {"Memory": 268435456, "NanoCpus": 500000000, "PidsLimit": 256,
                                   "LogConfig": {"Type": "k8s-file", "Size": "20MB"},
                                   "SecurityOpt": ["no-new-privileges"],
                                   "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0}}}
INSPECT_SHARED = {"Id": "c2", "NetworkSettings": {"Networks": {"podman": {"IPAddress": "10.88.0.5"}}},
                  "HostConfig": {"Memory": 268435456, "NanoCpus": 500000000, "PidsLimit": 2048,
                                 "LogConfig": {"Type": "k8s-file", "Size": "0B"},
                                 "SecurityOpt": ["no-new-privileges"],
                                 "RestartPolicy": {"Name": "always", "MaximumRetryCount": 0}}}


def test_settings_of_an_isolated_container_match_its_item() -> None:
    found = container_spec.observed(INSPECT_ISOLATED)
    assert found == {"memory_limit_mb": 256, "cpu_limit_millicores": 500, "pids_limit": 256, "log_max_size_mb": 20,
                     "networks": ["buddo-d1"], "no_new_privileges": True, "restart_policy": "no"}
    assert empty(plan_of([item()], observed([container(**found)], [site()]), live({HOST: 20000})))


def test_settings_of_a_container_from_before_isolation_are_drift() -> None:
    found = container_spec.observed(INSPECT_SHARED)
    assert found == {"memory_limit_mb": 256, "cpu_limit_millicores": 500, **BEFORE_ISOLATION,
                     "restart_policy": "always"}
    plan = plan_of([item()], observed([container(**found)], [site()]), live({HOST: 20000}))
    assert plan["drift"]["d1"][0].startswith("settings differ") and plan["start"][0]["recreate"] is True
    assert plan["drift"]["d1"][0].endswith("; restart policy always, want no)")


def test_a_sysadmins_restart_policy_is_what_the_plan_wants() -> None:
    always = observed([container(restart_policy="always")], [site()])
    assert empty(plan_filters.converge_plan([item()], always, live({HOST: 20000}), BASE, restart_policy="always"))
    retries = observed([container(restart_policy=container_spec.restart_name("on-failure:3"))], [site()])
    plan = plan_filters.converge_plan([item()], retries, live({HOST: 20000}), BASE, restart_policy="always")
    assert plan["drift"] == {"d1": ["settings differ (restart policy on-failure, want always)"]}


@pytest.mark.parametrize(("size", "mb"), [("10MB", 10), ("1.5GB", 1500), ("500kB", 0), ("0B", 0), ("", 0),
                                          ("junk", 0)])
def test_log_size_as_podman_shows_it(size: str, mb: int) -> None:
    assert container_spec.log_size_mb(size) == mb


# --- host_state.probe -------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/boom")  # followed, the probe would see the 500
        elif self.path == "/boom":
            self.send_response(500)
        elif self.path == "/missing":
            self.send_response(404)
        else:
            self.send_response(200)
        body = b"ok\n"
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        return


@pytest.fixture(scope="module")
def http_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_probe_200_is_healthy(http_port: int) -> None:
    assert host_state.probe(f"http://127.0.0.1:{http_port}/", 3) == {"status": 200, "healthy": True, "error": ""}


def test_probe_does_not_follow_a_redirect_and_counts_it_healthy(http_port: int) -> None:
    assert host_state.probe(f"http://127.0.0.1:{http_port}/redirect", 3) == {
        "status": 302, "healthy": True, "error": ""}


def test_probe_404_is_healthy_500_is_not(http_port: int) -> None:
    assert host_state.probe(f"http://127.0.0.1:{http_port}/missing", 3)["healthy"] is True
    assert host_state.probe(f"http://127.0.0.1:{http_port}/boom", 3) == {"status": 500, "healthy": False, "error": ""}


def test_a_container_with_its_own_health_check_is_probed_by_it(http_port: int) -> None:
    """The prober asks each container as its labels say (podman.parse_ps): its path and the status
    that means healthy; one without a check of its own, as the platform does."""
    found = [
        {"id": "own-500-ok", "state": "running", "host_port": http_port,
         "health": {"path": "/boom", "status": 500, "timeout": 2.0}},
        {"id": "own-below-500", "state": "running", "host_port": http_port,
         "health": {"path": "/boom", "status": 1, "timeout": 2.0}},
        {"id": "own-exact-200", "state": "running", "host_port": http_port,
         "health": {"path": "/missing", "status": 200, "timeout": 2.0}},
        {"id": "platform", "state": "running", "host_port": http_port, "health": None},
    ]
    probes = host_state.probes(found, "/", 3)
    assert {ident: (p["status"], p["healthy"]) for ident, p in probes.items()} == {
        "own-500-ok": (500, True), "own-below-500": (500, False), "own-exact-200": (404, False),
        "platform": (200, True)}


def test_health_labels_round_trip_through_podman_ps() -> None:
    from ansible_collections.buddo.deploy.plugins.module_utils import instances, podman

    p = {"health_path": "/healthz", "health_status": 204, "health_timeout_s": 4, "wait_path": "/"}
    labels = instances.health_labels(p)
    [parsed] = podman.parse_ps(json.dumps([{"Id": "c1", "Names": ["n"], "State": "running", "Labels": labels}]))
    assert parsed["health"] == {"path": "/healthz", "status": 204, "timeout": 4.0}
    none = {"health_path": "", "health_status": 0, "health_timeout_s": 0, "wait_path": "/"}
    assert instances.health_labels(none) == {}


def test_the_gate_fails_a_new_container_that_answers_but_not_healthy(http_port: int) -> None:
    from ansible_collections.buddo.deploy.plugins.module_utils import instances

    podman = instances.Podman("/bin/false", [])
    url = f"http://127.0.0.1:{http_port}/boom"
    instances.wait_until_answers(podman, "c1", url, 1, instances.desired.ANY_ANSWER)  # today's gate: any answer
    with pytest.raises(instances.AppFailure, match="answered HTTP 500 .* not a status below 500"):
        instances.wait_until_answers(podman, "c1", url, 0.3, instances.desired.BELOW_500)
    instances.wait_until_answers(podman, "c1", url, 1, 500)  # the status its check says is healthy


def test_probe_ignores_proxy_settings(http_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert host_state.probe(f"http://127.0.0.1:{http_port}/", 3)["status"] == 200


def test_probe_of_a_closed_port() -> None:
    answer = host_state.probe(f"http://127.0.0.1:{_free_port()}/", 3)
    assert answer["status"] == -1 and answer["healthy"] is False
    assert answer["error"]


def test_probe_of_a_bad_url() -> None:
    answer = host_state.probe("not a url", 3)
    assert answer["status"] == -1 and answer["healthy"] is False


def test_probe_of_a_port_that_does_not_speak_http() -> None:
    # A container whose port answers with something other than HTTP (here an SSH banner). probe() catches only
    # OSError and ValueError; http.client.BadStatusLine (an HTTPException) escapes it, and with it the
    # pool.map of main(): the whole host_state run fails instead of reporting this one container unhealthy.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def banner() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    thread = threading.Thread(target=banner, daemon=True)
    thread.start()
    try:
        answer = host_state.probe(f"http://127.0.0.1:{port}/", 3)
    finally:
        thread.join(5)
        listener.close()
    assert answer["status"] == -1 and answer["healthy"] is False and answer["error"]

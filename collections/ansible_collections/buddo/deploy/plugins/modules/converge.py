#!/usr/bin/python
"""Bring the deployments of one host to their desired state in one module run."""

from __future__ import annotations

DOCUMENTATION = r"""
module: converge
short_description: Observe, plan, act and report for every deployment of a host, in one run
description:
  - B(Observe) - this platform's containers, networks and Caddy site files on the host, Caddy's
    live config and whether the egress policy of tenant containers is loaded (podman, nft and
    Caddy asked at the same time).
  - B(Plan) - compare each deployment of O(deployments) with what runs (its container spec and
    limits, its site file, what Caddy routes); with O(prune), also find containers, sites and
    networks that belong to no deployment. A deployment with no drift is not touched.
  - B(Act), in the order that keeps traffic flowing - stop, remove, start a new container
    B(beside) the serving one and wait until it answers, write the sites of the deployments that
    now answer (validated together with Caddy) and reload Caddy once, then retire the old
    containers Caddy no longer routes to, and remove the orphans. Up to O(parallel)
    deployments are worked on at a time.
  - B(Report) - each deployment's outcome (C(outcomes)) - ok, or why not (its own failure never
    fails another deployment, nor the module run), the drift found, what was done and the
    container that serves it; with diff mode, the drift and plan as a diff.
  - With check mode, plans and reports and changes nothing (the dry-run reconcile).
  - When the egress policy is not loaded or Caddy does not answer, changes nothing and says so
    in C(blocked); the converge role then loads the policy or starts Caddy and runs this again.
  - Env values and registry logins (O(env), O(registry_auth)) are never logged and are masked in
    every message.
options:
  deployments:
    description: "The desired deployments of this host: items of the desired-state document (playbooks/README.md,
        module_utils/desired.py)."
    type: list
    elements: dict
    default: []
  host: {description: "Inventory host (label buddo.host): only its containers and networks are observed.", type: str,
      default: ""}
  known: {description: Ids of deployments that are neither converged here nor orphans., type: list, elements: str,
      default: []}
  prune: {description: "Also remove containers, sites and networks of no deployment in O(deployments) or O(known).",
      type: bool, default: false}
  releases_kept: {description: Images of this many newest releases stay on the host., type: int, default: 3}
  egress_table: {description: "nftables table of the egress policy (C(inet buddo_egress)); empty - not checked.",
      type: str, default: ""}
  caddy_admin: {description: "Caddy's admin address (host:port); empty - Caddy is not read.", type: str, default: ""}
  sites_dir: {description: Directory of the per-deployment Caddy site files., type: path, required: true}
  base_domain: {description: "Base domain: a deployment's site is <subdomain>.<base_domain>.", type: str,
      default: localhost}
  upstream_host: {description: Address Caddy dials (where ports are published)., type: str, default: 127.0.0.1}
  site_directives: {description: Extra Caddyfile directives for every site block., type: list, elements: str,
      default: []}
  site_mode: {description: Mode of the site files., type: str, default: "0644"}
  site_validate: {description: "Command validating candidate site files, run as C(<validate> CANDIDATE NAME ...).",
      type: str, default: ""}
  reload_command: {description: Command (argv) that makes Caddy load the files; empty never reloads., type: list,
      elements: str, default: []}
  reload_environment: {description: Environment of O(reload_command) and O(site_validate)., type: dict, default: {}}
  lock_file: {description: File locked while reloading., type: path, default: ""}
extends_documentation_fragment: [buddo.deploy.containers]
"""

EXAMPLES = r"""
- name: Converge the deployments of this host
  buddo.deploy.converge:
    deployments: "{{ converge_deployments | selectattr('host', 'equalto', inventory_hostname) | list }}"
    env: "{{ lookup('ansible.builtin.file', '/dev/shm/env.json') | from_json }}"
    host: "{{ inventory_hostname }}"
    sites_dir: /etc/caddy/sites
    caddy_admin: 127.0.0.1:2019
    egress_table: inet buddo_egress
  register: converged
"""

RETURN = r"""
blocked: {description: "What must be fixed first (C(egress), C(caddy)); nothing was done.", type: list,
    returned: always}
outcomes:
  description: "Deployment id -> ok, state, drift, generation, actions, container (id, name, host_port), and on
      failure kind (C(app) or C(host)), message and task (the step that failed)."
  type: dict
  returned: unless blocked
orphans: {description: "What was (or, in check mode, would be) removed as belonging to no deployment.", type: list,
    returned: unless blocked}
plan: {description: "The plan: start, stop, remove (ids), remove_sites, orphan_*, reload, drift.", type: dict,
    returned: unless blocked}
reloaded: {description: Whether Caddy was reloaded., type: bool, returned: unless blocked}
"""

import shutil
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.buddo.deploy.plugins.module_utils import instances, observe, plan, sites
from ansible_collections.buddo.deploy.plugins.module_utils.desired import HEALTH_OPTIONS, ITEM_OPTIONS, ITEM_REQUIRED_IF

STEPS = {"stopped": "Stop the app containers", "absent": "Remove the app containers",
         "started": "Run the app containers", "retired": "Retire the replaced containers"}


def container_items(items: list[dict[str, Any]], state: str, host: str) -> list[dict[str, Any]]:
    """Desired items (with the plan's serving_port, recreate, container_id) as instances' items."""
    out = []
    for item in items:
        entry: dict[str, Any] = {"deployment_id": str(item["id"]), "name": item["container_name"]}
        if state == "started":
            entry |= {
                "image": item["image"], "spec": item["spec"], "port": item["port"], "host_ports": item["host_ports"],
                "memory_limit_mb": item["memory_limit_mb"], "cpu_limit_millicores": item["cpu_limit_millicores"],
                "pids_limit": item["pids_limit"], "log_max_size_mb": item["log_max_size_mb"],
                "disk_limit_mb": item["disk_limit_mb"],
                # buddo.host: the converge of this inventory host observes (and prunes) only its own.
                "labels": {**(item.get("labels") or {}), "buddo.subdomain": item["subdomain"], "buddo.host": host},
                "pull": item.get("pull") or "missing", "recreate": bool(item.get("recreate")),
                **{k: item[k] for k in HEALTH_OPTIONS if k in item},
            }
            if item.get("serving_port"):
                entry["serving_port"] = item["serving_port"]
        elif state == "absent":
            entry["image"] = item.get("image") or ""
        elif state == "retired":
            entry |= {"keep": item["container_id"], "keep_images": list(item.get("releases") or [])}
        out.append(entry)
    return out


class Run:
    """One module run's acting: each step over every deployment it concerns, one entry each."""

    def __init__(self, module: AnsibleModule, binary: str) -> None:
        self.module = module
        self.p = module.params
        self.binary = binary
        self.shared = {k: self.p[k] for k in instances.SHARED_OPTIONS if k != "keep_count"} | {
            "keep_count": self.p["releases_kept"]}
        self.failures: dict[str, dict[str, Any]] = {}  # deployment id -> its failure (stop, remove, retire)
        self.actions: dict[str, list[str]] = {}
        self.untag: list[str] = []  # digest names the run's pulls added: dropped once Caddy routes

    def step(self, state: str, items: list[dict[str, Any]], seen: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        valid, errors = instances.validate(container_items(items, state, self.p["host"]), state, self.p["env"])
        if errors:  # the document passed its argument spec: this is a bug of ours, said per run
            self.module.fail_json(msg="; ".join(errors))
        entries = instances.converge_all(state, valid, self.shared, self.p["env"], self.p["registry_auth"],
                                         self.p["parallel"], self.binary, self.module.check_mode, seen, self.untag)
        for entry in entries:
            self.actions.setdefault(entry["deployment_id"], []).extend(entry.get("actions") or [])
            if entry["failed"] and state != "started":  # started: the outcome's own (plan.converge_outcomes)
                self.failures[entry["deployment_id"]] = {
                    "ok": False, "kind": "host", "task": STEPS[state],
                    "message": str(entry.get("msg") or f"{STEPS[state].lower()} failed")}
        return entries

    def orphans(self, containers: list[str], networks: list[str]) -> None:
        podman = instances.Podman(self.binary, [])
        if containers:
            podman.run("rm", "--force", "--time", str(self.p["stop_timeout"]), *containers)
        if networks:
            podman.run("network", "rm", *networks)


def settings(p: dict[str, Any]) -> sites.Settings:
    return sites.Settings(
        sites_dir=p["sites_dir"], instance=p["instance"], base_domain=p["base_domain"],
        upstream_host=p["upstream_host"], directives=p["site_directives"], mode=p["site_mode"],
        validate=p["site_validate"], reload_command=p["reload_command"],
        environment={str(k): str(v) for k, v in p["reload_environment"].items()}, lock_file=p["lock_file"])


def diff_text(outcomes: dict[str, Any], steps: dict[str, list[str]]) -> str:
    """What drifted and what (would be) done, per deployment: the diff mode's view of the run."""
    lines = []
    for ident, outcome in outcomes.items():
        if outcome["drift"] or outcome.get("actions") or not outcome["ok"]:
            lines.append(f"deployment {ident} ({outcome['state']}):")
            lines += [f"  - {reason}" for reason in outcome["drift"]]
            lines += [f"  + {action}" for action in outcome.get("actions") or []]
            if not outcome["ok"]:
                lines.append(f"  ! {outcome.get('message')}")
    for what, names in steps.items():
        lines += [f"{what}: {name}" for name in names]
    return "\n".join(lines) + ("\n" if lines else "")


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "deployments": {"type": "list", "elements": "dict", "default": [], "options": ITEM_OPTIONS,
                            "required_if": ITEM_REQUIRED_IF},
            "env": {"type": "dict", "default": {}, "no_log": True},
            "registry_auth": {"type": "dict", "default": {}, "no_log": True},
            "host": {"type": "str", "default": ""},
            "known": {"type": "list", "elements": "str", "default": []},
            "prune": {"type": "bool", "default": False},
            "releases_kept": {"type": "int", "default": 3},
            "parallel": {"type": "int", "default": 4},
            "egress_table": {"type": "str", "default": ""},
            "caddy_admin": {"type": "str", "default": ""},
            "sites_dir": {"type": "path", "required": True},
            "base_domain": {"type": "str", "default": "localhost"},
            "upstream_host": {"type": "str", "default": "127.0.0.1"},
            "site_directives": {"type": "list", "elements": "str", "default": []},
            "site_mode": {"type": "str", "default": "0644"},
            "site_validate": {"type": "str", "default": ""},
            "reload_command": {"type": "list", "elements": "str", "default": []},
            "reload_environment": {"type": "dict", "default": {}},
            "lock_file": {"type": "path", "default": ""},
            "podman": {"type": "str", "default": "podman"},
            **{k: v for k, v in instances.SHARED_OPTIONS.items() if k != "keep_count"},
        },
        supports_check_mode=True,
    )
    p = module.params
    if p["parallel"] < 1:
        module.fail_json(msg=f"parallel must be at least 1, not {p['parallel']}")
    binary = shutil.which(p["podman"])
    if binary is None:  # nothing can converge on this host
        module.fail_json(msg=f"{p['podman']} not found on this host", failure_kind="host")
    nft = module.get_bin_path("nft", opt_dirs=["/usr/sbin", "/sbin"]) if p["egress_table"] else None
    try:
        seen = observe.host(observe.run_command, binary, p["instance"], p["host"], p["sites_dir"], p["caddy_admin"],
                            nft, p["egress_table"])
    except observe.ObserveError as exc:
        module.fail_json(msg=str(exc), failure_kind="host")
    blocked = [name for name, missing in (("egress", p["egress_table"] and not seen.get("egress")),
                                          ("caddy", p["caddy_admin"] and not seen["caddy"]["running"])) if missing]
    if blocked and not module.check_mode:  # in check mode: plan with what is there
        module.exit_json(changed=False, blocked=blocked)
    desired: list[dict[str, Any]] = p["deployments"]
    try:
        work = plan.converge_plan(desired, seen, (seen.get("caddy") or {}).get("config") or "", p["base_domain"],
                                  known=p["known"], prune=p["prune"], restart_policy=p["restart_policy"])
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    run = Run(module, binary)
    site_settings = settings(p)
    started: list[dict[str, Any]] = []
    written: dict[str, Any] = {}
    orphans = list(work["drift"].get("orphans") or [])
    reloaded = False
    if module.check_mode:
        for ident in work["drift"]:
            if ident != "orphans":
                run.actions[ident] = ["would converge"]
    else:
        run.step("stopped", work["stop"])
        run.step("absent", work["remove"])
        # What it starts was neither stopped nor removed above: the observation still holds for it.
        started = run.step("started", work["start"], seen)
        up = plan.converge_started(work, started)
        routes = [sites.render(site, site_settings) for site in plan.converge_sites(up)]
        gone = work["remove_sites"] + work["orphan_sites"]
        with ThreadPoolExecutor(max_workers=1) as aside:
            # What the started containers run is read, and the digest names the pulls added go,
            # while Caddy is told of what started.
            podman = instances.Podman(binary, [])

            def read_and_untag() -> None:
                instances.fill_digests(podman, started)
                instances.untag_digests(podman, run.untag)

            untagged = aside.submit(read_and_untag)
            if routes or gone or work["reload"]:
                try:
                    written = sites.apply(module, site_settings, routes, gone, work["reload"])
                except sites.ReloadError as exc:  # Caddy keeps its old config; the run is retried
                    module.fail_json(msg=str(exc), failure_kind="host")
                reloaded = written["reloaded"]
            untagged.result()
        run.step("retired", plan.converge_retire(up, written))
        try:
            run.orphans(work["orphan_containers"], work["orphan_networks"])
        except instances.HostFailure as exc:
            module.fail_json(msg=f"orphans could not be removed: {exc}", failure_kind="host")
    outcomes = plan.converge_outcomes(desired, work, seen, started, written)
    for ident, outcome in outcomes.items():
        mine = run.actions.get(ident)
        if mine:
            outcome["actions"] = mine
        if outcome["ok"] and ident in run.failures:
            outcome |= run.failures[ident]
    changed = bool(reloaded or orphans or written.get("changed") or any(run.actions.values()))
    result: dict[str, Any] = {"changed": changed, "blocked": blocked, "outcomes": outcomes, "orphans": orphans,
                              "reloaded": reloaded,
                              "plan": {k: ([str(i["id"]) for i in v] if k in ("start", "stop", "remove") else v)
                                       for k, v in work.items()}}
    if module._diff:
        result["diff"] = [{"prepared": diff_text(outcomes, {"remove site": work["remove_sites"],
                                                            "remove orphan": orphans})},
                          *(written.get("diff") or [])]
    module.exit_json(**result)


if __name__ == "__main__":
    main()

"""The converge and reconcile playbooks against the real thing: Podman, Caddy with its local CA, a registry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.engine.conftest import PLAYBOOKS, VENV_BIN, Engine

pytestmark = pytest.mark.slow

TRICKY_VALUES = {
    "TEMPLATE": "{{ lookup('pipe', 'id') }}",
    "BLOCK": "{% if true %}yes{% endif %}",
    "SHELL": '$(id) `id` ${HOME} it\'s "quoted"',
    "MULTILINE": "line one\nline two",
    "SECRET_TOKEN": "s3cr3t-value-that-must-not-be-logged",
}


def host_of(item: dict[str, Any]) -> str:
    return f"{item['subdomain']}.localhost"


def site_file(engine: Engine, item: dict[str, Any]) -> Path:
    return engine.sites_dir / f"{item['subdomain']}.caddy"


def containers_of(item: dict[str, Any]) -> list[dict[str, Any]]:
    out = subprocess.run(["podman", "ps", "-a", "--format", "json", "--filter",
                          f"label=buddo.deployment_id={item['id']}"], capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout or "[]"))


def absent(item: dict[str, Any]) -> dict[str, Any]:
    return {**item, "state": "absent"}


def network_of(item: dict[str, Any]) -> dict[str, Any] | None:
    """The deployment's own network as `podman network inspect` shows it; None when there is none."""
    out = subprocess.run(["podman", "network", "inspect", f"buddo-{item['id']}"], capture_output=True, text=True)
    return dict(json.loads(out.stdout)[0]) if out.returncode == 0 else None


def test_converge_runs_replaces_stops_and_removes_idempotently(engine: Engine) -> None:
    image = engine.push_demo("v1", "conv")
    item = engine.deployment("life", engine.registry + "/demo/hello:conv")
    assert image == item["image"]
    try:
        first = engine.converged([item])
        outcome = first.outcome(item)
        assert outcome["ok"]
        assert outcome["drift"] == ["container missing", "site missing", "caddy does not serve the site"]
        assert outcome["container"]["host_port"] == item["host_ports"][0]
        assert outcome["container"]["image_digest"].startswith("sha256:")
        assert engine.https_get(host_of(item)) == (200, engine.https_get(host_of(item))[1])
        assert "version v1" in engine.https_get(host_of(item))[1]
        [container] = containers_of(item)
        info = engine.container(container["Id"])
        assert info is not None
        assert info["HostConfig"]["Memory"] == 64 * 1024 * 1024 and info["HostConfig"]["NanoCpus"] == 250_000_000
        assert info["Config"]["Labels"]["buddo.instance"] == engine.instance
        assert info["Name"] == item["container_name"]
        assert list(info["NetworkSettings"]["Networks"]) == [f"buddo-{item['id']}"]
        network = network_of(item)
        assert network is not None and network["options"] == {"isolate": "true"} and not network["dns_enabled"]
        assert network["labels"]["buddo.instance"] == engine.instance

        again = engine.converged([item])
        assert again.changed == 0 and again.outcome(item)["drift"] == []

        # A new spec (a restart): the new container starts on the other port, then takes the name.
        engine.push_demo("v2", "conv")
        newer = {**item, "spec": "restart-2", "revision": 2, "pull": "always", "generation": 2}
        replaced = engine.converged([newer])
        assert replaced.outcome(newer)["container"]["host_port"] == item["host_ports"][1]
        assert "version v2" in engine.https_get(host_of(item))[1]
        assert [c["Names"][0] for c in containers_of(item)] == [item["container_name"]]
        assert engine.converged([newer]).changed == 0

        # Check mode reports the drift and changes nothing.
        stopped = {**newer, "state": "stopped", "generation": 3}
        dry = engine.converged([stopped], check=True)
        assert dry.outcome(stopped)["drift"] == ["container running"]
        assert containers_of(item)[0]["State"] == "running"

        engine.converged([stopped])
        assert containers_of(item)[0]["State"] != "running"
        assert site_file(engine, item).exists()  # a stopped deployment keeps its route (502 until it runs)
        assert engine.converged([stopped]).changed == 0
    finally:
        gone = engine.converged([absent(item)])
    assert gone.outcome(item)["ok"]
    assert containers_of(item) == [] and not site_file(engine, item).exists() and network_of(item) is None
    assert f'"{host_of(item)}"' not in engine.live_config()
    assert engine.converged([absent(item)]).changed == 0


def test_env_values_reach_the_container_verbatim_and_stay_out_of_files(engine: Engine) -> None:
    item = engine.deployment("env", f"{engine.registry}/demo/hello:v1")
    try:
        done = engine.converged([item], env={item["id"]: TRICKY_VALUES})
        assert done.outcome(item)["ok"], json.dumps(done.outcome(item))
        [container] = containers_of(item)
        env = engine.container_env(container["Id"])
        for key, value in TRICKY_VALUES.items():
            if key != "MULTILINE":  # `env` prints one variable a line
                assert env[key] == value, key
        config = engine.container(container["Id"])
        assert config is not None
        assert "MULTILINE=line one\nline two" in config["Config"]["Env"]
        text = json.dumps([e.__dict__ for e in done.events]) + json.dumps(done.outcomes)
        assert TRICKY_VALUES["SECRET_TOKEN"] not in text
        # The session's files (runner dirs, logs, Caddy) and whatever secret dirs are left on tmpfs.
        places = [str(engine.root), *map(str, Path("/dev/shm").glob("buddo-secrets-*"))]
        leaked = subprocess.run(["grep", "-rl", TRICKY_VALUES["SECRET_TOKEN"], *places],
                                capture_output=True, text=True)
        assert leaked.stdout == "", f"secret found in files: {leaked.stdout}"
    finally:
        engine.converged([absent(item)])


def test_a_rejected_site_fails_its_own_deployment_only(engine: Engine) -> None:
    image = f"{engine.registry}/demo/hello:v1"
    first = engine.deployment("siteok", image)
    engine.converged([first])
    site_before = site_file(engine, first).read_text()
    # A second deployment claiming the first one's host as its custom domain, and a third that is fine.
    clash = engine.deployment("clash", image, custom_domain=host_of(first))
    fine = engine.deployment("fine", image)
    try:
        done = engine.converged([clash, fine])
        failed = done.outcome(clash)
        assert not failed["ok"] and failed["kind"] == "app"
        assert "Caddy rejected the site" in failed["message"] and "ambiguous site definition" in failed["message"]
        assert not site_file(engine, clash).exists()
        assert done.outcome(fine)["ok"] and engine.https_get(host_of(fine))[0] == 200
        assert engine.https_get(host_of(first))[0] == 200

        # An invalid directive in an existing site: the live file and config stay.
        bad = engine.converge([{**first, "spec": "other"}],
                              extra={"converge_site_directives": ["no_such_directive on"]})
        assert not bad.outcome(first)["ok"] and "unrecognized directive" in bad.outcome(first)["message"]
        assert site_file(engine, first).read_text() == site_before
        assert engine.https_get(host_of(first))[0] == 200
    finally:
        engine.converged([absent(clash), absent(fine), absent(first)])


def test_a_missing_image_fails_its_deployment_with_the_reason(engine: Engine) -> None:
    item = engine.deployment("noimage", f"{engine.registry}/demo/does-not-exist:v0")
    done = engine.converged([item])
    outcome = done.outcome(item)
    assert not outcome["ok"] and outcome["kind"] == "app"
    assert f"image {item['image']} could not be pulled" in outcome["message"]
    assert containers_of(item) == [] and not site_file(engine, item).exists()


def test_an_app_that_never_answers_fails_and_leaves_nothing_behind(engine: Engine) -> None:
    item = engine.deployment("silent", f"{engine.registry}/demo/hello:v1", port=3999)
    done = engine.converged([item], extra={"converge_wait_timeout": 3})
    outcome = done.outcome(item)
    assert not outcome["ok"] and outcome["kind"] == "app"
    assert f"app did not answer on http://127.0.0.1:{item['host_ports'][0]}/ within 3 s" in outcome["message"]
    assert containers_of(item) == []


def test_one_module_run_converges_many_and_a_bad_one_fails_alone(engine: Engine) -> None:
    """Four deployments converge in one converge module run; one with a missing image fails alone,
    the task does not fail; then a replacement retires three at once and a destroy removes them all."""
    image = f"{engine.registry}/demo/hello:v1"
    good = [engine.deployment(f"many{n}", image) for n in range(3)]
    bad = engine.deployment("manybad", f"{engine.registry}/demo/does-not-exist:v0")
    try:
        done = engine.converged([good[0], bad, *good[1:]])
        failed = done.outcome(bad)
        assert not failed["ok"] and failed["kind"] == "app" and failed["task"] == "Run the app containers"
        assert f"image {bad['image']} could not be pulled" in failed["message"]
        # One module run: one result event; the bad one's failure is its own outcome, not the task's.
        [run] = [e for e in done.events
                 if e.task == "Converge the deployments of this host" and e.event.startswith("runner_on")]
        assert run.event == "runner_on_ok"
        for item in good:
            assert done.outcome(item)["ok"], done.outcome(item)
            assert engine.https_get(host_of(item))[0] == 200
            assert network_of(item) is not None
        assert containers_of(bad) == [] and network_of(bad) is None

        # A new spec for the three: started beside the serving ones, then retired in one run.
        newer = [{**item, "spec": f"{item['spec']}-2", "generation": 2} for item in good]
        replaced = engine.converged(newer)
        for old, item in zip(good, newer, strict=True):
            assert replaced.outcome(item)["container"]["host_port"] == old["host_ports"][1]
            assert [c["Names"][0] for c in containers_of(item)] == [item["container_name"]]
            assert engine.https_get(host_of(item))[0] == 200
        # One module run started the three beside the serving ones, switched Caddy and retired the old ones.
        [run] = [e for e in replaced.events
                 if e.task == "Converge the deployments of this host" and e.event.startswith("runner_on")]
        assert run.event == "runner_on_ok" and replaced.changed == 1
        for item in newer:
            assert any(a.startswith("retired 1 old container") for a in replaced.outcome(item)["actions"])
    finally:
        gone = engine.converged([absent(item) for item in [*good, bad]])
    for item in good:
        assert gone.outcome(item)["ok"] and containers_of(item) == [] and network_of(item) is None
        assert not site_file(engine, item).exists()


def test_a_new_deployment_takes_over_the_site_of_one_destroyed_in_the_same_run(engine: Engine) -> None:
    """A host run holds both: the destroy of the old one and the create of its successor on the same
    subdomain (one site file). The file is the successor's afterwards, and Caddy serves it."""
    image = f"{engine.registry}/demo/hello:v1"
    old = engine.deployment("takeover", image)
    assert engine.converged([old]).outcome(old)["ok"]
    new = engine.deployment("takeover", image, container_name=f"{old['container_name']}-2")
    try:
        done = engine.converged([absent(old), new])
        assert done.outcome(old)["ok"] and done.outcome(new)["ok"], done.outcomes
        assert containers_of(old) == [] and len(containers_of(new)) == 1
        assert new["id"] in site_file(engine, new).read_text()
        assert engine.https_get(host_of(new))[0] == 200
    finally:
        engine.converged([absent(new)])


def test_a_malformed_document_fails_before_anything_changes(engine: Engine) -> None:
    done = engine.converge([{"id": "x", "host": "container-host-1", "subdomain": "Bad_Name", "state": "running"}])
    assert not done.result.ok and done.changed == 0
    assert "converge_deployments" in (done.result.message or "")


def test_a_rerun_after_an_interrupted_run_converges(engine: Engine) -> None:
    image = f"{engine.registry}/demo/hello:v1"
    item = engine.deployment("rerun", image)
    site = site_file(engine, item)
    engine.converged([item])

    # Killed after writing the site file, before the reload: Caddy does not route it.
    parked = site.with_name("parked")
    site.rename(parked)
    reload_caddy(engine)
    parked.rename(site)
    assert f'"{host_of(item)}"' not in engine.live_config()
    # ...and a temp file left by a move the kill interrupted, which Caddy would import.
    leftover = engine.sites_dir / f".ansible_tmpabc123{site.name}"
    leftover.write_text("not a caddyfile {{{\n")
    old = time.time() - 300
    os.utime(leftover, (old, old))
    # ...and the container gone (killed between remove and create).
    subprocess.run(["podman", "rm", "-f", "-t", "0", item["container_name"]], check=True, capture_output=True)

    rerun = engine.converged([item])
    assert rerun.outcome(item)["drift"] == ["container missing", "caddy does not serve the site"]
    assert not leftover.exists()
    assert engine.https_get(host_of(item))[0] == 200
    assert [c["Names"][0] for c in containers_of(item)] == [item["container_name"]]

    # A run killed mid-way through a replacement (SIGKILL of the whole process group).
    newer = {**item, "spec": "killed", "generation": 2}
    proc = subprocess.Popen(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(engine.inventory), str(PLAYBOOKS / "converge.yml"),
         "-e", json.dumps({"converge_deployments": [newer], "converge_instance": engine.instance})],
        env=engine.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while len(containers_of(item)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert engine.https_get(host_of(item))[0] == 200  # the old container still serves
    engine.converged([newer])
    assert [c["Names"][0] for c in containers_of(item)] == [item["container_name"]]
    assert engine.https_get(host_of(item))[0] == 200

    # Destroy killed after deleting the site file, before the reload.
    site.unlink()
    assert f'"{host_of(item)}"' in engine.live_config()
    engine.converged([absent(newer)])
    assert f'"{host_of(item)}"' not in engine.live_config()
    assert containers_of(item) == []


def test_reconcile_removes_orphans_of_its_own_instance_only(engine: Engine) -> None:
    image = f"{engine.registry}/demo/hello:v1"
    kept = engine.deployment("kept", image)
    engine.converged([kept])
    ghost = engine.deployment("ghost", image)
    foreign = engine.deployment("foreign", image)
    engine.converged([ghost])
    engine.converged([foreign], extra={"converge_instance": f"{engine.instance}-other"})
    try:
        # A document that is not complete for this host (it names no converge_hosts) removes nothing.
        partial = engine.converged([kept], reconcile=True, extra={"converge_hosts": []})
        assert partial.orphans == [] and len(containers_of(ghost)) == 1
        done = engine.converged([kept], reconcile=True)
        assert {f"container {ghost['container_name']}", f"site {ghost['subdomain']}.caddy",
                f"network buddo-{ghost['id']}"} <= set(done.orphans)
        assert not [o for o in done.orphans
                    if foreign["subdomain"] in o or foreign["container_name"] in o or foreign["id"] in o]
        assert containers_of(ghost) == [] and not site_file(engine, ghost).exists() and network_of(ghost) is None
        assert network_of(foreign) is not None and network_of(kept) is not None
        assert len(containers_of(foreign)) == 1  # another platform's container is not ours to remove
        assert len(containers_of(kept)) == 1 and engine.https_get(host_of(kept))[0] == 200
        # A deployment the document knows of without converging it is no orphan.
        assert engine.converged([], reconcile=True, known=[kept["id"]], check=True).orphans == []
    finally:
        engine.converged([absent(kept)])
        engine.converged([absent(foreign)], extra={"converge_instance": f"{engine.instance}-other"})


def test_a_container_from_before_isolation_and_one_with_old_caps_are_replaced(engine: Engine) -> None:
    item = engine.deployment("legacy", f"{engine.registry}/demo/hello:v1")
    # As app_instance ran it before tenants had networks of their own: Podman's shared bridge, no caps.
    labels = {"buddo.deployment_id": item["id"], "buddo.spec": item["spec"], "buddo.managed_by": "buddo-deploy",
              "buddo.instance": engine.instance, "buddo.test": engine.session_id, "buddo.subdomain": item["subdomain"]}
    legacy = ["podman", "run", "-d", "--name", item["container_name"], "--security-opt", "no-new-privileges",
              "--publish", f"127.0.0.1:{item['host_ports'][0]}:3000",
              *[arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")], item["image"]]
    subprocess.run(legacy, check=True, capture_output=True)
    try:
        outcome = engine.converged([item]).outcome(item)
        assert outcome["ok"], outcome
        [reason] = [d for d in outcome["drift"] if d.startswith("settings differ")]
        assert f"network podman, want buddo-{item['id']}" in reason and "pids limit" in reason
        [container] = containers_of(item)
        info = engine.container(container["Id"])
        assert info is not None and info["Name"] == item["container_name"]
        assert list(info["NetworkSettings"]["Networks"]) == [f"buddo-{item['id']}"]
        assert info["HostConfig"]["PidsLimit"] == 64 and info["HostConfig"]["LogConfig"]["Size"] == "5MB"
        assert "CAP_NET_RAW" not in info["EffectiveCaps"]
        assert engine.https_get(host_of(item))[0] == 200

        # The tier's caps changed: the container is replaced beside the serving one.
        bigger = {**item, "pids_limit": 100, "log_max_size_mb": 6, "generation": 2}
        again = engine.converged([bigger])
        assert again.outcome(bigger)["drift"] == ["settings differ (pids limit 64, want 100; log cap 5 MB, want 6 MB)"]
        [container] = containers_of(item)
        info = engine.container(container["Id"])
        assert info is not None and info["HostConfig"]["PidsLimit"] == 100
        assert engine.https_get(host_of(item))[0] == 200
        assert engine.converged([bigger]).changed == 0
    finally:
        engine.converged([absent(item)])
    assert containers_of(item) == [] and network_of(item) is None


def reload_caddy(engine: Engine) -> None:
    subprocess.run(
        ["caddy", "reload", "--config", str(engine.caddy_dir / "Caddyfile"), "--adapter", "caddyfile",
         "--address", engine.admin_address],
        env={**engine.env, "XDG_DATA_HOME": str(engine.caddy_dir / "data")},
        check=True,
        capture_output=True,
    )


def test_bootstrap_installs_a_nightly_reconcile_that_runs(engine: Engine) -> None:
    cron = (engine.root / "cron.d" / "buddo-deploy-reconcile").read_text()
    [line] = [line for line in cron.splitlines() if line and not line.startswith("#") and "=" not in line.split()[0]]
    fields = line.split(None, 6)
    assert fields[:5] == ["17", "3", "*", "*", "*"] and fields[5] == "root"
    (engine.root / "buddo.env").write_text("BUDDO_DATABASE_URL=postgresql://example/buddo\n")
    fake = engine.root / "fake-buddo-deploy"
    fake.write_text(f'#!/bin/sh\necho "$BUDDO_DATABASE_URL $*" > {engine.root}/reconcile-ran\n')
    fake.chmod(0o755)
    subprocess.run(["sh", "-c", fields[6]], check=True, timeout=30)
    assert (engine.root / "reconcile-ran").read_text() == "postgresql://example/buddo reconcile\n"


def test_playbooks_pass_syntax_check(engine: Engine) -> None:
    for playbook in ("bootstrap.yml", "converge.yml", "reconcile.yml", "health.yml", "local_registry.yml"):
        proc = subprocess.run(
            [str(VENV_BIN / "ansible-playbook"), "--syntax-check", "-i", str(engine.inventory),
             str(PLAYBOOKS / playbook)],
            env=engine.env, capture_output=True, text=True,
        )
        assert proc.returncode == 0, proc.stderr

"""The deploy lifecycle through the real playbooks: Podman, Caddy with its local CA, a registry."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.engine.conftest import PLAYBOOKS, VENV_BIN, Engine, UnsafeDumper, tag_unsafe

pytestmark = pytest.mark.slow

TRICKY_VALUES = {
    "TEMPLATE": "{{ lookup('pipe', 'id') }}",
    "BLOCK": "{% if true %}yes{% endif %}",
    "SHELL": '$(id) `id` ${HOME} it\'s "quoted"',
    "SECRET_TOKEN": "s3cr3t-value-that-must-not-be-logged",
}


def host_of(dep: dict[str, Any]) -> str:
    return f"{dep['deployment_subdomain']}.localhost"


def site_file(engine: Engine, dep: dict[str, Any]) -> Path:
    return engine.sites_dir / f"{dep['deployment_subdomain']}.caddy"


def config_env(engine: Engine, name: str) -> dict[str, str]:
    info = engine.container(name)
    assert info is not None, f"container {name} is missing"
    return dict(item.split("=", 1) for item in info["Config"]["Env"])


def test_deploy_restart_stop_destroy(engine: Engine) -> None:
    image = engine.push_demo("v1", "lifecycle")
    dep = engine.deployment("life", image, deployment_memory_limit_mb=96, deployment_cpu_limit_millicores=500)
    name = dep["deployment_container_name"]

    started = time.monotonic()
    first = engine.ok("deploy.yml", dep)
    deploy_seconds = time.monotonic() - started
    assert first.changed > 0
    status, body = engine.https_get(host_of(dep))
    assert status == 200 and "version v1" in body, body

    info = engine.container(name)
    assert info is not None
    assert info["State"]["Status"] == "running"
    assert info["Config"]["Labels"]["buddo.deployment_id"] == dep["deployment_id"]
    assert info["Config"]["Labels"]["buddo.subdomain"] == dep["deployment_subdomain"]
    assert info["HostConfig"]["Memory"] == 96 * 1024 * 1024
    assert info["HostConfig"]["NanoCpus"] == 500_000_000
    assert info["HostConfig"]["Init"] is True
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "always"
    binding = info["HostConfig"]["PortBindings"]["3000/tcp"][0]
    assert (binding["HostIp"], int(binding["HostPort"])) == ("127.0.0.1", dep["deployment_host_port"])
    assert site_file(engine, dep).exists()

    again = engine.ok("deploy.yml", dep)
    assert again.changed == 0, again.output[-3000:]
    assert engine.container(name)["Id"] == info["Id"]  # type: ignore[index]

    engine.push_demo("v2", "lifecycle")
    restarted = engine.ok("restart.yml", dep)
    assert restarted.changed > 0
    status, body = engine.https_get(host_of(dep))
    assert status == 200 and "version v2" in body, body
    new_info = engine.container(name)
    assert new_info is not None and new_info["Id"] != info["Id"]
    assert new_info["ImageDigest"] != info["ImageDigest"]

    assert engine.ok("stop.yml", dep).changed > 0
    assert engine.container(name)["State"]["Status"] == "exited"  # type: ignore[index]
    assert engine.ok("stop.yml", dep).changed == 0

    # stopped -> restart -> running (also the way back from failed)
    engine.ok("restart.yml", dep)
    status, body = engine.https_get(host_of(dep))
    assert status == 200 and "version v2" in body

    assert engine.ok("destroy.yml", dep).changed > 0
    assert engine.container(name) is None
    assert not site_file(engine, dep).exists()
    assert f'"{host_of(dep)}"' not in engine.live_config()
    assert engine.ok("destroy.yml", dep).changed == 0

    print(f"deploy playbook run: {deploy_seconds:.1f}s")


def test_env_values_reach_the_container_verbatim(engine: Engine) -> None:
    image = f"{engine.registry}/demo/hello:v1"
    dep = engine.deployment("env", image)
    name = dep["deployment_container_name"]

    # The worker's way: secrets in the process environment, never in extravars.
    result = engine.ok("deploy.yml", dep, env={"BUDDO_DEPLOYMENT_ENV_JSON": json.dumps(TRICKY_VALUES)})
    env = config_env(engine, name)
    for key, value in TRICKY_VALUES.items():
        assert env[key] == value
    assert engine.container_env(name)["TEMPLATE"] == TRICKY_VALUES["TEMPLATE"]
    assert TRICKY_VALUES["SECRET_TOKEN"] not in result.output

    # The worker's other way: a JSON file on the controller, named by an extra var.
    env_file = engine.root / "env-file.json"
    env_file.write_text(json.dumps({**TRICKY_VALUES, "FROM_FILE": "{{ 6 * 7 }}"}))
    env_file.chmod(0o600)
    result = engine.ok("deploy.yml", {**dep, "deployment_env_file": str(env_file)})
    env = config_env(engine, name)
    assert env["FROM_FILE"] == "{{ 6 * 7 }}"
    assert env["TEMPLATE"] == TRICKY_VALUES["TEMPLATE"]
    assert TRICKY_VALUES["SECRET_TOKEN"] not in result.output

    # A sysadmin's way: deployment_env as an extra var, tagged !unsafe.
    values = {**TRICKY_VALUES, "EXTRA": "{{ 7 * 6 }}"}
    result = engine.ok("deploy.yml", {**dep, "deployment_env": values})
    env = config_env(engine, name)
    assert env["EXTRA"] == "{{ 7 * 6 }}"
    assert env["TEMPLATE"] == TRICKY_VALUES["TEMPLATE"]
    assert TRICKY_VALUES["SECRET_TOKEN"] not in result.output

    engine.ok("destroy.yml", dep)


def test_ansible_runner_reports_digest_and_container_id(engine: Engine, tmp_path: Path) -> None:
    """The worker's call: !unsafe extravars file, secrets in a JSON file, set_stats back."""
    ansible_runner = pytest.importorskip("ansible_runner")
    image = f"{engine.registry}/demo/hello:v1"
    secret = "runner-secret-value-1234"
    secret_file = tmp_path / "secret-env.json"
    secret_file.write_text(json.dumps({"API_KEY": secret, "TEMPLATE": TRICKY_VALUES["TEMPLATE"]}))
    secret_file.chmod(0o600)
    dep = engine.deployment("runner", image, deployment_env_file=str(secret_file))
    job = tmp_path / "job"
    (job / "env").mkdir(parents=True)
    (job / "env" / "extravars").write_text(yaml.dump(tag_unsafe(dep), Dumper=UnsafeDumper))
    envvars = {"PATH": engine.env["PATH"], "ANSIBLE_CONFIG": engine.env["ANSIBLE_CONFIG"]}
    try:
        result = ansible_runner.run(
            private_data_dir=str(job),
            playbook=str(PLAYBOOKS / "deploy.yml"),
            inventory=str(engine.inventory),
            envvars=envvars,
            suppress_env_files=True,
            quiet=True,
        )
        assert result.status == "successful", result.stdout.read()[-3000:]
        stats = [e for e in result.events if e.get("event") == "playbook_on_stats"]
        data = stats[-1]["event_data"]["artifact_data"]
        info = engine.container(dep["deployment_container_name"])
        assert info is not None
        assert data["deployment_container_id"] == info["Id"]
        assert data["deployment_image_digest"].startswith("sha256:")
        assert data["deployment_image_digest"] == info["ImageDigest"]
        env = config_env(engine, dep["deployment_container_name"])
        assert env["API_KEY"] == secret
        assert env["TEMPLATE"] == TRICKY_VALUES["TEMPLATE"]
        leaked = subprocess.run(["grep", "-rl", secret, str(job)], capture_output=True, text=True)
        assert leaked.stdout == "", f"secret found in runner files: {leaked.stdout}"
    finally:
        engine.run("destroy.yml", dep)


def test_rejected_site_leaves_the_old_config_serving(engine: Engine) -> None:
    image = f"{engine.registry}/demo/hello:v1"
    first = engine.deployment("siteok", image)
    engine.ok("deploy.yml", first)
    assert engine.https_get(host_of(first))[0] == 200
    site_before = site_file(engine, first).read_text()

    # A second deployment claiming the first one's host as its custom domain.
    clash = engine.deployment("clash", image, deployment_custom_domain=host_of(first))
    try:
        result = engine.run("deploy.yml", clash)
        assert result.rc != 0
        assert "Caddy rejected the site" in result.output
        assert "ambiguous site definition" in result.output
        assert not site_file(engine, clash).exists()
        assert engine.https_get(host_of(first))[0] == 200

        # An invalid directive in an existing site: the live file and config stay.
        result = engine.run("deploy.yml", {**first, "caddy_site_extra_directives": ["no_such_directive on"]})
        assert result.rc != 0
        assert "unrecognized directive" in result.output
        assert site_file(engine, first).read_text() == site_before
        assert engine.https_get(host_of(first))[0] == 200
    finally:
        engine.run("destroy.yml", clash)
        engine.run("destroy.yml", first)


def test_missing_image_fails_cleanly(engine: Engine) -> None:
    dep = engine.deployment("noimage", f"{engine.registry}/demo/does-not-exist:v0")
    result = engine.run("deploy.yml", dep)
    assert result.rc != 0
    assert f"image {dep['deployment_image']} could not be pulled" in result.output
    assert engine.container(dep["deployment_container_name"]) is None
    assert not site_file(engine, dep).exists()


def test_app_that_never_answers_fails_with_a_timeout(engine: Engine) -> None:
    dep = engine.deployment("silent", f"{engine.registry}/demo/hello:v1", deployment_port=3999)
    try:
        result = engine.run("deploy.yml", {**dep, "app_container_wait_timeout": 3})
        assert result.rc != 0
        assert f"app did not answer on port {dep['deployment_host_port']}" in result.output
        assert "within 3 s" in result.output
    finally:
        engine.run("destroy.yml", dep)


def test_missing_variables_fail_before_anything_changes(engine: Engine) -> None:
    result = engine.run("deploy.yml", {"deployment_subdomain": "x"})
    assert result.rc != 0
    assert "missing extra vars: deployment_id, deployment_container_name, deployment_image" in result.output
    assert result.changed == 0


def test_rerun_after_an_interrupted_run_converges(engine: Engine) -> None:
    image = f"{engine.registry}/demo/hello:v1"
    dep = engine.deployment("rerun", image)
    name = dep["deployment_container_name"]
    site = site_file(engine, dep)
    engine.ok("deploy.yml", dep)

    # Killed after writing the site file, before the reload: Caddy does not route it.
    parked = site.with_name("parked")
    site.rename(parked)
    reload_caddy(engine)
    parked.rename(site)
    assert f'"{host_of(dep)}"' not in engine.live_config()
    # ...and a temp file left by a move the kill interrupted, which Caddy would import.
    leftover = engine.sites_dir / f".ansible_tmpabc123{site.name}"
    leftover.write_text("not a caddyfile {{{\n")
    old = time.time() - 300
    os.utime(leftover, (old, old))
    # ...and the container gone (killed between remove and create).
    subprocess.run(["podman", "rm", "-f", "-t", "0", name], check=True, capture_output=True)

    rerun = engine.ok("deploy.yml", dep)
    assert rerun.changed > 0
    assert not leftover.exists()
    assert engine.https_get(host_of(dep))[0] == 200
    listed = subprocess.run(
        [
            "podman",
            "ps",
            "-a",
            "--format",
            "{{.Names}}",
            "--filter",
            f"label=buddo.deployment_id={dep['deployment_id']}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert listed == [name]

    # Destroy killed after deleting the site file, before the reload.
    site.unlink()
    assert f'"{host_of(dep)}"' in engine.live_config()
    engine.ok("destroy.yml", dep)
    assert f'"{host_of(dep)}"' not in engine.live_config()
    assert engine.container(name) is None
    assert engine.ok("destroy.yml", dep).changed == 0


def test_stop_of_an_unknown_container_changes_nothing(engine: Engine) -> None:
    result = engine.ok("stop.yml", {"deployment_container_name": f"engtest-{engine.session_id}-never"})
    assert result.changed == 0


def reload_caddy(engine: Engine) -> None:
    subprocess.run(
        [
            "caddy",
            "reload",
            "--config",
            str(engine.caddy_dir / "Caddyfile"),
            "--adapter",
            "caddyfile",
            "--address",
            engine.admin_address,
        ],
        env={**engine.env, "XDG_DATA_HOME": str(engine.caddy_dir / "data")},
        check=True,
        capture_output=True,
    )


def test_playbooks_pass_syntax_check(engine: Engine) -> None:
    for playbook in ("bootstrap.yml", "deploy.yml", "restart.yml", "stop.yml", "destroy.yml", "local_registry.yml"):
        proc = subprocess.run(
            [
                str(VENV_BIN / "ansible-playbook"),
                "--syntax-check",
                "-i",
                str(engine.inventory),
                str(PLAYBOOKS / playbook),
            ],
            env=engine.env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr

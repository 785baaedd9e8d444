"""The converge role: one converge module run for all the deployments of a host, played by
ansible-playbook against tests/unit/fake_podman.py (first on PATH)."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
FAKE = REPO / "tests/unit/fake_podman.py"


@pytest.fixture
def app_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def item(ident: str, port: int, **over: Any) -> dict[str, Any]:
    return {"id": ident, "host": "localhost", "state": "running", "container_name": f"app-{ident}", "subdomain": ident,
            "image": f"registry.test/{ident}:v1",
            "spec": f"spec-{ident}", "port": 3000, "host_ports": [port, port + 1], "memory_limit_mb": 64,
            "cpu_limit_millicores": 250, "pids_limit": 64, "log_max_size_mb": 5, "disk_limit_mb": 0, "labels": {},
            **over}


def play(tmp_path: Path, tasks: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    podman = bin_dir / "podman"
    podman.write_text(f"#!{sys.executable}\n" + FAKE.read_text())
    podman.chmod(0o755)
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "FAKE_PODMAN_DIR": str(tmp_path), "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", "ansible_python_interpreter=" + sys.executable, str(playbook)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)


def converge(sites: Path, items: list[dict[str, Any]], **variables: Any) -> dict[str, Any]:
    """The converge role as the worker plays it, without Caddy or the egress policy (none here)."""
    return {"name": "converge", "ansible.builtin.include_role": {"name": "converge"}, "vars": {
        "converge_deployments": items, "converge_egress": False, "caddy_admin_address": "",
        "caddy_sites_dir": str(sites), "converge_site_validate": "", "caddy_reload_argv": [], "caddy_reload_lock": "",
        **variables}}


def dump(variable: str, path: Path) -> dict[str, Any]:
    return {"name": f"dump {variable}",
            "ansible.builtin.copy": {"content": "{{ " + variable + " | to_json }}", "dest": str(path)}}


def outcomes(tmp_path: Path, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    out = tmp_path / "outcomes.json"
    done = play(tmp_path, [*tasks, dump("_converge_run.outcomes", out)])
    assert done.returncode == 0, done.stdout[-3000:]
    return dict(json.loads(out.read_text()))


def test_one_module_run_converges_each_deployment_on_its_own(tmp_path: Path, app_port: int) -> None:
    sites = tmp_path / "sites"
    sites.mkdir()
    good = item("d1", app_port)
    bad = item("d2", app_port + 10, image="registry.test/missing:v1")
    secret = "role-secret-value"
    env = {"d1": {"TOKEN": secret}, "elsewhere": {"X": "other-host"}}
    first = play(tmp_path, [converge(sites, [good, bad], converge_env=env, converge_output_dir=str(tmp_path / "out")),
                            dump("_converge_run.outcomes", tmp_path / "started.json")])
    assert first.returncode == 0, first.stdout[-3000:]
    # d2's failure is its own outcome (the task does not fail); d1 started all the same, and Caddy routes to it.
    result = json.loads((tmp_path / "started.json").read_text())
    assert result["d1"]["ok"] and result["d1"]["container"]["host_port"] == app_port
    assert not result["d2"]["ok"] and result["d2"]["kind"] == "app" and "could not be pulled" in result["d2"]["message"]
    assert f"reverse_proxy 127.0.0.1:{app_port}" in (sites / "d1.caddy").read_text()
    assert not (sites / "d2.caddy").exists()
    assert secret not in first.stdout and secret not in (tmp_path / "started.json").read_text()
    calls = [json.loads(line)["args"] for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    [run] = [c for c in calls if c[0] == "create"]
    assert "buddo.host=localhost" in run and "buddo.subdomain=d1" in run
    # Only the env of the deployments in the list reaches the host.
    stdin = [json.loads(line)["stdin"] for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert f"TOKEN={secret}" in stdin and not any("other-host" in s for s in stdin)

    # Check mode: the drift is reported, nothing changes.
    before = (tmp_path / "state.json").read_text()
    dry = converge(sites, [{**good, "state": "stopped"}])
    dry["ansible.builtin.include_role"]["apply"] = {"check_mode": True}
    checked = outcomes(tmp_path, [dry])
    assert checked["d1"]["drift"] == ["container running"] and checked["d1"]["actions"] == ["would converge"]
    assert (tmp_path / "state.json").read_text() == before

    stopped = outcomes(tmp_path, [converge(sites, [{**good, "state": "stopped"}])])
    assert stopped["d1"]["ok"] and stopped["d1"]["actions"] == ["stopped 1 container(s)"]
    gone = outcomes(tmp_path, [converge(sites, [{**good, "state": "absent"}, {**bad, "state": "absent"}])])
    assert gone["d1"]["ok"] and gone["d2"]["ok"]
    assert json.loads((tmp_path / "state.json").read_text())["containers"] == []
    assert not (sites / "d1.caddy").exists()

"""The app_container role's entry points, each one app_instance run for all its deployments,
played by ansible-playbook against tests/unit/fake_podman.py (first on PATH)."""

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
    return {"id": ident, "container_name": f"app-{ident}", "subdomain": ident, "image": f"registry.test/{ident}:v1",
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


def role(tasks_from: str, **variables: Any) -> dict[str, Any]:
    return {"name": f"app_container {tasks_from}", "ansible.builtin.include_role": {
        "name": "app_container", "tasks_from": tasks_from}, "vars": variables}


def dump(variable: str, path: Path) -> dict[str, Any]:
    return {"name": f"dump {variable}",
            "ansible.builtin.copy": {"content": "{{ " + variable + " | to_json }}", "dest": str(path)}}


def test_each_entry_point_is_one_module_run_for_all(tmp_path: Path, app_port: int) -> None:
    good = item("d1", app_port)
    bad = item("d2", app_port + 10, image="registry.test/missing:v1")
    secret = "role-secret-value"
    started = play(tmp_path, [
        role("main", app_container_deployments=[good, bad], app_container_env={"d1": {"TOKEN": secret},
                                                                                "elsewhere": {"X": "other-host"}},
             app_container_output_dir=str(tmp_path / "out")),
        dump("app_container_started", tmp_path / "started.json"),
        role("stop", app_container_deployments=[good, bad]),
        role("retire", app_container_deployments=[{**good, "container_id": "id-app-d1"}]),
        role("remove", app_container_deployments=[good, bad]),
    ])
    assert started.returncode == 0, started.stdout[-3000:]
    # d2's failure is its own (reported per deployment, the task does not fail); d1 started all the same.
    assert "...ignoring" not in started.stdout
    result = json.loads((tmp_path / "started.json").read_text())
    first, second = result["deployments"]
    assert first["container"]["host_port"] == app_port and not first["failed"]
    assert second["failed"] and second["failure_kind"] == "app" and "could not be pulled" in second["msg"]
    assert secret not in started.stdout and secret not in (tmp_path / "started.json").read_text()
    calls = [json.loads(line)["args"] for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    [run] = [c for c in calls if c[0] == "create"]
    assert "buddo.host=localhost" in run and "buddo.subdomain=d1" in run
    assert json.loads((tmp_path / "state.json").read_text())["containers"] == []
    # Only the env of the deployments in the list reaches the host.
    stdin = [json.loads(line)["stdin"] for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert f"TOKEN={secret}" in stdin and not any("other-host" in s for s in stdin)

    # A deployment that cannot be retired fails the task, once the others are done.
    failed = play(tmp_path, [role("retire", app_container_deployments=[{**good, "container_id": "gone"}])])
    assert failed.returncode != 0 and "1 of 1 deployment(s) failed: d1: container gone of deployment d1 is gone" \
        in failed.stdout

"""Engine tests: the real playbooks against this machine (Podman, Caddy, a registry).

A session builds its own world beside whatever `make up` runs: an inventory in a
tmp dir, a registry, Caddy and app host ports picked free, and Caddy's files under
the tmp dir. Every container it creates carries the label buddo.test=<session id>
and is removed at the end, as are the registry and Caddy it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from buddo_deploy.runner import unsafe_json

from tests.helpers import CADDY_ADMIN_PORTS, EGRESS_HOST_PORTS, free_port

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
PLAYBOOKS = REPO / "playbooks"
PLAYBOOK_TIMEOUT = 600
REGISTRIES_CONF_DIR = Path("/etc/containers/registries.conf.d")


@dataclass
class PlaybookRun:
    rc: int
    output: str
    recap: dict[str, int] = field(default_factory=dict)

    @property
    def changed(self) -> int:
        return self.recap.get("changed", -1)

    @property
    def failed(self) -> int:
        return self.recap.get("failed", -1)


def parse_recap(output: str) -> dict[str, int]:
    match = re.search(r"^container-host-1\s*:\s*(.*)$", output, re.MULTILINE)
    if not match:
        return {}
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


@dataclass
class Converged:
    result: Any  # buddo_deploy.runner.PlaybookResult
    outcomes: dict[str, Any]
    changed: int
    events: list[Any]
    orphans: list[str]

    def outcome(self, item: dict[str, Any]) -> dict[str, Any]:
        found: dict[str, Any] = self.outcomes[item["id"]]
        return found


def free_port_pair() -> list[int]:
    """Two consecutive free ports: a deployment's host ports."""
    while True:
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return [port, port + 1]


@dataclass
class Engine:
    """Runs the playbooks against the session's inventory."""

    root: Path
    inventory: Path
    session_id: str
    registry: str
    https_port: int
    http_port: int
    admin_address: str
    caddy_dir: Path
    env: dict[str, str]
    _counter: int = 0

    @property
    def ca_cert(self) -> Path:
        return self.caddy_dir / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    @property
    def sites_dir(self) -> Path:
        return self.caddy_dir / "sites"

    def run(
        self,
        playbook: str,
        extravars: dict[str, Any] | None = None,
        *,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> PlaybookRun:
        """ansible-playbook with extra vars written as the worker writes them (every string !unsafe)."""
        self._counter += 1
        command = [str(VENV_BIN / "ansible-playbook"), "-i", str(self.inventory), str(PLAYBOOKS / playbook)]
        if extravars is not None:
            vars_file = self.root / f"extravars-{self._counter}.json"
            vars_file.write_text(unsafe_json(extravars))
            command += ["-e", f"@{vars_file}"]
        command += args or []
        proc = subprocess.run(
            command,
            env={**self.env, **(env or {})},
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=PLAYBOOK_TIMEOUT,
        )
        output = proc.stdout + proc.stderr
        (self.root / f"run-{self._counter}-{Path(playbook).stem}.log").write_text(output)
        return PlaybookRun(proc.returncode, output, parse_recap(output))

    def ok(self, playbook: str, extravars: dict[str, Any] | None = None, **kwargs: Any) -> PlaybookRun:
        result = self.run(playbook, extravars, **kwargs)
        assert result.rc == 0, f"{playbook} failed:\n{result.output[-4000:]}"
        return result

    @property
    def instance(self) -> str:
        return f"engtest-{self.session_id}"

    def push_demo(self, version: str, tag: str, port: int = 3000) -> str:
        self.ok("local_registry.yml", {"local_registry_demo_version": version, "local_registry_demo_tag": tag,
                                       "local_registry_demo_port": port})
        return f"{self.registry}/demo/hello:{tag}"

    def deployment(self, name: str, image: str, **overrides: Any) -> dict[str, Any]:
        """One item of the desired-state document, unique to this session."""
        suffix = f"{self.session_id}-{name}"
        data: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "host": "container-host-1",
            "subdomain": f"et{suffix}"[:32].rstrip("-"),
            "container_name": f"engtest-{suffix}",
            "state": "running",
            "generation": 1,
            "image": image,
            "port": 3000,
            "host_ports": free_port_pair(),
            "memory_limit_mb": 64,
            "cpu_limit_millicores": 250,
            "pids_limit": 64,
            "log_max_size_mb": 5,
            "disk_limit_mb": 256,
            "custom_domain": "",
            "spec": uuid.uuid4().hex[:24],
            "revision": 1,
            "pull": "missing",
            "labels": {"buddo.test": self.session_id},
        }
        data.update(overrides)
        return data

    def converge(
        self,
        items: list[dict[str, Any]],
        *,
        env: dict[str, dict[str, str]] | None = None,
        reconcile: bool = False,
        check: bool = False,
        known: list[str] | None = None,
        extra: dict[str, Any] | None = None,
        secret_files: dict[str, str] | None = None,
        keep_data_dir: bool = False,
    ) -> Converged:
        """converge.yml (or reconcile.yml) through the runner bridge, as the worker runs it."""
        from buddo_deploy.results import EventSummary
        from buddo_deploy.runner import run_playbook

        recap: dict[str, Any] = {}
        events: list[EventSummary] = []

        def on_event(summary: EventSummary) -> None:
            events.append(summary)
            if summary.event == "playbook_on_stats" and summary.message:
                recap.update(json.loads(summary.message))

        result = run_playbook(
            PLAYBOOKS / ("reconcile.yml" if reconcile else "converge.yml"),
            self.inventory,
            {"converge_deployments": items, "converge_instance": self.instance, "converge_known": known or [],
             "converge_hosts": ["container-host-1"] if reconcile else [], **(extra or {})},
            secrets=env or {},
            secret_files=secret_files,
            check=check,
            on_event=on_event,
            timeout_s=PLAYBOOK_TIMEOUT,
            work_dir=self.root / "runner",
            keep_data_dir=keep_data_dir,
        )
        changed = sum((recap.get("changed") or {}).values())
        return Converged(result, dict(result.stats.get("buddo_outcomes") or {}), changed, events,
                         list(result.stats.get("buddo_orphans") or []))

    def converged(self, items: list[dict[str, Any]], **kwargs: Any) -> Converged:
        done = self.converge(items, **kwargs)
        assert done.result.ok, f"{done.result.status}: {done.result.failed_task}: {done.result.message}"
        return done

    def https_get(self, host: str, *, attempts: int = 20) -> tuple[int, str]:
        """GET https://<host>:<https port>/ through Caddy, trusting only its local CA.

        Caddy issues the certificate right after a reload, so the first handshakes
        may fail for a moment.
        """
        last = (0, "")
        for _ in range(attempts):
            proc = subprocess.run(
                [
                    "curl",
                    "-sS",
                    "--max-time",
                    "5",
                    "--cacert",
                    str(self.ca_cert),
                    "--resolve",
                    f"{host}:{self.https_port}:127.0.0.1",
                    "-w",
                    "\n%{http_code}",
                    f"https://{host}:{self.https_port}/",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            body, _, code = proc.stdout.rpartition("\n")
            last = (int(code or 0), body if proc.returncode == 0 else proc.stderr)
            if proc.returncode == 0 and last[0] != 0:
                return last
            time.sleep(0.5)
        return last

    def container(self, name: str) -> dict[str, Any] | None:
        proc = subprocess.run(["podman", "inspect", "--type", "container", name], capture_output=True, text=True)
        if proc.returncode != 0:
            return None
        info: dict[str, Any] = json.loads(proc.stdout)[0]
        return info

    def container_env(self, name: str) -> dict[str, str]:
        proc = subprocess.run(
            ["podman", "exec", name, "/bin/busybox", "env"], capture_output=True, text=True, check=True
        )
        return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)

    def live_config(self) -> str:
        proc = subprocess.run(
            ["curl", "-sS", f"http://{self.admin_address}/config/"], capture_output=True, text=True, timeout=10
        )
        return proc.stdout


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        PATH=f"{VENV_BIN}:/usr/local/sbin:/usr/sbin:/sbin:{os.environ.get('PATH', '/usr/bin:/bin')}",
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
    )
    env.pop("BUDDO_DEPLOYMENT_ENV_JSON", None)
    return env


def _inventory(
    root: Path, *, registry: str, registries_conf: Path, http_port: int, https_port: int, admin_address: str
) -> dict[str, Any]:
    caddy_dir = root / "caddy"
    return {
        "container_hosts": {
            "hosts": {
                "container-host-1": {
                    "ansible_connection": "local",
                    "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                }
            },
            "vars": {
                "caddy_config_dir": str(caddy_dir),
                "caddy_data_dir": str(caddy_dir / "data"),
                "caddy_state_dir": str(caddy_dir / "state"),
                "caddy_http_port": http_port,
                "caddy_https_port": https_port,
                "caddy_admin_address": admin_address,
                "caddy_local_certs": True,
                "caddy_service_mode": "daemon",
                "converge_base_domain": "localhost",
                "container_host_insecure_registries": [registry],
                # Beside (not over) the file `make up`'s bootstrap writes.
                "container_host_registries_conf": str(registries_conf),
                "local_registry_address": registry,
                "local_registry_dir": str(root / "registry"),
                "converge_wait_timeout": 30,
                "container_host_egress_host_ports": EGRESS_HOST_PORTS,
                "container_host_caddy_admin_ports": CADDY_ADMIN_PORTS,
            },
        },
        # This machine is the controller too: bootstrap installs the nightly reconcile
        # into the session's directory, running a stand-in that records its call.
        "controllers": {
            "hosts": {"container-host-1": {}},
            "vars": {
                "reconcile_timer_cron_file": str(root / "cron.d" / "buddo-deploy-reconcile"),
                "reconcile_timer_lock_file": str(root / "reconcile.lock"),
                "reconcile_timer_env_file": str(root / "buddo.env"),
                "reconcile_timer_command": str(root / "fake-buddo-deploy"),
            },
        },
    }


def _kill_matching(pattern: str) -> None:
    """Stop the one process whose command line names this session's own files."""
    proc = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    for pid in proc.stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGTERM)


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """Registry + demo image + bootstrap (Podman config, Caddy) for the whole session."""
    for tool in ("podman", "caddy", "curl", "docker-registry"):
        if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
            pytest.fail(f"{tool} is not installed: `make test` runs playbooks/bootstrap.yml and local_registry.yml")
    if os.geteuid() != 0:
        pytest.fail("engine tests run Podman and apt as root")

    root = tmp_path_factory.mktemp("engine")
    session_id = uuid.uuid4().hex[:6]
    registry = f"127.0.0.1:{free_port()}"
    http_port, https_port, admin_port = free_port(), free_port(), free_port()
    admin_address = f"127.0.0.1:{admin_port}"
    inventory = root / "inventory.yml"
    inventory.write_text(
        yaml.safe_dump(
            _inventory(
                root,
                registry=registry,
                registries_conf=REGISTRIES_CONF_DIR / f"60-buddo-engine-test-{session_id}.conf",
                http_port=http_port,
                https_port=https_port,
                admin_address=admin_address,
            )
        )
    )
    engine = Engine(
        root=root,
        inventory=inventory,
        session_id=session_id,
        registry=registry,
        https_port=https_port,
        http_port=http_port,
        admin_address=admin_address,
        caddy_dir=root / "caddy",
        env=_base_env(),
    )
    (root / "cron.d").mkdir()
    try:
        engine.ok("bootstrap.yml")
        engine.ok("local_registry.yml", {"local_registry_demo_version": "v1", "local_registry_demo_tag": "v1"})
        yield engine
    finally:
        _cleanup(engine)


def _cleanup(engine: Engine) -> None:
    ids = subprocess.run(
        ["podman", "ps", "-aq", "--filter", f"label=buddo.test={engine.session_id}"], capture_output=True, text=True
    ).stdout.split()
    if ids:
        subprocess.run(["podman", "rm", "-f", "-t", "0", *ids], capture_output=True)
    networks = subprocess.run(
        ["podman", "network", "ls", "-q", "--filter", f"label=buddo.instance={engine.instance}"],
        capture_output=True, text=True,
    ).stdout.split()
    if networks:
        subprocess.run(["podman", "network", "rm", "-f", *networks], capture_output=True)
    images = subprocess.run(
        ["podman", "images", "-q", "--filter", f"reference={engine.registry}/*/*"], capture_output=True, text=True
    ).stdout.split()
    if images:
        subprocess.run(["podman", "rmi", "-f", *set(images)], capture_output=True)
    subprocess.run(["caddy", "stop", "--address", engine.admin_address], capture_output=True)
    _kill_matching(f"docker-registry serve {engine.root}/registry/config.yml")
    (REGISTRIES_CONF_DIR / f"60-buddo-engine-test-{engine.session_id}.conf").unlink(missing_ok=True)

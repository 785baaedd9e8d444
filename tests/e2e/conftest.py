"""The real platform for end-to-end tests: API + worker processes, Podman, Caddy, a registry.

The stack gets its own Caddy (ports 18080/18443, admin 127.0.0.1:12019), its own
state directory and database, and its own host-port range, so it runs beside a
`make up` platform on the same machine. The registry on 127.0.0.1:5000 is shared;
test images live under a repository of their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import (
    ASK_SECRET,
    CADDY_ADMIN_PORTS,
    EGRESS_HOST_PORTS,
    JWT_SECRET,
    PRODUCTION_AUTH,
    free_port,
    token,
    wait_until_up,
)

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HTTPS_PORT, HTTP_PORT, ADMIN = 18443, 18080, "127.0.0.1:12019"
# A registry behind htpasswd (tests/e2e/test_registry_logins.py starts it): private images.
PRIVATE_REGISTRY = "127.0.0.1:5001"


def ansible(playbook: str, inventory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
                        "PATH": f"{BIN}:/usr/local/sbin:/usr/sbin:/sbin:{os.environ['PATH']}"}
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), str(ROOT / "playbooks" / playbook), *extra],
        env=env, capture_output=True, text=True, check=False,
    )


def write_inventory(directory: Path, var_dir: Path, **overrides: Any) -> Path:
    group_vars = yaml.safe_load((ROOT / "inventory/local/group_vars/container_hosts.yml").read_text())
    group_vars |= {
        "buddo_var_dir": str(var_dir),
        "caddy_http_port": HTTP_PORT,
        "caddy_https_port": HTTPS_PORT,
        "caddy_admin_address": ADMIN,
        "converge_wait_timeout": 15,
        "container_host_egress_host_ports": EGRESS_HOST_PORTS,
        "container_host_caddy_admin_ports": CADDY_ADMIN_PORTS,
        "container_host_insecure_registries": ["127.0.0.1:5000", PRIVATE_REGISTRY],
        # The registry is shared with `make up`; keep its files where make up keeps them.
        "local_registry_dir": str(ROOT / "var" / "registry"),
    } | overrides
    (directory / "group_vars").mkdir(parents=True, exist_ok=True)
    (directory / "group_vars" / "container_hosts.yml").write_text(yaml.safe_dump(group_vars))
    (directory / "hosts.yml").write_text((ROOT / "inventory/local/hosts.yml").read_text())
    return directory


def descendants(pid: int) -> list[int]:
    """Processes started by ``pid`` (an sshd's sessions, a container's app), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class Stack:
    root: Path
    inventory: Path
    api: str
    env: dict[str, str]
    repository: str
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    subdomains: set[str] = field(default_factory=set)
    api_process: subprocess.Popen[bytes] | None = None
    # Every Caddy the stack started (one per container host), stopped with it.
    caddy_admins: list[str] = field(default_factory=lambda: [ADMIN])

    @property
    def ca(self) -> Path:
        return self.root / "var" / "caddy" / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    @property
    def sites_dir(self) -> Path:
        return self.root / "var" / "caddy" / "sites"

    def headers(self, operator: str = "e2e-operator") -> dict[str, str]:
        return {"Authorization": f"Bearer {token(operator, client_id='e2e-client')}"}

    def push(self, version: str, tag: str = "latest", port: int = 3000) -> str:
        """Build the demo image (busybox httpd on ``port`` saying ``version``) and push it as ``tag``."""
        result = ansible(
            "local_registry.yml", self.inventory, "-e", f"local_registry_demo_version={version}",
            "-e", f"local_registry_demo_tag={tag}", "-e", f"local_registry_demo_repository={self.repository}",
            "-e", f"local_registry_demo_port={port}", "--limit", "container-host-1",  # the one registry
        )
        assert result.returncode == 0, result.stdout[-3000:]
        return f"127.0.0.1:5000/{self.repository}:{tag}"

    def start_worker(self, concurrency: int = 2) -> subprocess.Popen[bytes]:
        log = (self.root / "worker.log").open("ab")
        proc = subprocess.Popen([str(BIN / "buddo-deploy"), "worker", "--concurrency", str(concurrency)], env=self.env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.workers.append(proc)
        return proc

    def _stop_workers(self) -> None:
        for worker in self.workers:
            worker.terminate()
            worker.wait(timeout=120)
        self.workers.clear()

    @contextlib.contextmanager
    def workers_paused(self) -> Iterator[Callable[[], None]]:
        """No worker runs while the body queues changes (so they come up in one run of their host);
        the body calls what this yields to start one (concurrency 1). The usual worker is back after."""
        self._stop_workers()

        def resume() -> None:
            self.start_worker(concurrency=1)

        try:
            yield resume
        finally:
            self._stop_workers()
            self.start_worker()

    def restart_platform(self, env: dict[str, str]) -> None:
        """Restart the API and the worker on ``env`` (e.g. a short billing cycle); Caddy and containers stay."""
        for proc in [*self.workers, self.api_process]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=120)
        self.workers.clear()
        self.env = env
        bind = self.api.removeprefix("http://")
        self.api_process = subprocess.Popen(
            [str(BIN / "buddo-deploy"), "serve", "--bind", bind, "--workers", "2"], env=self.env,
            stdout=(self.root / "api.log").open("ab"), stderr=subprocess.STDOUT)
        wait_until_up(f"{self.api}/api/deploy/openapi.json", self.api_process)
        self.start_worker()

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("headers", self.headers())
        kwargs.setdefault("timeout", 30)
        return requests.request(method, f"{self.api}{path}", **kwargs)

    def create(self, **body: Any) -> dict[str, Any]:
        self.subdomains.add(body["subdomain"])
        resp = self.call("POST", "/api/deploy/apps", json={"tier": "btc-pro", **body})
        assert resp.status_code == 201, resp.text
        return dict(resp.json()["deployment"])

    def wait_for(self, ident: str, statuses: set[str], timeout: float = 120) -> dict[str, Any]:
        """The status once it is one of ``statuses``: the API's own wait (``wait_for``), which
        answers as soon as it is reached."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            wait = max(1, min(60, int(left)))
            status = self.call("GET", f"/api/deploy/apps/{ident}/status", timeout=wait + 30,
                               params={"wait_for": ",".join(sorted(statuses)), "timeout": str(wait)}).json()
            if status["status"] in statuses:
                return dict(status)
        logs = self.call("GET", f"/api/deploy/apps/{ident}/logs").json()
        raise AssertionError(f"{ident} never reached {statuses}: {status}; logs: {json.dumps(logs)}")

    def wait_for_audit(self, ident: str, action: str, timeout: float = 90) -> dict[str, Any]:
        """Wait until the latest `action` entry finished, and require that it completed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entries = [e for e in self.logs(ident) if e["action"] == action]
            if entries and entries[-1]["status"] in {"completed", "failed"}:
                assert entries[-1]["status"] == "completed", entries[-1]
                return dict(entries[-1])
            time.sleep(0.5)
        raise AssertionError(f"{action} of {ident} never finished: {self.logs(ident)}")

    def crash_workers(self) -> None:
        """SIGKILL every worker and all it started (no cleanup of any kind), then start a fresh one."""
        for worker in list(self.workers):
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        self.workers.clear()
        self.start_worker()

    def destroy(self, ident: str) -> None:
        """DELETE the deployment and wait until its teardown completed."""
        self.call("DELETE", f"/api/deploy/apps/{ident}")
        self.wait_for_audit(ident, "destroy")

    def wait_for_entry(self, ident: str, match: Callable[[dict[str, Any]], bool],
                       timeout: float = 90) -> dict[str, Any]:
        """Wait for an audit entry that ``match`` accepts."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.logs(ident) if match(e)]
            if found:
                return found[-1]
            time.sleep(0.5)
        raise AssertionError(f"no such audit entry for {ident}: {self.logs(ident)}")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "buddo-deploy"), *args], env=self.env, capture_output=True, text=True,
                              check=False, timeout=600)

    def logs(self, ident: str) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/api/deploy/apps/{ident}/logs").json()["logs"])

    def https(self, subdomain: str) -> subprocess.CompletedProcess[str]:
        host = f"{subdomain}.localhost"
        return subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--cacert", str(self.ca), "--resolve", f"{host}:{HTTPS_PORT}:127.0.0.1",
             "-o", "-", "-w", "\n%{http_code}", f"https://{host}:{HTTPS_PORT}/"],
            capture_output=True, text=True, check=False,
        )

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """GET /metrics: (name, sorted labels) -> value."""
        text = requests.get(f"{self.api}/metrics", timeout=10).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def http_redirect(self, subdomain: str, path: str = "/") -> str:
        """Status and Location of a plain HTTP request to Caddy's HTTP port."""
        host = f"{subdomain}.localhost"
        return subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--resolve", f"{host}:{HTTP_PORT}:127.0.0.1", "-o", "/dev/null",
             "-w", "%{http_code} %{redirect_url}", f"http://{host}:{HTTP_PORT}{path}"],
            capture_output=True, text=True, check=True,
        ).stdout

    def containers(self, subdomain: str) -> list[dict[str, Any]]:
        out = subprocess.run(
            ["podman", "ps", "-a", "--format", "json", "--filter", f"label=buddo.subdomain={subdomain}"],
            capture_output=True, text=True, check=True,
        ).stdout
        return list(json.loads(out or "[]"))

    def inspect(self, name: str) -> dict[str, Any]:
        out = subprocess.run(["podman", "inspect", name], capture_output=True, text=True, check=True).stdout
        return dict(json.loads(out)[0])


class Poller:
    """GET the app through Caddy over HTTPS every 50 ms, in a thread, while in a ``with`` block.

    Keeps every status code seen and, per request, which of ``versions`` the page said
    ("version <v>", the first that matches) or the start of the body when none did.
    """

    def __init__(self, stack: Stack, subdomain: str, versions: tuple[str, ...]) -> None:
        self.stack, self.subdomain, self.known = stack, subdomain, versions
        self.codes: list[str] = []
        self.versions: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopping.is_set():
            page = self.stack.https(self.subdomain)
            body, _, code = page.stdout.rpartition("\n")
            self.codes.append(code or f"curl:{page.returncode}")
            # Of a request that got no answer, why (curl's message).
            said = body[:60] if code not in {"", "000"} else f"curl {page.returncode}: {page.stderr.strip()[:200]}"
            self.versions.append(next((v for v in self.known if f"version {v}" in body), said))
            time.sleep(0.05)

    def __enter__(self) -> Poller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join()


def start_stack(root: Path, configure: Callable[[Path], list[str]] | None = None,
                group_vars: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Stack:
    """Bootstrap a Caddy of the stack's own and start the API and one worker.

    ``configure`` may change the inventory before the bootstrap; it returns the admin
    addresses of the Caddys it configured. ``group_vars`` and ``env`` override the
    inventory's and the platform's settings.
    """
    var_dir = root / "var"
    port = free_port()
    # Caddy asks the stack's API with the stack's ask secret (BUDDO_ASK_SECRET below).
    group_vars = {"caddy_on_demand_tls_ask":
                  f"http://127.0.0.1:{port}/api/deploy/internal/domain-check?token={ASK_SECRET}",
                  **(group_vars or {})}
    inventory = write_inventory(root / "inventory", var_dir, **group_vars)
    admins = configure(inventory) if configure else [str(group_vars.get("caddy_admin_address", ADMIN))]
    boot = ansible("bootstrap.yml", inventory)
    assert boot.returncode == 0, boot.stdout[-4000:]
    overrides = env or {}
    env = os.environ | {
        "BUDDO_VAR_DIR": str(var_dir),
        "BUDDO_DATABASE_URL": f"sqlite:///{var_dir / 'buddo.db'}",
        "BUDDO_JWT_SECRET": JWT_SECRET,
        **PRODUCTION_AUTH,  # what tests.helpers.token() puts in its tokens
        "BUDDO_SECRET_KEY": "e2e-fernet-passphrase-4b8d1e",
        "BUDDO_ASK_SECRET": ASK_SECRET,
        # Stands for a PostgreSQL deployment's database password (this stack is on SQLite):
        # a secret the worker holds that no playbook run may inherit.
        "PGPASSWORD": "e2e-db-password-9c3f7a",
        # Handed to every converge run as a file (DNS is off in this inventory): it must
        # land in no file either.
        "BUDDO_CLOUDFLARE_API_TOKEN": "e2e-cloudflare-token-2d6b8f",
        "BUDDO_ALLOWED_REGISTRIES": f"127.0.0.1:5000/,{PRIVATE_REGISTRY}/,ghcr.io/",
        "BUDDO_PUBLIC_HTTPS_PORT": str(HTTPS_PORT),
        "BUDDO_HOST_PORT_RANGE": "23000-23999",
        "BUDDO_INVENTORY": str(inventory),
        "BUDDO_JOB_LEASE": "6",
        "BUDDO_JOB_TIMEOUT": "180",
        "BUDDO_HEALTH_INTERVAL": "2",
        # Reconcile runs are the tests' own (buddo-deploy reconcile, as cron runs it).
        "BUDDO_RECONCILE_INTERVAL": "0",
        # Its containers apart from those of a `make up` on this machine.
        "BUDDO_INSTANCE": f"e2e-{uuid.uuid4().hex[:8]}",
        "BUDDO_RATE_LIMITS_ENABLED": "false",
        # Webhook receivers are the tests' own, on this machine.
        "BUDDO_WEBHOOK_ALLOW_PRIVATE": "true",
        "BUDDO_KEEP_RUNNER_DATA": "1",
        # Billing on its defaults (30-day cycle), with balances no test runs out of.
        "BUDDO_BILLING_STARTING_POINTS": "100000000",
        "BUDDO_BILLING_STARTING_SATS": "100000000000",
        "BUDDO_BILLING_WEBHOOK_SECRET": "e2e-webhook-secret",
        "PATH": f"{BIN}:{os.environ['PATH']}",
    } | overrides
    api = subprocess.Popen([str(BIN / "buddo-deploy"), "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
                           env=env, stdout=(root / "api.log").open("ab"), stderr=subprocess.STDOUT)
    stack = Stack(root=root, inventory=inventory, api=f"http://127.0.0.1:{port}", env=env,
                  repository=f"e2e/hello-{uuid.uuid4().hex[:8]}", api_process=api, caddy_admins=admins)
    try:
        wait_until_up(f"{stack.api}/api/deploy/openapi.json", api)
        stack.start_worker()
    except BaseException:
        stop_stack(stack)
        raise
    return stack


def stop_stack(stack: Stack) -> None:
    for proc in [*stack.workers, stack.api_process]:
        if proc is not None and proc.poll() is None:
            proc.terminate()  # a worker finishes its running jobs first
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    for subdomain in stack.subdomains:
        ids = [c["Id"] for c in stack.containers(subdomain)]
        if ids:
            subprocess.run(["podman", "rm", "-f", *ids], check=False, capture_output=True)
    networks = subprocess.run(
        ["podman", "network", "ls", "-q", "--filter", f"label=buddo.instance={stack.env['BUDDO_INSTANCE']}"],
        capture_output=True, text=True, check=False,
    ).stdout.split()
    if networks:
        subprocess.run(["podman", "network", "rm", "-f", *networks], check=False, capture_output=True)
    for admin in stack.caddy_admins:
        subprocess.run(["caddy", "stop", "--address", admin], check=False, capture_output=True)


def push_busybox_image(name: str, command: str, scripts: dict[str, str]) -> str:
    """An image of busybox, ``scripts`` in /bin and a writable /tmp, running ``command`` (sh -c) on
    port 3000, pushed to the test registry: an app that misbehaves as a test needs it to."""
    image = f"127.0.0.1:5000/e2e/{name}-{os.getpid()}:v1"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "rootfs"
        (root / "bin").mkdir(parents=True)
        (root / "tmp").mkdir()
        busybox = subprocess.run(["sh", "-c", "command -v busybox"], capture_output=True, text=True, check=True)
        subprocess.run(["cp", busybox.stdout.strip(), str(root / "bin" / "busybox")], check=True)
        for script, text in scripts.items():
            (root / "bin" / script).write_text(text)
            (root / "bin" / script).chmod(0o755)
        (root / "tmp").chmod(0o1777)
        subprocess.run(["tar", "-C", str(root), "-cf", f"{tmp}/rootfs.tar", "."], check=True)
        serve = f"CMD {json.dumps(['/bin/busybox', 'sh', '-c', command])}"
        subprocess.run(["podman", "import", "--change", serve, f"{tmp}/rootfs.tar", image], check=True,
                       capture_output=True)
    subprocess.run(["podman", "push", "--tls-verify=false", image], check=True, capture_output=True)
    return image


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("e2e"))
    try:
        yield stack
    finally:
        stop_stack(stack)

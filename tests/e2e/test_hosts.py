"""Two container hosts on this machine: container-host-1 local, container-host-2 over real SSH.

container-host-2 is this machine again, reached through an sshd the test starts on a
loopback address with a key and a known_hosts file of its own, so every playbook run
for it takes the production connection path (ssh, /usr/bin/python3). Both hosts share
Podman's storage; what keeps them apart is the buddo.host label, each host's own
Caddy (ports, admin address, directories) and its own port range, all from host vars.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Stack, descendants, start_stack, stop_stack

SSH_ADDRESS = "127.0.0.2"
# Both hosts get a Caddy of their own: the session stack's Caddy (conftest's ADMIN, 18443)
# serves the other e2e tests at the same time and must be neither reloaded nor stopped here.
HOST1 = {"https": 19543, "http": 19180, "admin": "127.0.0.1:12021"}
HOST2 = {"https": 19443, "http": 19080, "admin": "127.0.0.1:12020"}


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


@dataclass
class SshHost:
    """An sshd of the test's own on a loopback address: its host key, config and a client key."""

    root: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port(SSH_ADDRESS)
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.root / name)], check=True)
        (self.root / "authorized_keys").write_text((self.root / "client_key.pub").read_text())
        host_key = (self.root / "host_key.pub").read_text().split()
        # The client trusts exactly this host key at this address (as an operator's known_hosts would).
        (self.root / "known_hosts").write_text(f"[{SSH_ADDRESS}]:{self.port} {host_key[0]} {host_key[1]}\n")
        (self.root / "sshd_config").write_text("\n".join([
            f"ListenAddress {SSH_ADDRESS}:{self.port}",
            f"HostKey {self.root / 'host_key'}",
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
            f"PidFile {self.root / 'sshd.pid'}",
            "PermitRootLogin prohibit-password", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no",
            # The key files live under pytest's temporary directory, not in a home directory.
            "StrictModes no",
            "Subsystem sftp internal-sftp",
        ]) + "\n")

    def start(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        log = (self.root / "sshd.log").open("ab")
        self.process = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(self.root / "sshd_config")],
                                        stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex((SSH_ADDRESS, self.port)) == 0:
                    return
            assert self.process.poll() is None, (self.root / "sshd.log").read_text()
            time.sleep(0.1)
        raise AssertionError("sshd did not come up")

    def stop(self) -> None:
        """As if the host went down: the listener and every session it holds (Ansible's ControlPersist)."""
        if self.process is None:
            return
        for pid in [*descendants(self.process.pid), self.process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    def hostvars(self) -> dict[str, Any]:
        return {
            "ansible_connection": "ssh",
            "ansible_host": SSH_ADDRESS,
            "ansible_port": self.port,
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.root / "client_key"),
            # Host key checking on (ansible.cfg turns it off for the local default): the
            # host key must be the one in the test's known_hosts.
            "ansible_ssh_host_key_checking": True,
            "ansible_ssh_common_args": f"-o UserKnownHostsFile={self.root / 'known_hosts'} -o ConnectTimeout=5",
            "ansible_python_interpreter": "/usr/bin/python3",
        }


@dataclass
class TwoHosts:
    stack: Stack
    ssh: SshHost

    def https(self, subdomain: str, host: str) -> subprocess.CompletedProcess[str]:
        """GET the app through the Caddy of ``host`` (each Caddy has its own local CA)."""
        var = self.stack.root / "var" / ("host2" if host == "container-host-2" else "")
        ca = var / "caddy" / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
        port = (HOST2 if host == "container-host-2" else HOST1)["https"]
        name = f"{subdomain}.localhost"
        return subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--cacert", str(ca), "--resolve", f"{name}:{port}:127.0.0.1",
             "-o", "-", "-w", "\n%{http_code}", f"https://{name}:{port}/"],
            capture_output=True, text=True, check=False,
        )

    def labels(self, subdomain: str) -> list[dict[str, str]]:
        return [c["Labels"] for c in self.stack.containers(subdomain)]

    def reconcile(self) -> tuple[int, dict[str, dict[str, Any]]]:
        run = self.stack.cli("reconcile", "--json")
        assert run.stdout, run.stderr
        return run.returncode, {h["host"]: h for h in json.loads(run.stdout)["hosts"]}


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoHosts]:
    root = tmp_path_factory.mktemp("hosts")
    ssh = SshHost(root / "ssh")
    ssh.start()
    admins = [HOST1["admin"], HOST2["admin"]]

    def configure(inventory: Path) -> list[str]:
        hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
        host1 = hosts["container_hosts"]["hosts"]["container-host-1"]
        # btc-pro is 1024 MB: the first deployment goes to host-2 (more free), the second to
        # host-1 (then both have 2048 MB free and host-1 has fewer deployments).
        host1 |= {"buddo_host_memory_mb": 2048, "buddo_host_port_range": "25000-25999",
                  "caddy_http_port": HOST1["http"], "caddy_https_port": HOST1["https"],
                  "caddy_admin_address": HOST1["admin"]}
        hosts["container_hosts"]["hosts"]["container-host-2"] = ssh.hostvars() | {
            "buddo_host_memory_mb": 3072, "buddo_host_port_range": "26000-26999",
            "buddo_public_ipv4": "192.0.2.2",
            # Its own Caddy: directories (under its own var dir), ports and admin address.
            "buddo_var_dir": str(root / "var" / "host2"),
            "caddy_http_port": HOST2["http"], "caddy_https_port": HOST2["https"],
            "caddy_admin_address": HOST2["admin"],
            # Both bootstraps run at once on this one machine: each smoke test on its own port.
            "container_host_smoke_port": 19998,
        }
        (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
        return admins

    stack = None
    try:
        stack = start_stack(root, configure)
        yield TwoHosts(stack, ssh)
    finally:
        if stack is not None:
            stop_stack(stack)
        else:
            for admin in admins:
                subprocess.run(["caddy", "stop", "--address", admin], check=False, capture_output=True)
        ssh.stop()


def test_two_hosts_deploy_restart_stop_reconcile_and_survive_an_ssh_outage(two_hosts: TwoHosts) -> None:
    stack = two_hosts.stack
    # The bootstrap reached host-2 over SSH with the test's key.
    assert "Accepted publickey for root" in (two_hosts.ssh.root / "sshd.log").read_text()
    image = stack.push("v1", tag="hosts")
    remote = stack.create(subdomain="e2e-far", image=image)
    local = stack.create(subdomain="e2e-near", image=image)
    assert (remote["host"], local["host"]) == ("container-host-2", "container-host-1")
    for ident in (remote["id"], local["id"]):
        assert stack.wait_for(ident, {"running", "failed"})["status"] == "running", stack.logs(ident)
    assert [lab["buddo.host"] for lab in two_hosts.labels("e2e-far")] == ["container-host-2"]
    assert [lab["buddo.host"] for lab in two_hosts.labels("e2e-near")] == ["container-host-1"]
    # Each app is served by its own host's Caddy, and only there.
    assert "version v1" in two_hosts.https("e2e-far", "container-host-2").stdout
    assert "version v1" in two_hosts.https("e2e-near", "container-host-1").stdout
    assert not two_hosts.https("e2e-far", "container-host-1").stdout.endswith("200")
    far_port = stack.inspect(remote["container_name"])["HostConfig"]["PortBindings"]
    assert any(26000 <= int(b["HostPort"]) <= 26999 for bindings in far_port.values() for b in bindings)

    # Reconcile covers both hosts, and neither removes the other's containers as orphans.
    rc, reports = two_hosts.reconcile()
    assert rc == 0, reports
    assert set(reports) == {"container-host-1", "container-host-2"}
    assert all(not r["orphans"] and r["converged"] for r in reports.values()), reports
    assert len(stack.containers("e2e-far")) == 1 and len(stack.containers("e2e-near")) == 1

    stack.push("v2", tag="hosts")
    assert stack.call("POST", f"/api/deploy/apps/{remote['id']}/restart").status_code == 200
    stack.wait_for_audit(remote["id"], "restart")
    assert "version v2" in two_hosts.https("e2e-far", "container-host-2").stdout
    assert stack.call("POST", f"/api/deploy/apps/{local['id']}/stop").status_code == 200
    stack.wait_for_audit(local["id"], "stop")
    assert [c["State"] for c in stack.containers("e2e-near")] == ["exited"]

    # host-2 goes down: its runs fail (and are retried), host-1's go on.
    two_hosts.ssh.stop()
    try:
        assert stack.call("POST", f"/api/deploy/apps/{remote['id']}/stop").status_code == 200
        failing = stack.wait_for_entry(remote["id"], lambda e: e["action"] == "stop" and e["details"]
                                       and e["details"].get("last_error"))
        assert failing["status"] == "running" and failing["details"]["retrying_in_s"] > 0
        assert "unreachable" in failing["details"]["last_error"].lower() or \
            "ssh" in failing["details"]["last_error"].lower(), failing
        assert stack.call("POST", f"/api/deploy/apps/{local['id']}/restart").status_code == 200
        stack.wait_for_audit(local["id"], "restart")
        assert stack.wait_for(local["id"], {"running"})["status"] == "running"
        rc, reports = two_hosts.reconcile()
        assert rc == 1
        assert reports["container-host-1"]["converged"] and not reports["container-host-2"]["ok"]
        assert remote["id"] in reports["container-host-2"]["unchecked"]
        assert [c["State"] for c in stack.containers("e2e-far")] == ["running"]  # nothing reached host-2
    finally:
        two_hosts.ssh.start()
    # Back: the retried stop converges.
    stack.wait_for_audit(remote["id"], "stop", timeout=180)
    assert [c["State"] for c in stack.containers("e2e-far")] == ["exited"]

    for ident in (remote["id"], local["id"]):
        stack.destroy(ident)
    assert stack.containers("e2e-far") == [] and stack.containers("e2e-near") == []
    rc, reports = two_hosts.reconcile()
    assert rc == 0 and all(r["converged"] for r in reports.values()), reports


def test_a_changed_host_key_stops_runs_on_that_host_only(two_hosts: TwoHosts) -> None:
    stack, ssh = two_hosts.stack, two_hosts.ssh
    image = stack.push("v1", tag="hosts")
    remote = stack.create(subdomain="e2e-far-key", image=image)
    local = stack.create(subdomain="e2e-near-key", image=image)
    assert (remote["host"], local["host"]) == ("container-host-2", "container-host-1")
    for ident in (remote["id"], local["id"]):
        assert stack.wait_for(ident, {"running", "failed"})["status"] == "running", stack.logs(ident)

    # Someone else answers at host-2's address: a key the inventory never pinned.
    pinned = (ssh.root / "known_hosts").read_text()
    impostor = ssh.root / "impostor_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(impostor)], check=True)
    kind, key = impostor.with_suffix(".pub").read_text().split()[:2]
    (ssh.root / "known_hosts").write_text(f"[{SSH_ADDRESS}]:{ssh.port} {kind} {key}\n")
    # New connections only: end the sessions Ansible keeps open (ControlPersist), verified before.
    ssh.stop()
    ssh.start()
    try:
        assert stack.call("POST", f"/api/deploy/apps/{remote['id']}/stop").status_code == 200
        failing = stack.wait_for_entry(remote["id"], lambda e: e["action"] == "stop" and e["details"]
                                       and e["details"].get("last_error"))
        assert failing["status"] == "running" and failing["details"]["retrying_in_s"] > 0
        assert "host key is unknown or changed" in failing["details"]["last_error"], failing
        # The other host goes on.
        assert stack.call("POST", f"/api/deploy/apps/{local['id']}/restart").status_code == 200
        stack.wait_for_audit(local["id"], "restart")
        assert stack.wait_for(local["id"], {"running"})["status"] == "running"
        assert [c["State"] for c in stack.containers("e2e-far-key")] == ["running"]  # nothing reached host-2
    finally:
        (ssh.root / "known_hosts").write_text(pinned)
    # The pinned key again: the retried stop converges.
    stack.wait_for_audit(remote["id"], "stop", timeout=180)
    assert [c["State"] for c in stack.containers("e2e-far-key")] == ["exited"]
    for ident in (remote["id"], local["id"]):
        stack.destroy(ident)

"""Tenants apart on the real stack: no route from one deployment's container to another's, caps per tier."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.e2e.conftest import Stack


def wget_from(container: str, url: str) -> subprocess.CompletedProcess[str]:
    # Debian's busybox 1.35 crashes on `wget -T`: the timeout comes from busybox timeout.
    return subprocess.run(["podman", "exec", container, "busybox", "timeout", "5", "busybox", "wget", "-q", "-O", "-",
                           url], capture_output=True, text=True, check=False, timeout=30)


def network_of(info: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    [(name, settings)] = info["NetworkSettings"]["Networks"].items()
    return name, settings


def create(stack: Stack, subdomain: str, image: str) -> str:
    # One operator's two apps are as far apart as two operators' apps: isolation is per deployment.
    return str(stack.create(subdomain=subdomain, image=image, tier="btc-starter")["id"])


def test_a_tenant_cannot_reach_another_tenants_container(stack: Stack) -> None:
    image = stack.push("v1", tag="iso")
    a = create(stack, "e2e-iso-a", image)
    b = create(stack, "e2e-iso-b", image)
    for ident in (a, b):
        assert stack.wait_for(ident, {"running", "failed"})["status"] == "running", stack.logs(ident)
    [ca] = stack.containers("e2e-iso-a")
    [cb] = stack.containers("e2e-iso-b")
    info_a, info_b = stack.inspect(ca["Id"]), stack.inspect(cb["Id"])
    net_a, addr_a = network_of(info_a)
    net_b, addr_b = network_of(info_b)
    assert (net_a, net_b) == (f"buddo-{a}", f"buddo-{b}")
    port_b = int(info_b["HostConfig"]["PortBindings"]["3000/tcp"][0]["HostPort"])
    assert info_b["HostConfig"]["PortBindings"]["3000/tcp"][0]["HostIp"] == "127.0.0.1"

    # A's own app answers from inside A; B's address answers from the host and from B itself
    # (so the address is right), and through Caddy.
    assert "version v1" in wget_from(ca["Id"], "http://127.0.0.1:3000/").stdout
    assert "version v1" in wget_from(cb["Id"], f"http://{addr_b['IPAddress']}:3000/").stdout
    host = subprocess.run(["curl", "-sS", "--max-time", "5", f"http://{addr_b['IPAddress']}:3000/"],
                          capture_output=True, text=True, check=False)
    assert "version v1" in host.stdout, host.stderr
    assert "version v1" in stack.https("e2e-iso-b").stdout

    # From inside A, nothing of B answers: not its address, not its published port on any host address A can reach.
    for url in (f"http://{addr_b['IPAddress']}:3000/", f"http://{addr_b['Gateway']}:{port_b}/",
                f"http://{addr_a['Gateway']}:{port_b}/", f"http://127.0.0.1:{port_b}/"):
        attempt = wget_from(ca["Id"], url)
        assert attempt.returncode != 0 and "version" not in attempt.stdout, (url, attempt)

    for ident in (a, b):
        stack.destroy(ident)
    for net in (net_a, net_b):
        assert subprocess.run(["podman", "network", "exists", net], check=False).returncode == 1


def test_podman_inspect_shows_the_tiers_caps_and_the_isolation(stack: Stack) -> None:
    tiers = {t["slug"]: t for t in stack.call("GET", "/api/deploy/tiers").json()}
    tier = tiers["btc-starter"]
    image = stack.push("v1", tag="iso")
    ident = create(stack, "e2e-iso-c", image)
    assert stack.wait_for(ident, {"running", "failed"})["status"] == "running", stack.logs(ident)
    [c] = stack.containers("e2e-iso-c")
    info = stack.inspect(c["Id"])
    host = info["HostConfig"]
    assert host["PidsLimit"] == tier["pids_limit"]
    assert host["LogConfig"]["Type"] == "k8s-file" and host["LogConfig"]["Size"] == f"{tier['log_max_size_mb']}MB"
    assert "no-new-privileges" in host["SecurityOpt"]
    assert "CAP_NET_RAW" not in info["EffectiveCaps"]
    [network] = json.loads(subprocess.run(["podman", "network", "inspect", f"buddo-{ident}"], capture_output=True,
                                          text=True, check=True).stdout)
    assert network["options"] == {"isolate": "true"} and network["labels"]["buddo.deployment_id"] == ident

    # The pids limit holds: the app cannot start more processes than its tier allows.
    forks = subprocess.run(
        ["podman", "exec", c["Id"], "busybox", "sh", "-c",
         f"i=0; while [ $i -lt {tier['pids_limit'] + 20} ]; do busybox sleep 5 & i=$((i+1)); done; wait"],
        capture_output=True, text=True, check=False, timeout=60)
    assert "can't fork" in forks.stderr, forks.stderr[-500:]
    # The app itself survived its own fork bomb.
    assert "version v1" in stack.https("e2e-iso-c").stdout
    stack.destroy(ident)

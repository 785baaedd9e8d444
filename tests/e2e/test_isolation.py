"""Tenants apart on the real stack: no route from one deployment's container to another's, caps per tier."""

from __future__ import annotations

import contextlib
import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.e2e.conftest import HTTP_PORT, HTTPS_PORT, Stack, descendants


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
    # The app serves again once its own fork bomb is over: it could not fork a handler meanwhile,
    # so the prober (every 2 s here) may have healed it after three failed probes.
    deadline = time.monotonic() + 60
    while "version v1" not in (answer := stack.https("e2e-iso-c").stdout) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "version v1" in answer, answer
    stack.destroy(ident)


def uid_map(pid: int) -> tuple[int, int, int]:
    """(inside, host start, count) of the first line of a process's uid map."""
    inside, start, count = (int(x) for x in Path(f"/proc/{pid}/uid_map").read_text().split()[:3])
    return inside, start, count


def effective_uid(pid: int) -> int:
    [line] = [line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:")]
    return int(line.split()[2])


@contextlib.contextmanager
def listener(address: str) -> Iterator[int]:
    """An HTTP server of the host's on ``address`` (a bridge gateway): what a tenant must not reach."""
    server = http.server.ThreadingHTTPServer((address, 0), http.server.SimpleHTTPRequestHandler)
    server.RequestHandlerClass.log_message = lambda *a: None  # type: ignore[method-assign]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def tcp_open_from(container: str, address: str, port: int) -> bool:
    """Whether a TCP connection from inside ``container`` succeeds (busybox nc has no -z: -e runs
    a program once connected)."""
    probe = subprocess.run(["podman", "exec", container, "busybox", "nc", "-w", "3", address, str(port),
                            "-e", "/bin/busybox", "true"], capture_output=True, text=True, check=False, timeout=30)
    return probe.returncode == 0


def test_a_tenant_is_not_root_on_the_host_reaches_only_what_it_may_and_cannot_fill_the_disk(stack: Stack) -> None:
    tiers = {t["slug"]: t for t in stack.call("GET", "/api/deploy/tiers").json()}
    image = stack.push("v1", tag="iso")
    a = str(stack.create(subdomain="e2e-iso-d", image=image, tier="buddo-starter")["id"])
    b = create(stack, "e2e-iso-e", image)
    for ident in (a, b):
        assert stack.wait_for(ident, {"running", "failed"})["status"] == "running", stack.logs(ident)
    [ca] = stack.containers("e2e-iso-d")
    [cb] = stack.containers("e2e-iso-e")
    info_a, info_b = stack.inspect(ca["Id"]), stack.inspect(cb["Id"])

    # Root in the image is not root on the host, and two tenants' id ranges never overlap.
    maps = []
    for info in (info_a, info_b):
        pid = int(info["State"]["Pid"])
        app = [p for p in [pid, *descendants(pid)] if Path(f"/proc/{p}/comm").read_text().strip() == "busybox"]
        assert app, "the app's process"
        assert all(effective_uid(p) != 0 for p in app)
        inside, start, count = uid_map(app[0])
        assert inside == 0 and start > 0 and count >= 65536
        maps.append(range(start, start + count))
    assert maps[0].stop <= maps[1].start or maps[1].stop <= maps[0].start, maps
    assert "CAP_SYS_ADMIN" not in info_a["EffectiveCaps"] and "CAP_SETUID" in info_a["EffectiveCaps"]

    # From inside A: its own app, and Caddy's ports on the host, yes; a service of the host on
    # the bridge gateway, and B (its address, and its published port through the gateway), no.
    _, addr_a = network_of(info_a)
    _, addr_b = network_of(info_b)
    port_b = int(info_b["HostConfig"]["PortBindings"]["3000/tcp"][0]["HostPort"])
    assert "version v1" in wget_from(ca["Id"], "http://127.0.0.1:3000/").stdout
    assert tcp_open_from(ca["Id"], addr_a["Gateway"], HTTPS_PORT)
    assert tcp_open_from(ca["Id"], addr_a["Gateway"], HTTP_PORT)
    with listener(addr_a["Gateway"]) as port:
        here = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                               f"http://{addr_a['Gateway']}:{port}/"], capture_output=True, text=True, check=False)
        assert here.stdout == "200", here  # the listener answers the host
        assert not tcp_open_from(ca["Id"], addr_a["Gateway"], port)
        assert wget_from(ca["Id"], f"http://{addr_a['Gateway']}:{port}/").returncode != 0
    for address, port in ((addr_b["IPAddress"], 3000), (addr_a["Gateway"], port_b), (addr_b["Gateway"], port_b)):
        assert not tcp_open_from(ca["Id"], address, port), (address, port)

    # Disk: writing 2 GiB stops short at the tier's limit, inside the container; the app goes on.
    limit = tiers["buddo-starter"]["disk_limit_mb"]
    assert limit < 2048
    fill = subprocess.run(["podman", "exec", ca["Id"], "busybox", "dd", "if=/dev/zero", "of=/fill", "bs=1M",
                           "count=2048"], capture_output=True, text=True, check=False, timeout=300)
    assert fill.returncode != 0 and "quota" in fill.stderr.lower(), fill.stderr
    size = subprocess.run(["podman", "exec", ca["Id"], "busybox", "stat", "-c", "%s", "/fill"],
                          capture_output=True, text=True, check=True).stdout
    assert int(size) <= limit * 1024 * 1024
    assert "version v1" in stack.https("e2e-iso-d").stdout

    for ident in (a, b):
        stack.destroy(ident)



# Addresses of a network namespace this test makes and routes to through a veth pair: what a
# tenant's traffic through the host (the egress table's forward chain) may reach. 198.51.100.7
# (TEST-NET-2) stands for the Internet; nothing is sent beyond the namespace.
BEYOND = {"198.51.100.7": True, "10.255.77.7": False, "172.31.77.7": False, "192.168.77.7": False,
          "100.64.77.7": False, "169.254.77.7": False}


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def routed_namespace() -> Iterator[int]:
    """A namespace holding every address of BEYOND, routed to from the host, with an HTTP server
    on all of them; yields its port. Removed afterwards (its veth and routes go with it)."""
    ns, outside, inside = "buddo-e2e-egress", "buddo-egr0", "buddo-egr1"
    subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
    ip("netns", "add", ns)
    server = None
    try:
        ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", ns)
        ip("addr", "add", "192.0.2.1/30", "dev", outside)
        ip("link", "set", outside, "up")
        ip("-n", ns, "addr", "add", "192.0.2.2/30", "dev", inside)
        ip("-n", ns, "link", "set", inside, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "route", "add", "default", "via", "192.0.2.1")
        for address in BEYOND:
            ip("-n", ns, "addr", "add", f"{address}/32", "dev", "lo")
            ip("route", "add", f"{address}/32", "via", "192.0.2.2", "dev", outside)
            route = subprocess.run(["ip", "route", "get", address], capture_output=True, text=True, check=True)
            assert f"dev {outside}" in route.stdout, route.stdout  # never towards a real network
        port = 18977
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "http.server", "--bind",
                                   "0.0.0.0", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        yield port
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        for address in BEYOND:
            subprocess.run(["ip", "route", "del", f"{address}/32"], check=False, capture_output=True)


def test_through_the_host_a_tenant_reaches_the_internet_but_no_private_or_link_local_address(
        stack: Stack) -> None:
    image = stack.push("v1", tag="iso")
    ident = create(stack, "e2e-iso-f", image)
    assert stack.wait_for(ident, {"running", "failed"})["status"] == "running", stack.logs(ident)
    [container] = stack.containers("e2e-iso-f")
    # netavark rewrote its rules for this deployment's new network: the egress table stands.
    subprocess.run(["nft", "list", "table", "inet", "buddo_egress"], check=True, capture_output=True)
    with routed_namespace() as port:
        for address in BEYOND:  # the host reaches every one of them: the listeners are up
            here = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                                   "--retry", "5", "--retry-connrefused", "--retry-delay", "1",
                                   f"http://{address}:{port}/"], capture_output=True, text=True, check=False)
            assert here.stdout == "200", (address, here)
        reached = {address: tcp_open_from(container["Id"], address, port) for address in BEYOND}
    assert reached == BEYOND
    stack.destroy(ident)


def test_only_root_reaches_caddys_admin_api(stack: Stack) -> None:
    """Caddy's admin API (TCP on loopback) rewrites every route: another local user of the host
    (here nobody) is refused by the egress table's output rule; root is not."""
    admin = stack.caddy_admins[0]
    url = f"http://{admin}/config/"
    as_root = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", url],
                             capture_output=True, text=True, check=False)
    assert as_root.stdout == "200", as_root
    as_nobody = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "curl", "-sS",
                                "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", url],
                               capture_output=True, text=True, check=False)
    assert as_nobody.returncode != 0 and as_nobody.stdout in ("", "000"), as_nobody

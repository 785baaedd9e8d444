"""Followed output: how soon a printed line reaches a follower, and what 100 followers cost others.

The API under `buddo-deploy serve`'s server setup (SQLite), ten deployments of ten operators,
each with a Podman container on this machine that prints a line every 0.25 s (labelled as the
engine labels an app's container), and the worker's follow collectors (services/follow.py,
the same code the worker's timer runs) in this process. In alternating rounds:
- none: another operator's GET /api/deploy/tiers, one after another;
- followed: the same while 100 followers (10 per deployment) read their streams.
Prints the latency of GET /tiers in both (p50, p95; the ratio of the medians) and the
follow latency: from podman's timestamp of a line (conmon read it) to its arrival at a
follower (p50, p95, max; a new follow also gets the lines of the 2 s before it, which count
here with their age). Needs Podman (make test's bootstrap installs it).
Run: make bench-follow   (or .venv/bin/python bench/follow.py --rounds 3)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "api")]

from bench.api import bearer, percentile, start  # noqa: E402
from tests.helpers import JWT_SECRET, PRODUCTION_AUTH, free_port  # noqa: E402

PRINTER = "while :; do echo tick; sleep 0.25; done"


def image(tmp: Path) -> str:
    """A local busybox image (no registry needed)."""
    name = f"localhost/buddo-bench-follow:{os.getpid()}"
    root = tmp / "rootfs"
    (root / "bin").mkdir(parents=True)
    busybox = shutil.which("busybox")
    if busybox is None:
        sys.exit("busybox is not installed (make test's bootstrap installs busybox-static)")
    shutil.copy(busybox, root / "bin" / "busybox")
    subprocess.run(["tar", "-C", str(root), "-cf", str(tmp / "rootfs.tar"), "."], check=True)
    subprocess.run(["podman", "import", "--change", 'CMD ["/bin/busybox", "sh"]', str(tmp / "rootfs.tar"), name],
                   check=True, capture_output=True)
    return name


def at(stamp: str) -> float:
    stamp = stamp.replace("Z", "+00:00")
    head, _, rest = stamp.partition(".")
    digits = "".join(c for c in rest if c.isdigit())
    zone = rest[len(digits):]
    return dt.datetime.fromisoformat(f"{head}.{digits[:6]}{zone}").timestamp()


class Follower(threading.Thread):
    def __init__(self, url: str, operator: str, delays: list[float]) -> None:
        super().__init__(daemon=True)
        self.url, self.operator, self.delays = url, operator, delays
        self.response: requests.Response | None = None
        self.status = 0

    def run(self) -> None:
        try:
            self.response = requests.get(self.url, params={"follow": "true"}, headers=bearer(self.operator),
                                         stream=True, timeout=60)
            self.status = self.response.status_code
            for line in self.response.iter_lines(chunk_size=1):
                if line.startswith(b"data: "):
                    self.delays.append(time.time() - at(json.loads(line[6:])["at"]))
        except (requests.RequestException, AttributeError, ValueError):
            pass

    def close(self) -> None:
        if self.response is not None:
            self.response.close()


def tiers(base: str, count: int) -> list[float]:
    times = []
    with requests.Session() as session:
        for _ in range(count):
            started = time.perf_counter()
            session.get(f"{base}/api/deploy/tiers", headers=bearer("bystander"), timeout=30).raise_for_status()
            times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200, help="GET /tiers per phase")
    parser.add_argument("--followers", type=int, default=100)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="buddo-bench-follow-"))
    instance = f"bench-follow-{uuid.uuid4().hex[:6]}"
    (tmp / "inventory").mkdir()
    (tmp / "inventory" / "hosts.yml").write_text(
        "container_hosts:\n  hosts:\n    container-host-1:\n      ansible_connection: local\n"
        "      buddo_host_memory_mb: 1000000\n")
    env = os.environ | {
        "BUDDO_VAR_DIR": str(tmp), "BUDDO_DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}",
        "BUDDO_JWT_SECRET": JWT_SECRET, "BUDDO_SECRET_KEY": "bench", **PRODUCTION_AUTH,
        "BUDDO_RATE_LIMITS_ENABLED": "false", "BUDDO_BILLING_STARTING_SATS": "100000000",
        "BUDDO_INVENTORY": str(tmp / "inventory"), "BUDDO_INSTANCE": instance,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "api"), os.environ.get("PYTHONPATH", "")]),
    }
    os.environ.update({k: v for k, v in env.items() if k.startswith("BUDDO_")})
    subprocess.run([sys.executable, "-m", "buddo_deploy.cli", "db", "upgrade"], env=env, check=True,
                   capture_output=True)
    from buddo_deploy.db import open_database
    from buddo_deploy.services.follow import Collectors
    from buddo_deploy.settings import Settings

    port = free_port()
    server = start("buddo_deploy.wsgi:app", port, 2, 8, env)
    base = f"http://127.0.0.1:{port}"
    containers: list[str] = []
    stop = threading.Event()
    collectors = Collectors(Settings.from_env(env), "bench")
    results: dict[str, list[float]] = {"none": [], "followed": [], "delay": []}
    try:
        name = image(tmp)
        idents = []
        for n in range(10):
            created = requests.post(f"{base}/api/deploy/apps", headers=bearer(f"op-{n}"), timeout=10, json={
                "subdomain": f"follow-{n}", "image": "ghcr.io/bench/app:1", "tier": "btc-pro"})
            created.raise_for_status()
            ident = created.json()["deployment"]["id"]
            idents.append((f"op-{n}", ident))
            containers.append(subprocess.run(
                ["podman", "run", "-d", "--label", f"buddo.deployment_id={ident}", "--label",
                 f"buddo.instance={instance}", "--log-driver", "k8s-file", name, "/bin/busybox", "sh", "-c", PRINTER],
                check=True, capture_output=True, text=True).stdout.strip())
        open_database(env["BUDDO_DATABASE_URL"])

        def collect() -> None:
            while not stop.wait(0.5):
                collectors.tick()

        threading.Thread(target=collect, daemon=True).start()
        for round_ in range(args.rounds):
            results["none"] += tiers(base, args.requests)
            delays: list[float] = []
            followers = [Follower(f"{base}/api/deploy/apps/{ident}/output", operator, delays)
                         for i in range(args.followers) for operator, ident in [idents[i % len(idents)]]]
            for follower in followers:
                follower.start()
            time.sleep(4)  # every stream open and its collector following
            results["followed"] += tiers(base, args.requests)
            for follower in followers:
                follower.close()
            time.sleep(2)  # the server notices the closed streams (the next round opens as many)
            statuses = {f.status for f in followers}
            results["delay"] += delays
            print(f"round {round_ + 1}: follower answers {sorted(statuses)}, {len(delays)} lines received",
                  file=sys.stderr)
    finally:
        stop.set()
        collectors.stop()
        if containers:
            subprocess.run(["podman", "rm", "--force", "--time", "0", *containers], capture_output=True, check=False)
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)

    def ms(values: list[float], p: float) -> float:
        return percentile(values, p) * 1000

    print(f"GET /api/deploy/tiers, another operator, {args.requests} a phase, {args.rounds} alternating rounds "
          f"(serve: 2 workers x 8 threads):")
    for label, key in (("no followers", "none"), (f"{args.followers} followers", "followed")):
        print(f"  {label:14} p50 {ms(results[key], 50):6.2f} ms  p95 {ms(results[key], 95):6.2f} ms")
    print(f"  ratio (p50 with followers / without): "
          f"{statistics.median(results['followed']) / statistics.median(results['none']):.2f}")
    delay = results["delay"]
    if delay:
        print(f"follow latency, print (podman's timestamp) -> SSE line at a follower, {len(delay)} lines: "
              f"p50 {ms(delay, 50):.0f} ms, p95 {ms(delay, 95):.0f} ms, max {max(delay) * 1000:.0f} ms")


if __name__ == "__main__":
    main()

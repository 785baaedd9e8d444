"""A burst of creates by different operators, against one create, in the same run.

One create (POST /apps -> `running`), median of --runs, is the baseline. Then 8 and
32 creates sent at once, each by its own operator, timed until the last one is
`running` (every one must be). The image is already on the host. The aims (issue 18):
8 at once within 2x one create.
Run: make bench-burst   (or .venv/bin/python bench/burst.py --bursts 8,32 --profile)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.timeline import job_timeline, playbook_runs  # noqa: E402
from tests.e2e.conftest import ADMIN, Stack, start_stack, stop_stack  # noqa: E402

TIER = "buddo-starter"  # 256 MB


def create(stack: Stack, operator: str, subdomain: str, image: str) -> str:
    resp = stack.call("POST", "/api/deploy/apps", headers=stack.headers(operator),
                      json={"subdomain": subdomain, "image": image, "tier": TIER})
    assert resp.status_code == 201, resp.text
    stack.subdomains.add(subdomain)
    return str(resp.json()["deployment"]["id"])


def wait_running(stack: Stack, owners: dict[str, str], started: float) -> float:
    """Seconds from ``started`` until every deployment is running; fails on a failed one.

    One status call per 50 ms, as for one create, on the first deployment not yet running (the
    next is asked at once when it runs): polling all of a burst's every 50 ms would keep a core
    of this 2-core machine busy answering, and the converge it measures would share it."""
    pending = dict(owners)
    while pending:
        ident, operator = next(iter(pending.items()))
        status = stack.call("GET", f"/api/deploy/apps/{ident}/status", headers=stack.headers(operator)).json()
        if status["status"] == "failed":
            logs = stack.call("GET", f"/api/deploy/apps/{ident}/logs", headers=stack.headers(operator)).json()
            raise RuntimeError(f"{ident} failed: {logs}")
        if status["status"] == "running":
            del pending[ident]
        else:
            time.sleep(0.05)
    return time.perf_counter() - started


def destroy_all(stack: Stack, owners: dict[str, str]) -> None:
    for ident, operator in owners.items():
        stack.call("DELETE", f"/api/deploy/apps/{ident}", headers=stack.headers(operator))
    deadline = time.monotonic() + 600
    for ident, operator in owners.items():
        while time.monotonic() < deadline:
            if stack.call("GET", f"/api/deploy/apps/{ident}/status",
                          headers=stack.headers(operator)).json()["status"] == "destroyed" and not stack.containers(
                              ident):
                break
            time.sleep(0.2)


def burst(stack: Stack, image: str, size: int, tag: str) -> tuple[float, int]:
    """Send ``size`` creates at once; (seconds until all run, playbook runs it took)."""
    owners: dict[str, str] = {}
    barrier = threading.Barrier(size + 1)
    lock = threading.Lock()

    def one(i: int) -> None:
        operator = f"burst-{tag}-{i}"
        barrier.wait()
        ident = create(stack, operator, f"b{tag}-{i}", image)
        with lock:
            owners[ident] = operator

    threads = [threading.Thread(target=one, args=(i,)) for i in range(size)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = wait_running(stack, owners, started)
    runs = playbook_runs(stack, list(owners))
    destroy_all(stack, owners)
    return elapsed, runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3, help="single creates (median)")
    parser.add_argument("--bursts", default="8,32")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--strategy", default="", help="BUDDO_ANSIBLE_STRATEGY of the worker (default: the platform's)")
    args = parser.parse_args()
    sizes = [int(n) for n in args.bursts.split(",")]
    root = Path(tempfile.mkdtemp(prefix="buddo-bench-burst-"))

    def room_for_all(inventory: Path) -> list[str]:
        hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
        host = hosts["container_hosts"]["hosts"]["container-host-1"]
        host["buddo_host_memory_mb"] = max(host["buddo_host_memory_mb"], 256 * (max(sizes) + 2))
        (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
        return [ADMIN]

    stack = start_stack(root, room_for_all)
    if args.strategy:
        stack.restart_platform(stack.env | {"BUDDO_ANSIBLE_STRATEGY": args.strategy})
    singles: list[float] = []
    bursts: dict[int, tuple[float, int]] = {}
    try:
        image = stack.push("v1")
        subprocess.run(["podman", "pull", "-q", image], check=True, capture_output=True)
        for run in range(args.runs + 1):  # the first is a warm-up (Caddy's first certificate)
            operator = f"single-{run}"
            started = time.perf_counter()
            ident = create(stack, operator, f"single-{run}", image)
            elapsed = wait_running(stack, {ident: operator}, started)
            if args.profile:
                print("\n".join(job_timeline(stack, ident)), flush=True)
            destroy_all(stack, {ident: operator})
            if run:
                singles.append(elapsed)
        for size in sizes:
            bursts[size] = burst(stack, image, size, str(size))
    finally:
        stop_stack(stack)
        shutil.rmtree(root, ignore_errors=True)
    one = statistics.median(singles)
    print(f"strategy: {args.strategy or 'default'}")
    print(f"one create -> running (median of {args.runs}): {one:6.2f} s")
    for size, (elapsed, runs) in bursts.items():
        aim = {8: "   aim <= 1.5", 32: "   aim <= 3"}.get(size, "")
        print(f"{size:3d} creates at once -> all running:  {elapsed:6.2f} s   ratio {elapsed / one:5.2f}"
              f"   ({runs} playbook run(s)){aim}")


if __name__ == "__main__":
    main()
